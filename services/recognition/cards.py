"""CDS Hooks 2.0 for recognition, the pure part: the services, reading a hook request, the
card for a check answer, the card's signed ``uuid`` and reading feedback
(docs/cds-hooks.md; the HTTP wiring is :mod:`services.recognition.cds`).

Section references (§) are to the CDS Hooks 2.0 specification, https://cds-hooks.hl7.org/2.0/.

- :func:`discovery` — §Discovery: two services, ``order-select`` and ``order-sign``.
- :func:`parse_hook_request` — §Calling a CDS Service and the hooks' context tables: what
  is missing or of the wrong type is a :class:`Problem` naming the member.
- :func:`build_card` — §Card Attributes: one card per draft order whose check answer is
  ``recognisable`` with a result the caller may see; ``None`` otherwise.
- :class:`CardSigner` — the card ``uuid`` is a compact token the hub signs (HMAC-SHA256
  with a key derived from ``MRHUB_IDENTITY__HMAC_KEY``): the institution it was issued to,
  the master patient id, the ordered code and item, the result's record id, the draft
  order's id and when it was issued. Feedback is matched to that, never to what the client
  claims; no 身份证, name or value is in it.
- :func:`parse_feedback_request` — §Feedback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from services.common import codec
from services.recognition.decision import HUB_FHIR_BASE
from services.recognition.feedback import NOTE_MAX

__all__ = [
    "HOOKS",
    "MAX_DRAFT_ORDERS",
    "MAX_IDENTIFIERS",
    "OVERRIDE_REASON_SYSTEM",
    "SERVICES",
    "SUMMARY_MAX",
    "CardClaims",
    "CardSigner",
    "DraftOrder",
    "FeedbackItem",
    "HookRequest",
    "Problem",
    "build_card",
    "discovery",
    "override_reasons",
    "parse_feedback_request",
    "parse_hook_request",
]

Hook = Literal["order-select", "order-sign"]
HOOKS: Final[tuple[Hook, ...]] = ("order-select", "order-sign")

#: service id → hook (§Discovery: ``{baseUrl}/cds-services/{id}``)
SERVICES: Final[dict[str, Hook]] = {
    "mrhub-recognition-select": "order-select",
    "mrhub-recognition-sign": "order-sign",
}
#: §Card Attributes: "One-sentence, <140-character summary".
SUMMARY_MAX: Final = 139
#: Draft orders read from one call; a bundle with more is refused.
MAX_DRAFT_ORDERS: Final = 50
#: Orders checked in one call (the selected ones for order-select); the rest get no card.
MAX_CHECKED_ORDERS: Final = 20
#: Patient identifiers tried per order (prefetched Patient first, then the orders' subjects).
MAX_IDENTIFIERS: Final = 3
#: Codings of one order tried until the catalogue knows one.
MAX_CODINGS: Final = 3
#: Links on one card (the result, images, a viewer).
MAX_LINKS: Final = 6
#: How long feedback on a card is taken (seconds): a week of an order's life.
CARD_FEEDBACK_S: Final = 7 * 24 * 3600
#: Feedback items in one POST.
MAX_FEEDBACK_ITEMS: Final = 50

OVERRIDE_REASON_SYSTEM: Final = f"{HUB_FHIR_BASE}/CodeSystem/recognition-exception-reason"
TOPIC: Final = {
    "system": f"{HUB_FHIR_BASE}/CodeSystem/cds-topic",
    "code": "mutual-recognition",
    "display": "检查检验结果互认 Mutual recognition of results",
}
SOURCE_LABEL: Final = "mrhub 检查检验结果互认"
ID_CARD_SYSTEM: Final = "urn:oid:2.16.156.10011.1.3"
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SCOPE_NAMES: Final = {
    "national": "全国",
    "provincial": "省级",
    "municipal": "市级",
    "alliance": "医联体",
}
_DESCRIPTIONS: Final[dict[Hook, tuple[str, str]]] = {
    "order-select": (
        "检查检验结果互认（开单时）",
        "开单选择检查检验项目时，提示患者在其他医疗机构已有、可互认的既往结果（数值、参考范围、"
        "报告结论、影像链接），并建议撤销本次开单。 When an order is selected: shows an earlier "
        "result the hub may recognise for it (value and reference range, the report's "
        "impression, images) and suggests withdrawing the draft order.",
    ),
    "order-sign": (
        "检查检验结果互认（签署时）",
        "签署医嘱前，对全部草稿检查检验医嘱给出可互认的既往结果。 Before the orders are signed: "
        "the same advice for every draft order.",
    ),
}
USAGE_REQUIREMENTS: Final = (
    "需由在 mrhub 机构注册表登记的医疗机构调用：以其 CDS 客户端（cds_clients 中的 iss 与 JWKS）"
    "签名的 JWT（ES384 或 RS384），或机构的 mrhub 令牌。患者需带可识别的标识（身份证、医保卡号或"
    "院内病案号）：prefetch 的 Patient.identifier 或草稿医嘱 subject.identifier。 Callers: an "
    "institution registered with the hub, with a JWT signed by one of its registered CDS "
    "clients or its hub bearer token. The patient must carry an identifier the hub knows "
    "(prefetched Patient.identifier or the draft orders' subject.identifier)."
)


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a request, and where (a FHIRPath-like location)."""

    message: str
    expression: str


def discovery() -> dict[str, Any]:
    """The discovery answer (§Discovery, §Prefetch Template)."""
    services = []
    for service_id, hook in SERVICES.items():
        title, description = _DESCRIPTIONS[hook]
        services.append(
            {
                "hook": hook,
                "title": title,
                "description": description,
                "id": service_id,
                "prefetch": {"patient": "Patient/{{context.patientId}}"},
                "usageRequirements": USAGE_REQUIREMENTS,
            }
        )
    return {"services": services}


# ── the request ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class DraftOrder:
    """A draft ServiceRequest of the call: its id (the client's) and codings."""

    id: str
    codes: tuple[str, ...]  # "<system>|<code>", at most MAX_CODINGS
    subject: str | None  # "<system>|<value>" of subject.identifier, when given

    @property
    def reference(self) -> str:
        return f"ServiceRequest/{self.id}"


@dataclass(frozen=True, slots=True)
class HookRequest:
    hook: Hook
    hook_instance: str
    user_id: str
    patient_id: str
    encounter_id: str | None
    orders: tuple[DraftOrder, ...]  # the ones to check, in the bundle's order
    identifiers: tuple[str, ...]  # patient identifiers to try, at most MAX_IDENTIFIERS


def _string(doc: Mapping[str, Any], name: str, where: str, problems: list[Problem]) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        problems.append(Problem(f"{name} is required: a string of 1 to 256 characters", where))
        return ""
    return value.strip()


def _identifier(ident: Any) -> str | None:
    """``<system>|<value>`` of a FHIR Identifier with both, else ``None``."""
    if not isinstance(ident, dict):
        return None
    system, value = ident.get("system"), ident.get("value")
    if not isinstance(system, str) or not isinstance(value, str):
        return None
    system, value = system.strip(), value.strip()
    if not system or not value or len(system) + len(value) > 250 or "|" in system:
        return None
    return f"{system}|{value}"


def _codes(resource: dict[str, Any]) -> tuple[str, ...]:
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    out: list[str] = []
    for coding in codings if isinstance(codings, list) else ():
        if not isinstance(coding, dict):
            continue
        system, value = coding.get("system"), coding.get("code")
        if isinstance(value, str) and value.strip() and len(value) <= 128:
            sys_text = system.strip() if isinstance(system, str) else ""
            if len(sys_text) <= 200 and "|" not in sys_text:
                out.append(f"{sys_text}|{value.strip()}" if sys_text else value.strip())
        if len(out) >= MAX_CODINGS:
            break
    return tuple(out)


def _prefetched_identifiers(prefetch: Any) -> list[str]:
    """Identifiers of the prefetched ``patient`` (a Patient, or a Bundle holding one); the
    身份证 first, then the others in the order given."""
    if not isinstance(prefetch, dict):
        return []
    patient = prefetch.get("patient")
    if isinstance(patient, dict) and patient.get("resourceType") == "Bundle":
        raw = patient.get("entry")
        entries: list[Any] = raw if isinstance(raw, list) else []
        patient = next(
            (
                e.get("resource")
                for e in entries
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "Patient"
            ),
            None,
        )
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        return []
    idents = patient.get("identifier")
    found = [
        i
        for i in (_identifier(x) for x in (idents if isinstance(idents, list) else [])[:20])
        if i is not None
    ]
    return sorted(found, key=lambda i: not i.startswith(ID_CARD_SYSTEM + "|"))


def parse_hook_request(doc: dict[str, Any], service_id: str) -> HookRequest | list[Problem]:
    """The hook call in ``doc`` for ``service_id`` (known), or what is wrong with it."""
    problems: list[Problem] = []
    expected = SERVICES[service_id]
    hook = doc.get("hook")
    if not isinstance(hook, str) or not hook:
        problems.append(Problem("hook is required", "hook"))
    elif hook != expected:
        problems.append(Problem(f"service {service_id} is invoked on {expected}", "hook"))
    hook_instance = _string(doc, "hookInstance", "hookInstance", problems)
    for optional in ("fhirServer",):
        if optional in doc and not isinstance(doc[optional], str):
            problems.append(Problem(f"{optional} must be a URL string", optional))
    if "fhirAuthorization" in doc and not isinstance(doc["fhirAuthorization"], dict):
        problems.append(Problem("fhirAuthorization must be an object", "fhirAuthorization"))
    prefetch = doc.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        problems.append(Problem("prefetch must be an object", "prefetch"))
    context = doc.get("context")
    if not isinstance(context, dict):
        problems.append(Problem("context is required: an object", "context"))
        return problems
    user_id = _string(context, "userId", "context.userId", problems)
    patient_id = _string(context, "patientId", "context.patientId", problems)
    encounter = context.get("encounterId")
    if encounter is not None and not isinstance(encounter, str):
        problems.append(Problem("encounterId must be a string", "context.encounterId"))
        encounter = None
    selections: list[str] = []
    if expected == "order-select":
        raw = context.get("selections")
        if (
            not isinstance(raw, list)
            or not raw
            or len(raw) > MAX_DRAFT_ORDERS
            or not all(isinstance(s, str) and s for s in raw)
        ):
            problems.append(
                Problem(
                    f"selections is required: 1 to {MAX_DRAFT_ORDERS} references such as "
                    "ServiceRequest/<id>",
                    "context.selections",
                )
            )
        else:
            selections = raw
    bundle = context.get("draftOrders")
    entries: list[Any] = []
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        problems.append(Problem("draftOrders is required: a FHIR Bundle", "context.draftOrders"))
    else:
        raw_entries = bundle.get("entry", [])
        if not isinstance(raw_entries, list):
            problems.append(Problem("draftOrders.entry must be an array", "context.draftOrders"))
        elif len(raw_entries) > MAX_DRAFT_ORDERS:
            problems.append(
                Problem(
                    f"draftOrders holds more than {MAX_DRAFT_ORDERS} entries",
                    "context.draftOrders.entry",
                )
            )
        else:
            entries = raw_entries
    orders: list[DraftOrder] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        where = f"context.draftOrders.entry[{n}].resource"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            problems.append(Problem("each entry needs a resource", where))
            continue
        if resource["resourceType"] != "ServiceRequest":
            continue  # medications, diets…: not this service's business
        rid = resource.get("id")
        if not isinstance(rid, str) or not _FHIR_ID.fullmatch(rid):
            problems.append(Problem("a draft ServiceRequest needs a FHIR id", f"{where}.id"))
            continue
        if rid in seen:
            problems.append(Problem(f"ServiceRequest/{rid} is given twice", f"{where}.id"))
            continue
        seen.add(rid)
        subject = resource.get("subject")
        orders.append(
            DraftOrder(
                id=rid,
                codes=_codes(resource),
                subject=_identifier(subject.get("identifier"))
                if isinstance(subject, dict)
                else None,
            )
        )
    if problems:
        return problems
    if expected == "order-select":
        chosen = set(selections)
        orders = [o for o in orders if o.reference in chosen]
    identifiers: list[str] = []
    for ident in [*_prefetched_identifiers(prefetch), *(o.subject for o in orders)]:
        if ident is not None and ident not in identifiers:
            identifiers.append(ident)
    return HookRequest(
        hook=expected,
        hook_instance=hook_instance,
        user_id=user_id,
        patient_id=patient_id,
        encounter_id=encounter.strip() if isinstance(encounter, str) else None,
        orders=tuple(orders[:MAX_CHECKED_ORDERS]),
        identifiers=tuple(identifiers[:MAX_IDENTIFIERS]),
    )


# ── the card's uuid ──────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class CardClaims:
    """What the hub remembers of a card by signing it into its ``uuid``."""

    institution: str
    service: str
    master_patient_id: str
    system: str | None
    code: str
    item_id: str | None
    item_category: str | None
    outcome: str
    result_record_id: str | None
    order: str  # "ServiceRequest/<id>" of the draft order
    catalog_version: str | None
    issued: int  # epoch seconds


_CLAIM_KEYS: Final = (
    ("i", "institution"),
    ("s", "service"),
    ("m", "master_patient_id"),
    ("cs", "system"),
    ("c", "code"),
    ("it", "item_id"),
    ("ic", "item_category"),
    ("o", "outcome"),
    ("r", "result_record_id"),
    ("q", "order"),
    ("cv", "catalog_version"),
    ("t", "issued"),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CardSigner:
    """Signs :class:`CardClaims` into a card ``uuid`` and opens one (see the module)."""

    PREFIX: Final = "mrc1."

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"mrhub-cds-card-v1", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:24])

    def sign(self, claims: CardClaims) -> str:
        doc = {short: getattr(claims, name) for short, name in _CLAIM_KEYS}
        body = _b64(codec.dumps(doc))
        return f"{self.PREFIX}{body}.{self._mac(body)}"

    def open(self, token: Any, now: datetime) -> CardClaims | None:
        """The claims of a card this hub issued, still open for feedback; else ``None``."""
        if not isinstance(token, str) or len(token) > 2048 or not token.startswith(self.PREFIX):
            return None
        body, _, mac = token[len(self.PREFIX) :].partition(".")
        if not body or not mac or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            doc = json.loads(_unb64(body))
            claims = CardClaims(**{name: doc[short] for short, name in _CLAIM_KEYS})
        except (ValueError, KeyError, TypeError):
            return None
        age = now.timestamp() - claims.issued
        if not isinstance(claims.issued, int) or age < -300 or age > CARD_FEEDBACK_S:
            return None
        return claims

    def suggestion_uuid(self, claims: CardClaims) -> str:
        """The delete suggestion's uuid: derived from the card, so feedback can be checked."""
        digest = hmac.new(self._key, self.sign(claims).encode(), hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


# ── the card ─────────────────────────────────────────────────────────────────────────────


def override_reasons(reasons: Mapping[str, tuple[str, str]]) -> list[dict[str, str]]:
    """§Reasons for rejecting a card: each reason a Coding with a ``display`` (the national
    list, then the region's own; :func:`services.recognition.feedback.exception_reasons`)."""
    return [
        {"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": name}
        for code, (name, _source) in reasons.items()
    ]


def _md(text: Any) -> str:
    """Text for one Markdown table cell: no pipes, no line breaks, no markup."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|")
    out = re.sub(r"[\r\n]+", " ", out)
    return re.sub(r"([*_`\[\]<>#])", r"\\\1", out).strip()


def _day(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC).date().isoformat()
    except ValueError:
        return value[:10]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary(item: str, hospital: str, day: str | None, shown: str | None) -> str:
    head = f"可互认：{_clip(hospital, 30)}"
    when = f" {day} " if day else " "
    tail = "，建议撤销本次开单"
    middle = f"已有{_clip(item, 30)}结果"
    if shown:
        room = SUMMARY_MAX - len(head + when + middle + tail) - 2
        if room >= 8:
            middle += f"（{_clip(shown, room)}）"
    return _clip(head + when + middle + tail, SUMMARY_MAX)


def build_card(
    answer: Mapping[str, Any],
    order: DraftOrder,
    code: str,
    *,
    claims_for: CardClaims,
    signer: CardSigner,
    reasons: Mapping[str, tuple[str, str]],
    hub_base: str,
) -> dict[str, Any] | None:
    """The card for ``order`` (checked as ``code``) from its check ``answer`` (the
    ``/recognition/check`` answer for the caller, contract 4), or ``None`` when there is
    nothing the caller may recognise. ``claims_for`` is what the uuid signs."""
    if answer.get("decision") != "recognisable":
        return None
    matches = answer.get("matches") or []
    best = next((m for m in matches if isinstance(m, dict) and m.get("recognisable")), None)
    if best is None:
        return None  # the recognisable result is one the caller may not see
    item = answer.get("item") or {}
    item_name = str(item.get("name") or code)
    category = item.get("category")
    hospital = str(best.get("institution_name") or best.get("institution") or "")
    day = _day(best.get("performed_at"))
    valid = _day(best.get("valid_until"))
    value = best.get("value") if isinstance(best.get("value"), dict) else None
    value_text = (value or {}).get("text") or (
        f"{value.get('value')} {value.get('unit') or ''}".strip() if value else None
    )
    conclusion = best.get("conclusion") if isinstance(best.get("conclusion"), str) else None
    raw_report = best.get("report")
    report: dict[str, Any] = raw_report if isinstance(raw_report, dict) else {}
    scope = best.get("hr_scope")
    shown = value_text or (conclusion and _clip(conclusion, 40))

    rows = [("项目 Item", item_name)]
    if value:
        rows.append(("结果 Value", value_text or ""))
        if value.get("reference_range"):
            rows.append(("参考范围 Reference range", value["reference_range"]))
        if value.get("interpretation"):
            rows.append(("判读 Interpretation", value["interpretation"]))
    if conclusion:
        rows.append(("报告结论 Impression", _clip(conclusion, 1000)))
    rows += [
        ("检查/检验日期 Date", day or "未知 unknown"),
        ("医疗机构 Hospital", hospital),
        (
            "互认范围 HR scope",
            f"{_SCOPE_NAMES.get(str(scope), str(scope))}（{scope}）" if scope else "同机构或医联体",
        ),
        ("有效期至 Valid until", valid or "—"),
    ]
    if report.get("reference"):
        rows.append(("结果 Result", report["reference"]))
    detail = (
        f"**{_md(item_name)}**：患者在{_md(hospital)}已有可互认的结果。\n\n"
        "| | |\n|---|---|\n"
        + "".join(f"| {_md(k)} | {_md(v)} |\n" for k, v in rows)
        + "\n依据《关于印发医疗机构检查检验结果互认管理办法的通知》（国卫医发〔2022〕6号），"
        "是否互认由接诊医师判断；如需重新开单，请选择理由。"
    )
    links: list[dict[str, str]] = []
    url = report.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        links.append({"label": f"既往结果 {report.get('reference') or ''}".strip(), "url": url})
    for image in best.get("images") or []:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            links.append({"label": "影像 DICOMweb (WADO-RS)", "url": image})
    viewer = best.get("viewer")
    if isinstance(viewer, str) and viewer.startswith(("http://", "https://")):
        links.append({"label": "在影像浏览器中查看 Open the viewer", "url": viewer})
    card_uuid = signer.sign(claims_for)
    card: dict[str, Any] = {
        "uuid": card_uuid,
        "summary": _summary(item_name, hospital, day, shown),
        "detail": detail,
        "indicator": "warning" if category == "imaging" else "info",
        "source": {"label": SOURCE_LABEL, "url": hub_base, "topic": dict(TOPIC)},
        "suggestions": [
            {
                "label": "采用既往结果，撤销本次开单 Use the earlier result, withdraw this order",
                "uuid": signer.suggestion_uuid(claims_for),
                "isRecommended": True,
                "actions": [
                    {
                        "type": "delete",
                        "description": f"撤销草稿医嘱 {order.reference}（{_clip(item_name, 40)}）",
                        "resourceId": order.reference,
                    }
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": override_reasons(reasons),
    }
    if links:
        card["links"] = [{**link, "type": "absolute"} for link in links[:MAX_LINKS]]
    return card


# ── feedback ─────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    card: str
    outcome: Literal["accepted", "overridden"]
    reason_code: str | None  # the Coding's code (its system checked)
    comment: str
    accepted: tuple[str, ...]  # acceptedSuggestions[].id
    at: datetime


def parse_feedback_request(doc: dict[str, Any]) -> list[FeedbackItem] | list[Problem]:
    """The items of a §Feedback POST, or what is wrong with them (the reasons and the cards
    themselves are checked by the caller, which knows the catalogue and the key)."""
    items = doc.get("feedback")
    if not isinstance(items, list) or not items or len(items) > MAX_FEEDBACK_ITEMS:
        return [Problem(f"feedback is required: 1 to {MAX_FEEDBACK_ITEMS} items", "feedback")]
    problems: list[Problem] = []
    out: list[FeedbackItem] = []
    for n, item in enumerate(items):
        where = f"feedback[{n}]"
        if not isinstance(item, dict):
            problems.append(Problem("each feedback item is an object", where))
            continue
        card = item.get("card")
        if not isinstance(card, str) or not card:
            problems.append(Problem("card is required: the card's uuid", f"{where}.card"))
        outcome = item.get("outcome")
        if outcome not in ("accepted", "overridden"):
            problems.append(Problem("outcome must be accepted or overridden", f"{where}.outcome"))
        stamp = item.get("outcomeTimestamp")
        at: datetime | None = None
        if isinstance(stamp, str):
            try:
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                at = None
        if at is None or at.tzinfo is None:
            problems.append(
                Problem(
                    "outcomeTimestamp is required: an RFC 3339 date-time in UTC",
                    f"{where}.outcomeTimestamp",
                )
            )
        accepted: list[str] = []
        raw_accepted = item.get("acceptedSuggestions")
        if outcome == "accepted":
            if (
                not isinstance(raw_accepted, list)
                or not raw_accepted
                or not all(
                    isinstance(a, dict) and isinstance(a.get("id"), str) for a in raw_accepted
                )
            ):
                problems.append(
                    Problem(
                        "an accepted outcome needs acceptedSuggestions: [{id}]",
                        f"{where}.acceptedSuggestions",
                    )
                )
            else:
                accepted = [a["id"] for a in raw_accepted]
        reason_code: str | None = None
        comment = ""
        override = item.get("overrideReason")
        if override is not None:
            if not isinstance(override, dict):
                problems.append(Problem("overrideReason must be an object", f"{where}"))
            else:
                reason = override.get("reason")
                if reason is not None:
                    if (
                        not isinstance(reason, dict)
                        or reason.get("system") != OVERRIDE_REASON_SYSTEM
                        or not isinstance(reason.get("code"), str)
                    ):
                        problems.append(
                            Problem(
                                "overrideReason.reason must be one of the card's overrideReasons",
                                f"{where}.overrideReason.reason",
                            )
                        )
                    else:
                        reason_code = reason["code"]
                text = override.get("userComment", "")
                if not isinstance(text, str) or len(text) > NOTE_MAX:
                    problems.append(
                        Problem(
                            f"userComment must be text of at most {NOTE_MAX} characters",
                            f"{where}.overrideReason.userComment",
                        )
                    )
                else:
                    comment = text
        if outcome == "accepted" and override is not None:
            problems.append(Problem("an accepted card has no overrideReason", where))
        if not problems and isinstance(card, str) and at is not None:
            out.append(
                FeedbackItem(
                    card=card,
                    outcome="accepted" if outcome == "accepted" else "overridden",
                    reason_code=reason_code,
                    comment=comment,
                    accepted=tuple(accepted),
                    at=at,
                )
            )
    return problems or out
