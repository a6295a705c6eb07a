"""The hub's JSON codec for Kafka values: msgspec (C), with exact decimals.

A FHIR decimal keeps its digits end to end (``6.30`` is read as ``Decimal("6.30")`` and written
back as ``6.30``), strings are written as UTF-8 (not ``\\uXXXX``), key order is kept. msgspec
does this about ten times faster than simplejson, which encoded every string in Python (the
profile behind decision 0005). It is the hub's one JSON writer: Kafka values, table entries,
HTTP answers, signed tokens (:func:`dumps`) and ``--json`` output for people (:func:`pretty`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder(decimal_format="number")
_SORTED_ENCODER = msgspec.json.Encoder(decimal_format="number", order="sorted")
_DECODER = msgspec.json.Decoder(float_hook=Decimal)


class DecodeError(ValueError):
    """A value that is not JSON (a ``ValueError``, as ``json.loads`` raises)."""


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON; ``Decimal`` values keep their digits."""
    return _ENCODER.encode(doc)


def dumps_sorted(doc: Any) -> bytes:
    """:func:`dumps` with every object's keys sorted (by code point), for content hashes:
    the same bytes as ``simplejson.dumps(doc, sort_keys=True, ensure_ascii=False,
    separators=(",", ":")).encode()`` for strings, integers, booleans, ``None`` and
    ``Decimal`` (floats are written differently: ``1e16`` where simplejson writes
    ``1e+16``), about ten times faster (tests/unit/test_codec.py holds the two equal)."""
    return _SORTED_ENCODER.encode(doc)


def pretty(doc: Any) -> str:
    """JSON for people to read (``--json`` output): indented by two, Chinese as written, and
    ``Decimal`` values with their digits, like :func:`dumps`."""
    return msgspec.json.format(_ENCODER.encode(doc), indent=2).decode()


def loads(data: bytes | str) -> Any:
    """JSON with every non-integer number read as ``Decimal``. Raises :data:`DecodeError`
    (a ``ValueError``) on anything that is not JSON."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(str(exc)) from exc
