"""The doctor's answer to a decision: recognised, or re-ordered with a coded reason.

Pure: :func:`parse_feedback` checks a ``POST /recognition/feedback`` body against the national
exception list and the region's extras (``exception_reasons`` in its catalogue) and returns
either the :class:`Feedback` to record or the problems, each with the member it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from services.common.fhir import redact
from services.recognition.catalog import Catalog

__all__ = [
    "CHOICES",
    "NATIONAL_EXCEPTIONS",
    "Feedback",
    "Problem",
    "exception_reasons",
    "parse_feedback",
]

Choice = Literal["recognised", "re-ordered"]
CHOICES: Final = ("recognised", "re-ordered")

#: The national list of reasons to re-order although a recognisable result exists.
NATIONAL_EXCEPTIONS: Final[dict[str, str]] = {
    "condition-changed": "病情变化",
    "fast-changing": "检查检验结果随病程进展变化较快",
    "major-procedure": "手术、输血等重大医疗措施前",
    "emergency": "急诊、急救等抢救生命的紧急状态",
    "appraisal": "司法、伤残及病退等鉴定",
    "other": "其他情形",
}

NOTE_MAX: Final = 500


def exception_reasons(catalog: Catalog | None) -> dict[str, tuple[str, str]]:
    """code → (name, source) for every reason the doctor may give in ``catalog``'s region."""
    out = {code: (name, "national") for code, name in NATIONAL_EXCEPTIONS.items()}
    if catalog is not None:
        for r in catalog.exception_reasons:
            out.setdefault(r.code, (r.name, "provincial"))
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    expression: str


@dataclass(frozen=True, slots=True)
class Feedback:
    choice: Choice
    reason: str | None
    reason_name: str | None
    reason_source: str | None
    note: str
    order: str | None
    decision_id: str | None
    result_record_id: str | None


def _opt_str(doc: dict[str, Any], name: str, problems: list[Problem], limit: int = 200) -> Any:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        problems.append(Problem(f"{name} must be a non-empty string of at most {limit}", name))
        return None
    return value.strip()


def parse_feedback(doc: dict[str, Any], catalog: Catalog | None) -> Feedback | list[Problem]:
    """The feedback in ``doc``, or what is wrong with it. ``patient`` and ``code`` are read
    by the caller (they decide whose feedback it is); this checks the rest:

    - ``choice``: ``recognised`` or ``re-ordered``;
    - ``reason``: required for ``re-ordered`` (a code of the national list or the region's
      extras), refused for ``recognised``;
    - ``note``: free text, at most 500 characters (``other`` needs one); digit runs are masked;
    - ``order`` (the hospital's ``ServiceRequest/<id>``), ``decision_id`` and
      ``result_record_id`` (the recognised result) are optional references.
    """
    problems: list[Problem] = []
    choice = doc.get("choice")
    if choice not in CHOICES:
        problems.append(Problem("choice must be 'recognised' or 're-ordered'", "choice"))
    reasons = exception_reasons(catalog)
    reason = doc.get("reason")
    name = source = None
    if choice == "re-ordered":
        if reason is None:
            problems.append(Problem("a re-order needs a reason code", "reason"))
        elif not isinstance(reason, str) or reason not in reasons:
            known = ", ".join(sorted(reasons))
            problems.append(Problem(f"unknown reason; the reasons here are: {known}", "reason"))
        else:
            name, source = reasons[reason]
    elif choice == "recognised" and reason is not None:
        problems.append(Problem("a recognised result needs no reason", "reason"))
    note = doc.get("note", "")
    if not isinstance(note, str) or len(note) > NOTE_MAX:
        problems.append(Problem(f"note must be text of at most {NOTE_MAX} characters", "note"))
        note = ""
    if choice == "re-ordered" and reason == "other" and not note.strip():
        problems.append(Problem("reason 'other' needs a note saying why", "note"))
    order = _opt_str(doc, "order", problems)
    decision_id = _opt_str(doc, "decision_id", problems, 64)
    result = _opt_str(doc, "result_record_id", problems, 64)
    if problems:
        return problems
    return Feedback(
        choice=cast(Choice, choice),
        reason=reason if choice == "re-ordered" else None,
        reason_name=name,
        reason_source=source,
        note=redact(note.strip()),  # free text may hold an id or a phone number
        order=order,
        decision_id=decision_id,
        result_record_id=result,
    )
