"""JSON request bodies with bounded nesting, for every JSON endpoint of the hub's workers.

``simplejson`` (like every recursive parser) raises ``RecursionError`` on deeply nested input
such as ``[[[[…]]]]`` a hundred thousand levels deep; an endpoint that let it escape answered
500. :func:`parse` answers such input with :class:`JsonBodyError`, as it does malformed JSON,
and refuses anything nested deeper than :data:`MAX_DEPTH` even when the parser copes.
"""

from __future__ import annotations

from typing import Any, Final

import simplejson

#: Deeper than any request the hub takes (a FHIR Patient in a ``$match`` is about 6 levels).
MAX_DEPTH: Final = 64


class JsonBodyError(ValueError):
    """The body is not JSON the hub reads: ``message`` says what, for an OperationOutcome."""


def depth(doc: Any) -> int:
    """How deeply ``doc`` nests (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            level += 1
            deepest = max(deepest, level)
            stack.extend((child, level) for child in node if isinstance(child, dict | list))
    return deepest


def is_text(doc: Any) -> bool:
    """Whether every string (and member name) in parsed JSON ``doc`` is Unicode text.
    ``"\\ud800"`` is valid JSON but a lone surrogate, which can be neither logged nor sent on
    as UTF-8: an endpoint refuses such a body with 400."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def parse(raw: bytes, *, max_depth: int = MAX_DEPTH, decimals: bool = False) -> Any:
    """The JSON value of ``raw`` (numbers with a fraction as ``Decimal`` with ``decimals``),
    or :class:`JsonBodyError`."""
    try:
        doc = simplejson.loads(raw, use_decimal=decimals) if raw else None
    except RecursionError:
        raise JsonBodyError(f"the body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonBodyError(f"the body is not JSON: {str(exc)[:200]}") from None
    if depth(doc) > max_depth:
        raise JsonBodyError(f"the body nests deeper than {max_depth} levels")
    return doc
