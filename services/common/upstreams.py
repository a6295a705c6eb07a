"""Several workers of one service behind one setting: which base URL to call next.

``MRHUB_RECOGNITION__URL`` and ``MRHUB_PATIENT_INDEX__URL`` name one base URL or a
comma-separated list of them, one per worker (``mrhub up --workers N`` sets the list). Any
worker answers any request (it forwards to the owner of the patient's partition), so a
caller spreads its requests over the list and, when a worker refuses the connection or does
not accept it in time, tries the next one. A worker that failed so is tried last for
:data:`COOLDOWN_S` seconds, so that a dead one costs one failed connection now and then, not
one per request.

Only a failure to *connect* moves a request to the next worker unless the request is a read:
a request that reached a worker may have been processed, and sending it again could double
its effect. The callers (services/ingest/proxy.py, services/common/patient_lookup.py) decide
which failures are which; this module only keeps the order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from time import monotonic
from typing import Final

__all__ = ["COOLDOWN_S", "Upstreams", "split_urls"]

#: How long a worker that refused a connection is tried only after the others.
COOLDOWN_S: Final = 5.0


def split_urls(value: str) -> tuple[str, ...]:
    """The base URLs of a comma-separated list, without trailing ``/`` or blanks."""
    urls = tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())
    if not urls:
        raise ValueError("no URL given")
    return urls


class Upstreams:
    """The workers' base URLs in the order to try them for one request."""

    def __init__(
        self,
        value: str,
        *,
        cooldown_s: float = COOLDOWN_S,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.urls = split_urls(value)
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._next = itertools.count()
        self._down_until: dict[str, float] = {}

    def order(self) -> list[str]:
        """Every URL once: starting at the next one in turn (round robin), those that failed
        within the cool-down last."""
        n = len(self.urls)
        start = next(self._next) % n
        turn = [self.urls[(start + i) % n] for i in range(n)]
        if not self._down_until:
            return turn
        now = self._clock()
        up = [u for u in turn if self._down_until.get(u, 0.0) <= now]
        return up + [u for u in turn if u not in up]

    def failed(self, url: str) -> None:
        """``url`` refused a connection or did not accept it in time."""
        self._down_until[url] = self._clock() + self._cooldown_s

    def answered(self, url: str) -> None:
        """``url`` answered (any status): it is up again."""
        self._down_until.pop(url, None)
