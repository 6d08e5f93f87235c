"""Reducers never mutate the state they are given (the worker's state cache relies on it).

``pipeline.agents.cache`` hands the same decoded state object to the next item of a key, so an
apply or tick that changed its input in place would corrupt the next item's view. These tests
drive every stage over simulated traffic (with redeliveries and timer ticks) on live state
objects (no to_dict/from_dict round trip, like the cache) and check, around every call, that
the input is unchanged and that a new result state shares no mutable container with it.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.simulate.generator import SimConfig, generate
from tables.base import TableState
from tables.stages import STAGES, Stage
from tests.tables_testkit import MiniPipeline


def _mutable_parts(value: Any, out: dict[int, Any]) -> dict[int, Any]:
    """Every mutable container (and non-frozen model) reachable from ``value``, by id."""
    if isinstance(value, BaseModel):
        if not value.model_config.get("frozen"):
            out[id(value)] = value
        for item in value.__dict__.values():
            _mutable_parts(item, out)
    elif isinstance(value, dict):
        out[id(value)] = value
        for item in value.values():
            _mutable_parts(item, out)
    elif isinstance(value, list | set):
        out[id(value)] = value
        for item in value:
            _mutable_parts(item, out)
    elif isinstance(value, tuple):
        for item in value:
            _mutable_parts(item, out)
    return out


class Calls:
    def __init__(self) -> None:
        self.checked = 0
        self.copied = 0


def _check(calls: Calls, state: TableState | None, call: Any) -> Any:
    before = copy.deepcopy(state)
    dumped = None if state is None else state.to_dict()
    result = call()
    calls.checked += 1
    if state is None:
        return result
    assert state == before, "a reducer mutated the state it was given"
    assert state.to_dict() == dumped
    if result.state is not state:
        calls.copied += 1
        shared = _mutable_parts(state, {}).keys() & _mutable_parts(result.state, {}).keys()
        assert not shared, "a new state shares a mutable part with its input"
    return result


def _guarded(stage: Stage, calls: Calls) -> Stage:
    def apply(state, item, now, **kw):
        return _check(calls, state, lambda: stage.apply(state, item, now, **kw))

    def tick(state, now, **kw):
        assert stage.tick is not None
        return _check(calls, state, lambda: stage.tick(state, now, **kw))

    return dataclasses.replace(stage, apply=apply, tick=tick if stage.tick else None)


def _drive(seed: int, events: int) -> Calls:
    calls = Calls()
    pipeline = MiniPipeline(stages=[_guarded(s, calls) for s in STAGES], roundtrip=False)
    last = None
    for n, event in enumerate(generate(SimConfig(seed=seed, tenants=2, events=events))):
        now = event.timestamp
        pipeline.feed(event, now)
        if n % 5 == 0:  # a redelivery: must be a no-op that leaves the state untouched
            pipeline.feed(event, now + timedelta(minutes=1))
        if last is None or now - last > timedelta(hours=6):
            pipeline.tick(now)
            last = now
    pipeline.tick(now + timedelta(days=40))  # every timer due
    return calls


def test_no_reducer_mutates_its_input_over_a_simulated_stream() -> None:
    calls = _drive(seed=7, events=1500)
    assert calls.checked > 3000
    assert calls.copied > 1000


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_no_reducer_mutates_its_input_for_any_seed(seed: int) -> None:
    calls = _drive(seed=seed, events=300)  # every wrapped call asserts its input is unchanged
    assert calls.checked > 0
