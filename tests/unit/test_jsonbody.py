from __future__ import annotations

from decimal import Decimal

import pytest

from services.common.jsonbody import MAX_DEPTH, JsonBodyError, depth, parse


def test_depth_counts_containers_without_recursing() -> None:
    assert depth(1) == 0 and depth([]) == 1 and depth({"a": [1, {"b": []}]}) == 4
    deep: list[object] = []
    for _ in range(50_000):  # far deeper than Python's recursion limit
        deep = [deep]
    assert depth(deep) == 50_001


def test_a_hundred_thousand_nested_arrays_is_a_clear_refusal() -> None:
    with pytest.raises(JsonBodyError, match="nests deeper"):
        parse(b"[" * 100_000 + b"]" * 100_000)


def test_nesting_just_past_the_limit_is_refused_and_at_the_limit_is_not() -> None:
    at = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert depth(parse(at)) == MAX_DEPTH
    with pytest.raises(JsonBodyError):
        parse(b"[" + at + b"]")


def test_malformed_json_and_bad_utf8_are_refused() -> None:
    for raw in (b"{not json", b'{"a": "\xff"}', b"[1,]"):
        with pytest.raises(JsonBodyError, match="not JSON"):
            parse(raw)


def test_empty_is_none_and_decimals_on_request() -> None:
    assert parse(b"") is None
    assert parse(b'{"v": 6.30}', decimals=True) == {"v": Decimal("6.30")}
