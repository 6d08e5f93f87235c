"""Event ids: UUIDv7 generation, UUID checks, and deterministic derived-event ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import derived_event_id, is_uuid, is_uuid7, new_event_id, uuid7_unix_ms

CAUSE_TS = datetime(2026, 2, 13, 9, 30, 0, 123999, tzinfo=UTC)
CAUSE_ID = "019c5655-f63b-785b-ae06-f089a0f620b2"


def _ms(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _assert_v7_layout(value: str) -> None:
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical lower-case form
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert is_uuid7(value)


def test_new_event_ids_are_uuid7_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(2000)]
    for value in ids[:50]:
        _assert_v7_layout(value)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # monotonic within the process, even within one millisecond


def test_new_event_id_time_part_is_at() -> None:
    at = datetime(2026, 2, 13, 10, 30, 0, 987654, tzinfo=timezone(timedelta(hours=1)))
    value = new_event_id(at)
    _assert_v7_layout(value)
    assert uuid7_unix_ms(value) == _ms(at)
    assert new_event_id(at) != value


@pytest.mark.parametrize(
    "at", [datetime(2026, 2, 13, 9, 30), datetime(1969, 12, 31, 23, 59, tzinfo=UTC)]
)
def test_new_event_id_rejects_naive_or_pre_epoch(at: datetime) -> None:
    with pytest.raises(ValueError):
        new_event_id(at)


def test_derived_id_is_deterministic_uuid7_at_the_cause_time() -> None:
    first = derived_event_id(CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-1")
    second = derived_event_id(CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-1")
    assert first == second
    _assert_v7_layout(first)
    assert uuid7_unix_ms(first) == _ms(CAUSE_TS) == 1770975000123  # floored, not rounded


def test_derived_id_known_answer() -> None:
    # Pins the derivation: changing it would give replays new ids and defeat dedup.
    assert (
        derived_event_id(CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-1")
        == "019c5655-f63b-7471-8aea-6a0bbeab200a"
    )


@pytest.mark.parametrize(
    "variant",
    [
        (CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-2"),
        (CAUSE_TS, CAUSE_ID, "work_order.completed", "wo-1"),
        (CAUSE_TS, "019c5655-f63b-785b-ae06-f089a0f620b3", "work_order.blocked", "wo-1"),
        (CAUSE_TS + timedelta(milliseconds=1), CAUSE_ID, "work_order.blocked", "wo-1"),
        (CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-1 "),
    ],
)
def test_derived_id_differs_for_any_different_input(variant: tuple) -> None:
    assert derived_event_id(*variant) != derived_event_id(
        CAUSE_TS, CAUSE_ID, "work_order.blocked", "wo-1"
    )


def test_derived_id_framing_is_unambiguous() -> None:
    assert derived_event_id(CAUSE_TS, "a", "bc", "d") != derived_event_id(CAUSE_TS, "ab", "c", "d")
    assert derived_event_id(CAUSE_TS, "a", "b", "") != derived_event_id(CAUSE_TS, "a", "", "b")


def test_derived_id_depends_on_the_instant_not_the_offset() -> None:
    shifted = CAUSE_TS.astimezone(timezone(timedelta(hours=-5)))
    assert derived_event_id(shifted, CAUSE_ID, "t.x", "k") == derived_event_id(
        CAUSE_TS, CAUSE_ID, "t.x", "k"
    )


def test_derived_id_rejects_naive_timestamps() -> None:
    with pytest.raises(ValueError):
        derived_event_id(datetime(2026, 2, 13), CAUSE_ID, "t.x", "k")


@settings(max_examples=200, deadline=None)
@given(
    at=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
    cause=st.text(),
    kind=st.text(),
    key=st.text(),
)
def test_derived_id_layout_property(at: datetime, cause: str, kind: str, key: str) -> None:
    value = derived_event_id(at, cause, kind, key)
    _assert_v7_layout(value)
    assert uuid7_unix_ms(value) == _ms(at)


@pytest.mark.parametrize(
    ("value", "any_uuid", "v7"),
    [
        ("019c5655-f63b-785b-ae06-f089a0f620b2", True, True),
        ("019C5655-F63B-785B-AE06-F089A0F620B2", True, True),
        (str(uuid.uuid4()), True, False),
        ("00000000-0000-0000-0000-000000000000", True, False),
        ("019c5655-f63b-785b-ce06-f089a0f620b2", True, False),  # wrong variant
        ("019c5655f63b785bae06f089a0f620b2", False, False),
        ("{019c5655-f63b-785b-ae06-f089a0f620b2}", False, False),
        ("urn:uuid:019c5655-f63b-785b-ae06-f089a0f620b2", False, False),
        ("019c5655-f63b-785b-ae06-f089a0f620b2\n", False, False),
        ("019c5655-f63b-785b-ae06-f089a0f620bz", False, False),
        ("", False, False),
        (None, False, False),
        (uuid.UUID("019c5655-f63b-785b-ae06-f089a0f620b2"), False, False),
    ],
)
def test_uuid_checks(value: object, any_uuid: bool, v7: bool) -> None:
    assert is_uuid(value) is any_uuid
    assert is_uuid7(value) is v7
