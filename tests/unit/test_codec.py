"""The Kafka value codec: what a downstream consumer reads is what the hospital posted."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import simplejson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import codec
from services.common.envelope import Envelope


def test_a_decimal_keeps_its_digits_both_ways() -> None:
    raw = b'{"valueQuantity":{"value":6.30,"unit":"mmol/L"},"low":0.000120}'
    doc = codec.loads(raw)
    assert doc["valueQuantity"]["value"] == Decimal("6.30")
    assert str(doc["valueQuantity"]["value"]) == "6.30"  # not 6.3
    assert codec.dumps(doc) == raw


def test_integers_stay_integers_and_big_ones_are_exact() -> None:
    doc = codec.loads(b'{"n":3,"big":123456789012345678901234567890}')
    assert doc == {"n": 3, "big": 123456789012345678901234567890}
    assert isinstance(doc["n"], int)


def test_chinese_text_is_written_as_utf8_not_escaped() -> None:
    out = codec.dumps({"display": "血钾", "note": 'a "quote"'})
    assert "血钾".encode() in out
    assert json.loads(out) == {"display": "血钾", "note": 'a "quote"'}


def test_key_order_is_kept() -> None:
    assert codec.dumps({"z": 1, "a": 2}) == b'{"z":1,"a":2}'


@pytest.mark.parametrize("bad", [b"", b"{", b'{"a":NaN}', b"\xff\xfe", b'{"a":1}x'])
def test_what_is_not_json_raises_decode_error(bad: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.loads(bad)


def test_an_envelope_round_trips_with_exact_decimals() -> None:
    payload = {
        "resource": {"resourceType": "Observation", "valueQuantity": {"value": Decimal("4.50")}}
    }
    env = Envelope(event_type="mrhub.ingest.resource-accepted", source="H1", payload=payload)
    raw = env.to_bytes()
    assert b'"value":4.50' in raw
    back = Envelope.from_bytes(raw)
    assert back.payload == payload
    assert back.event_id == env.event_id and back.occurred_at == env.occurred_at


def test_a_decode_error_is_a_value_error_as_json_loads_raises() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Envelope.from_bytes(b"{not json")


def test_pretty_is_indented_utf8_json_with_exact_decimals() -> None:
    text = codec.pretty({"name": "县医院", "saving_yuan": Decimal("12.50"), "rows": []})
    assert text == '{\n  "name": "县医院",\n  "saving_yuan": 12.50,\n  "rows": []\n}'
    assert codec.loads(text) == {"name": "县医院", "saving_yuan": Decimal("12.50"), "rows": []}


def test_is_text_refuses_a_lone_surrogate_anywhere() -> None:
    from services.common.jsonbody import is_text

    assert is_text({"a": ["县医院", 1, 2.5, None, {"b": True}]})
    assert not is_text({"a": [{"b": "\ud800"}]})
    assert not is_text({"\udfff": 1})


_SCALARS = (
    st.text()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.booleans()
    | st.none()
    | st.decimals(allow_nan=False, allow_infinity=False)
)
_DOCS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(_DOCS)
def test_dumps_sorted_writes_what_simplejson_wrote_for_content_hashes(doc: Any) -> None:
    """The patient index's content hashes were simplejson's sorted output; the msgspec
    encoder must give the same bytes or every stored hash would stop matching its resend."""
    expected = simplejson.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert codec.dumps_sorted(doc) == expected.encode()
