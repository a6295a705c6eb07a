"""``MRHUB_EVENT_LOOP``: which loop a served process gets. Each case runs in a fresh
interpreter, as ``mrhub serve`` does, so this process's own policy stays untouched."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import asyncio, sys
from services.common.event_loop import use_event_loop
from services.common.metrics import event_loop_in_use
use_event_loop(sys.argv[1])
loop = asyncio.new_event_loop()
print(type(loop).__module__.split(".")[0], event_loop_in_use())
loop.close()
"""


@pytest.mark.parametrize(
    ("setting", "module", "label"),
    [("uvloop", "uvloop", "uvloop"), ("asyncio", "asyncio", "asyncio")],
)
def test_the_setting_decides_the_loop_and_the_build_info_label_says_it(
    setting: str, module: str, label: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [module, label]


def test_the_default_is_uvloop_and_anything_else_is_refused() -> None:
    from pydantic import ValidationError

    from services.common.settings import Settings

    assert Settings().event_loop == "uvloop"
    with pytest.raises(ValidationError):
        Settings(event_loop="gevent")  # type: ignore[arg-type]
