"""Dedup decisions for one business key, rule by rule, each both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.patient_index.canonical import CanonicalRecord, record_json
from services.patient_index.dedup import (
    Outcome,
    Seen,
    content_hash,
    decide,
    load_seen_value,
    seen_value,
)
from tests.unit.test_canonical import (
    INST_A,
    INST_B,
    build,
    ct_chest_study,
    ct_order,
    lab_observation,
)

T0 = "2026-11-20T10:02:00+08:00"
T1 = "2026-11-20T11:30:00+08:00"  # later
T_EARLY = "2026-11-20T09:00:00+08:00"  # earlier


def k(
    *,
    status: str = "final",
    issued: str = T0,
    value: str = "4.2",
    master: str = "mp-0001",
    event: str = "1",
    **kw: Any,
) -> CanonicalRecord:
    """The potassium result of report JY20261120-0017, one version of it."""
    return build(
        lab_observation(status=status, issued=issued, value=Decimal(value)),
        master=master,
        event_id=event * 32,
        **kw,
    )


def apply(seen: Seen | None, record: CanonicalRecord) -> Outcome:
    """decide(), checking on the way that applying the same record again publishes nothing."""
    out = decide(seen, record)
    again = decide(out.seen, record)
    assert again.published_change is None and not again.store and again.seen is out.seen
    if out.published_change is not None:
        assert again.change == "duplicate"
    return out


# --- new ----------------------------------------------------------------------------------


def test_the_first_arrival_is_new() -> None:
    record = k()
    out = apply(None, record)
    assert (out.change, out.store, out.published_change) == ("new", True, "new")
    assert out.seen == Seen(
        content_hash=content_hash(record),
        status="final",
        issued_at=record.issued_at,
        record_id=record.record_id,
        last_event_id="1" * 32,
        master_patient_id="mp-0001",
        retracted=False,
    )
    assert out.previous_master_patient_id is None


def test_seen_survives_a_json_round_trip() -> None:
    seen = decide(None, k()).seen
    assert Seen.model_validate_json(seen.model_dump_json()) == seen


def test_seen_and_the_published_record_share_one_value_and_old_values_still_read() -> None:
    record = k()
    seen = decide(None, record).seen
    published = {"record": record_json(record), "source": "inst"}
    state, last = load_seen_value(seen_value(seen, published))
    assert state == seen and last is not None
    assert CanonicalRecord.model_validate(last["record"]) == record
    # a value written before the record moved into it: the state alone
    assert load_seen_value(seen.model_dump_json().encode()) == (seen, None)


# --- duplicate ----------------------------------------------------------------------------


def test_an_exact_resend_is_a_duplicate() -> None:
    seen = decide(None, k()).seen
    resend = k(event="2", trace_id="other", received_at=datetime(2026, 11, 21, tzinfo=UTC))
    out = decide(seen, resend)
    assert (out.change, out.store, out.published_change) == ("duplicate", False, None)
    assert out.seen is seen


def test_a_changed_value_is_not_a_duplicate() -> None:
    seen = decide(None, k()).seen
    assert decide(seen, k(value="4.20", event="2")).change == "update"


def test_content_hash_ignores_envelope_fields_and_time_spelling() -> None:
    base = k()
    assert content_hash(base) == content_hash(
        k(event="9", trace_id="x", received_at=None, mapper=lambda _codes: "SX-0101")
    )
    assert content_hash(base) == content_hash(k(issued="2026-11-20T02:02:00Z"))
    assert content_hash(base) == content_hash(k(master="mp-other"))  # judged separately
    assert content_hash(base) != content_hash(k(status="amended"))
    assert content_hash(base) != content_hash(k(value="4.20"))  # digits are content
    assert content_hash(base) != content_hash(k(issued=T1))


def test_content_hashes_stored_before_the_msgspec_encoder_still_match() -> None:
    """A record's hash is what the simplejson encoder gave it before (the hashes in every
    running hub's ``seen`` table): a resend after the upgrade is still a duplicate."""
    import hashlib

    import simplejson

    from services.patient_index.dedup import _CONTENT_FIELDS, _normalise

    for record in (k(), k(value="4.20"), build(ct_chest_study()), build(ct_order())):
        doc = _normalise(record.model_dump(include=set(_CONTENT_FIELDS)))
        text = simplejson.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        assert content_hash(record) == hashlib.sha256(text.encode()).hexdigest()[:32]


# --- update -------------------------------------------------------------------------------


def test_a_corrected_result_issued_later_is_an_update() -> None:
    seen = decide(None, k()).seen
    out = apply(seen, k(status="corrected", value="4.5", issued=T1, event="2"))
    assert (out.change, out.store) == ("update", True)
    assert out.seen.status == "corrected" and out.seen.last_event_id == "2" * 32
    assert out.seen.issued_at == datetime(2026, 11, 20, 3, 30, tzinfo=UTC)


def test_a_final_replaces_a_preliminary_issued_at_the_same_time() -> None:
    seen = decide(None, k(status="preliminary")).seen
    assert apply(seen, k(status="final", event="2")).change == "update"


def test_other_content_without_an_issue_time_is_an_update() -> None:
    seen = decide(None, k()).seen
    res = lab_observation(status="amended")
    del res["issued"]
    out = apply(seen, build(res, event_id="2" * 32))
    assert out.change == "update"
    assert out.seen.issued_at == seen.issued_at  # the watermark is never lowered


# --- stale --------------------------------------------------------------------------------


def test_an_older_version_arriving_late_is_stale() -> None:
    seen = decide(None, k(status="final", issued=T1)).seen
    out = apply(seen, k(status="preliminary", issued=T0, event="2"))
    assert (out.change, out.store, out.published_change) == ("stale", False, None)
    assert out.seen is seen


def test_a_newer_version_arriving_late_is_not_stale() -> None:
    seen = decide(None, k(status="preliminary", issued=T0)).seen
    assert apply(seen, k(status="final", issued=T1, event="2")).change == "update"


# --- retraction ---------------------------------------------------------------------------


def test_entered_in_error_retracts_once() -> None:
    seen = decide(None, k()).seen
    out = apply(seen, k(status="entered-in-error", event="2"))
    assert (out.change, out.store, out.published_change) == ("retraction", True, "retraction")
    assert out.seen.retracted
    again = decide(out.seen, k(status="entered-in-error", value="4.3", issued=T1, event="3"))
    assert again.change == "duplicate"  # a second, even different, retraction
    assert decide(out.seen, k(status="cancelled", event="4")).change == "duplicate"


def test_a_retraction_applies_whatever_its_issue_time() -> None:
    seen = decide(None, k(issued=T1)).seen
    assert apply(seen, k(status="entered-in-error", issued=T_EARLY)).change == "retraction"


def test_a_revoked_order_is_a_retraction() -> None:
    active = build(ct_order(), inst=INST_B)
    revoked_res = ct_order()
    revoked_res["status"] = "revoked"
    seen = decide(None, active).seen
    assert apply(seen, build(revoked_res, inst=INST_B)).change == "retraction"


def test_a_first_arrival_already_retracted_is_stale_but_remembered() -> None:
    out = apply(None, k(status="entered-in-error", issued=T0))
    assert (out.change, out.store, out.published_change) == ("stale", True, None)
    assert out.seen.retracted
    # a late copy of the original it withdrew is not indexed afterwards…
    assert apply(out.seen, k(status="final", issued=T0, event="2")).change == "stale"
    assert apply(out.seen, k(status="final", issued=T_EARLY, event="2")).change == "stale"
    # …but a new final issued after it is
    assert apply(out.seen, k(status="final", issued=T1, event="3")).change == "new"


def test_a_new_final_after_entered_in_error_is_new_again() -> None:
    seen = decide(None, k()).seen
    seen = decide(seen, k(status="entered-in-error", event="2")).seen
    out = apply(seen, k(status="final", value="4.4", issued=T1, event="3"))
    assert (out.change, out.published_change) == ("new", "new")
    assert not out.seen.retracted and out.seen.status == "final"


def test_a_late_copy_of_the_withdrawn_original_stays_withdrawn() -> None:
    seen = decide(None, k()).seen
    seen = decide(seen, k(status="entered-in-error", event="2")).seen
    assert apply(seen, k(event="3")).change == "stale"  # same issue time as the retraction


def test_after_a_retraction_an_unknown_issue_time_counts_as_new() -> None:
    seen = decide(None, k()).seen
    seen = decide(seen, k(status="entered-in-error", event="2")).seen
    res = lab_observation(value=Decimal("4.4"))
    del res["issued"]
    assert apply(seen, build(res, event_id="3" * 32)).change == "new"


# --- master patient changes (merge / unmerge) ---------------------------------------------


def test_same_content_under_another_master_is_an_update() -> None:
    seen = decide(None, k(master="mp-0001")).seen
    out = apply(seen, k(master="mp-0009", event="2"))
    assert (out.change, out.published_change) == ("update", "update")
    assert out.previous_master_patient_id == "mp-0001"
    assert out.seen.master_patient_id == "mp-0009"
    assert out.seen.content_hash == seen.content_hash
    assert decide(out.seen, k(master="mp-0009", event="3")).change == "duplicate"


def test_same_content_and_master_is_not_a_move() -> None:
    seen = decide(None, k(master="mp-0001")).seen
    out = decide(seen, k(master="mp-0001", event="2"))
    assert out.change == "duplicate" and out.previous_master_patient_id is None


def test_a_new_version_under_another_master_carries_both_ids() -> None:
    seen = decide(None, k()).seen
    out = apply(seen, k(status="amended", issued=T1, master="mp-0009", event="2"))
    assert (out.change, out.previous_master_patient_id) == ("update", "mp-0001")
    assert out.seen.master_patient_id == "mp-0009"


# --- imaging across institutions ----------------------------------------------------------


def test_a_study_from_a_second_institution_is_a_new_record_of_its_own() -> None:
    a = build(ct_chest_study(), inst=INST_A)
    b = build(ct_chest_study(inst=INST_B, endpoint="Endpoint/cloud-b"), inst=INST_B)
    assert a.record_id != b.record_id  # stored under its own key: A's state is not touched
    out = apply(None, b)
    assert out.change == "new"
    # B's withdrawal of "its" copy before it ever posted one publishes nothing
    doc = ct_chest_study(inst=INST_B)
    doc["status"] = "entered-in-error"
    assert apply(None, build(doc, inst=INST_B)).change == "stale"


def test_a_record_listed_again_after_its_withdrawal_names_no_previous_master() -> None:
    """The withdrawn record was removed: a fresh post under another patient moves nothing
    (it must not tell consumers to drop that other patient's copy)."""
    withdrawn = decide(None, k(status="entered-in-error", master="mp-0001")).seen
    out = apply(withdrawn, k(issued=T1, master="mp-0009", event="2"))
    assert (out.change, out.previous_master_patient_id) == ("new", None)


# --- properties ---------------------------------------------------------------------------

_STATUSES = [
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
]
_BASE = datetime(2026, 11, 20, 10, 0, tzinfo=timezone(timedelta(hours=8)))
_version = st.tuples(
    st.sampled_from(_STATUSES),
    st.none() | st.integers(min_value=-5, max_value=5),  # issued: hours from the base, or none
    st.sampled_from(["+08:00", "Z", "-05:00"]),  # the same instant spelled another way
    st.sampled_from(["4.2", "4.20", "4.5"]),
    st.sampled_from(["mp-1", "mp-2"]),
)


def _record(version: tuple[str, int | None, str, str, str], n: int) -> CanonicalRecord:
    status, hours, tz, value, master = version
    res = lab_observation(status=status, value=Decimal(value))
    if hours is None:
        del res["issued"]
    else:
        when = _BASE + timedelta(hours=hours)
        offset = {"+08:00": timedelta(hours=8), "Z": timedelta(0), "-05:00": timedelta(hours=-5)}
        local = when.astimezone(timezone(offset[tz])).replace(tzinfo=None).isoformat()
        res["issued"] = local + tz
    return build(res, master=master, event_id=f"{n:032x}")


@settings(max_examples=400, deadline=None)
@given(st.lists(_version, min_size=1, max_size=12), st.data())
def test_decide_is_idempotent_and_total_on_any_sequence(
    versions: list[tuple[str, int | None, str, str, str]], data: st.DataObject
) -> None:
    seen: Seen | None = None
    published: list[str] = []
    watermark: datetime | None = None
    for n, version in enumerate(versions):
        record = _record(version, n)
        out = apply(seen, record)  # never raises; a second application publishes nothing
        if out.published_change is not None:
            published.append(out.change)
        if not out.store:
            assert out.seen is seen
        # the issue-time watermark only moves forward
        if watermark is not None:
            assert out.seen.issued_at is not None and out.seen.issued_at >= watermark
        watermark = out.seen.issued_at
        assert out.seen.record_id == record.record_id
        assert out.seen.retracted == (out.seen.status in {"entered-in-error", "cancelled"})
        seen = out.seen
        # replaying any earlier version never publishes it twice in a row
        earlier = data.draw(st.sampled_from(versions[: n + 1]))
        replay = decide(seen, _record(earlier, 999))
        if replay.published_change is not None:
            assert decide(replay.seen, _record(earlier, 999)).change == "duplicate"
    # what consumers see is coherent: it starts with "new", a retraction is followed only
    # by "new" (never a second retraction or an update of a withdrawn record)
    if published:
        assert published[0] == "new"
    for before, after in pairwise(published):
        if before == "retraction":
            assert after == "new"


# --- who holds a study: another institution's withdrawal is refused, never applied --------


def test_a_withdrawal_of_a_study_only_another_institution_holds_is_refused() -> None:
    from services.patient_index.dedup import study_record

    a_study, a_report, c_try = "a" * 32, "b" * 32, "c" * 32
    held = study_record(None, "A", a_study, live=True, attempt=False).owners
    held = study_record(held, "A", a_report, live=True, attempt=False).owners
    assert held is not None and held.live == {"A": tuple(sorted((a_study, a_report)))}
    # C retracts "its" copy of A's UID (never posted): an attempt on A's, refused
    step = study_record(held, "C", c_try, live=False, attempt=True)
    assert step.refused and step.holders == ("A",)
    assert step.owners is None  # nothing changed: A still holds both records


def test_withdrawing_one_s_own_copy_or_a_study_nobody_holds_is_not_refused() -> None:
    from services.patient_index.dedup import study_record

    hospital, cloud = "h" * 32, "k" * 32
    held = study_record(None, "H", hospital, live=True, attempt=False).owners
    held = study_record(held, "CLOUD", cloud, live=True, attempt=False).owners
    assert held is not None
    # the cloud withdraws its own copy: its record leaves, the hospital's stays
    own = study_record(held, "CLOUD", cloud, live=False, attempt=False)
    assert not own.refused and own.owners is not None and own.owners.live == {"H": (hospital,)}
    # a hospital withdrawing a study nobody holds (its post never reached the hub)
    alone = study_record(None, "X", "x" * 32, live=False, attempt=True)
    assert not alone.refused and alone.owners is None
    # a second withdrawal attempt by an institution that holds a record of the study itself
    mine = study_record(held, "H", "r" * 32, live=False, attempt=True)
    assert not mine.refused


def test_an_exact_resend_with_its_resource_is_still_a_duplicate() -> None:
    """The posted resource rides on the record (contract 1) but is not part of its content:
    the same post through another event, at another time, is a duplicate, not an update."""
    first = k()
    again = first.model_copy(
        update={
            "source": first.source.model_copy(update={"event_id": "f" * 32}),
            "trace_id": "another-trace",
            "resource": dict(first.resource or {}, meta={"source": "resend"}),
        }
    )
    assert first.resource is not None
    assert decide(decide(None, first).seen, again).change == "duplicate"
