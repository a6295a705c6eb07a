"""What a synchronous check answers, and what the reader may see of it (pure).

``GET /recognition/check`` decides exactly as the worker does for an order (same
:func:`~services.recognition.decision.decide`), then renders the decision for the calling
institution: earlier results it may not read (another institution's, outside its recognition
scope — :func:`services.common.institutions.may_read`) are left out of ``matches``; the
outcome and reason stay, so the doctor learns *why* nothing can be recognised without
learning where the patient was seen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.institutions import Institution, may_read
from services.recognition.decision import Decision, InstitutionDirectory, PriorMatch

__all__ = ["image_links", "parse_coded", "render_check", "shown_matches"]


def parse_coded(value: str) -> tuple[str | None, str] | None:
    """``<system>|<code>`` (or a bare code) → (system, code); ``None`` when empty."""
    system, bar, code = value.strip().partition("|")
    if not bar:
        system, code = "", system
    code = code.strip()
    if not code:
        return None
    return (system.strip() or None), code


def image_links(match: PriorMatch) -> list[str]:
    """WADO-RS study URLs of an imaging result: ``<endpoint>/studies/<Study Instance UID>``
    (the endpoint alone when the UID is unknown)."""
    links = []
    for endpoint in match.image_endpoints:
        base = endpoint.rstrip("/")
        links.append(f"{base}/studies/{match.study_uid}" if match.study_uid else base)
    return links


def shown_matches(
    decision: Decision, reader: Institution, institutions: InstitutionDirectory, at: datetime
) -> list[PriorMatch]:
    """The matches ``reader`` may see (its own, and those within its read scope)."""
    category = decision.item_category or "other"
    out = []
    for m in decision.matches:
        performer = institutions.get(m.institution)
        if performer is not None and may_read(reader, performer, category=category, on=at.date()):
            out.append(m)
    return out


def render_check(
    decision: Decision,
    reader: Institution,
    institutions: InstitutionDirectory,
    at: datetime,
) -> dict[str, Any]:
    """The JSON answer of a check (docs/recognition.md, "The synchronous check")."""
    imaging = decision.item_category == "imaging"
    matches = []
    for m in shown_matches(decision, reader, institutions, at):
        row: dict[str, Any] = {
            "institution": m.institution,
            "institution_name": m.institution_name,
            "performed_at": m.performed_at.isoformat() if m.performed_at else None,
            "valid_until": m.valid_until.isoformat() if m.valid_until else None,
            "recognisable": m.recognisable,
            "reason": m.reason,
            "hr_scope": m.hr_scope,
            "report": {"reference": m.report_ref, "record_id": m.record_id},
        }
        if imaging:
            row["images"] = image_links(m)
        matches.append(row)
    return {
        "decision": decision.outcome,
        "reason": decision.reason,
        "detail": decision.detail,
        "master_patient_id": decision.master_patient_id,
        "item": (
            {"id": decision.item_id, "name": decision.item_name, "category": decision.item_category}
            if decision.item_id
            else None
        ),
        "matches": matches,
        "saving_yuan": decision.estimated_saving_yuan,
        "price_yuan": decision.price_yuan,
        "catalog": decision.catalog,
        "catalog_version": decision.catalog_version,
        "decided_at": decision.decided_at.isoformat(),
    }
