"""Which event loop a ``mrhub serve`` process runs on (``MRHUB_EVENT_LOOP``).

uvloop by default: the patient index spent a fifth to a quarter of its CPU in the event loop's
own bookkeeping (scheduling callbacks, futures, the selector), which libuv does in C. It is
faust's (mode's) supported alternative loop, chosen through its public ``mode.loop.use``,
which sets the asyncio policy; so it must run before anything creates a loop — ``mrhub
serve`` calls it first thing, and every service (faust workers, the gateway's
``asyncio.run``, the console's ``web.run_app``) then gets its loop from that policy.
"""

from __future__ import annotations

from typing import Literal

import mode.loop


def use_event_loop(kind: Literal["uvloop", "asyncio"]) -> None:
    """Make ``kind`` the loop of every event loop this process creates from now on."""
    if kind == "uvloop":
        mode.loop.use("uvloop")
