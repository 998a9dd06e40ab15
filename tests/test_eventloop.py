"""The process a run's loop runs in: uvloop where it is installed, and a collector set for many
short-lived objects (`batchrun.eventloop`)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from batchrun import eventloop


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Made:
    """A container object the collector tracks."""


async def _inside_the_run(before: Made) -> dict[str, object]:
    during = Made()
    return {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "thresholds": gc.get_threshold(),
        "made before is frozen": not any(obj is before for obj in gc.get_objects()),
        "made during is collected as usual": any(obj is during for obj in gc.get_objects(generation=0)),
    }


@pytest.mark.usefixtures("collector_restored")
def test_a_run_freezes_what_exists_and_collects_young_objects_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHRUN_EVENT_LOOP", raising=False)
    before = Made()
    assert any(obj is before for obj in gc.get_objects())  # premise: tracked until the run starts

    seen = eventloop.run(_inside_the_run(before))

    assert seen == {
        "loop": eventloop.loop_name(),
        "thresholds": eventloop.GC_THRESHOLDS,
        "made before is frozen": True,
        "made during is collected as usual": True,
    }
    assert eventloop.GC_THRESHOLDS[0] >= 10_000  # Python's default of 700 cost a quarter of a run's CPU


@pytest.mark.usefixtures("collector_restored")
def test_batchrun_event_loop_asyncio_runs_on_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRUN_EVENT_LOOP", "asyncio")
    seen = eventloop.run(_inside_the_run(Made()))
    assert seen["loop"] == "asyncio"
