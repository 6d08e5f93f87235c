"""The durable delivery store and the subscription file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.webhook_store import NewDelivery, WebhookStore
from pipeline.webhook_config import ConfigError, check_urls, load_subscriptions
from pipeline.webhooks import address_policy
from tables.webhooks import DeliveryState, Status
from tests.webhooks_testkit import webhook_settings


def _new(event: str, sub: str = "s1") -> NewDelivery:
    return NewDelivery(
        sub, event, "t1", "work_order.created", b'{"id":"%s"}' % event.encode(), "wo.workorder:3:17"
    )


def test_enqueue_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    store = WebhookStore(path)
    assert store.enqueue([_new("e1"), _new("e2"), _new("e1", "s2")], now=100.0) == 3
    assert store.enqueue([_new("e1"), _new("e3")], now=101.0) == 1  # e1 re-read: ignored
    store.record(("s1", "e1"), DeliveryState(Status.DELIVERED, 1, 100.0, 100.0, 100.0, None, 100.5))
    store.close()

    store = WebhookStore(path)
    assert store.counts() == {"pending": 3, "delivered": 1, "dead": 0}
    delivered = store.get("s1", "e1")
    assert delivered is not None and delivered.state.status is Status.DELIVERED
    assert delivered.body is None  # not kept once delivered
    assert store.enqueue([_new("e1")], now=200.0) == 0  # still known: never sent again
    assert store.pending_count() == 3
    due = store.due("s1", 150.0, 10)
    assert [d.event_id for d in due] == ["e2", "e3"] and due[0].body == b'{"id":"e2"}'
    assert store.due("s1", 100.5, 10)[0].event_id == "e2"  # e3 not due before 101
    store.close()


def test_retry_dead_and_prune(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "d.sqlite3")
    store.enqueue([_new("e1"), _new("e2")], now=0.0)
    store.record(("s1", "e1"), DeliveryState(Status.PENDING, 1, 60.0, 0.0, 0.0, "HTTP 500"))
    assert store.next_due_for("s1", 0.0) == 60.0 and store.next_due_for("s2", 0.0) is None
    assert [d.event_id for d in store.due("s1", 10.0, 5)] == ["e2"]
    dead = DeliveryState(
        Status.DEAD, 9, 60.0, 0.0, 50.0, "HTTP 500", 60.0, "WEBHOOK_DELIVERY_EXPIRED"
    )
    store.record(("s1", "e1"), dead)
    [letter] = store.unpublished_dead()
    assert letter.body == b'{"id":"e1"}' and letter.state.dead_reason == "WEBHOOK_DELIVERY_EXPIRED"
    assert store.prune(1000.0) == 0  # not yet dead-lettered: kept
    store.mark_dead_lettered([("s1", "e1")])
    assert store.unpublished_dead() == []
    assert store.prune(1000.0) == 1
    assert store.counts() == {"pending": 1, "delivered": 0, "dead": 0}
    store.close()


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_load_json_with_env_secrets(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "subs.json",
        {
            "subscriptions": [
                {"id": "a", "tenant_id": "t1", "url": "https://a.example/h",
                 "events": ["work_order.*"], "secret_env": "WH_A"},
                {"id": "b", "tenant_id": "t1", "url": "http://10.0.0.1/h", "events": ["*"],
                 "secret": "${WH_B}", "previous_secret_env": "WH_B_OLD", "active": False},
                {"id": "c", "tenant_id": "t2", "url": "file:///etc/passwd", "events": ["*"],
                 "secret": "literal-secret-0123456789"},
            ]
        },
    )  # fmt: skip
    env = {"WH_A": "a" * 32, "WH_B": "b" * 32, "WH_B_OLD": "o" * 32}
    subs = load_subscriptions(path, env)
    assert [s.id for s in subs] == ["a", "b", "c"]
    assert subs[0].secret == b"a" * 32 and subs[0].patterns == ("work_order.*",)
    assert subs[1].secrets == (b"b" * 32, b"o" * 32) and not subs[1].active
    assert subs[2].secret == b"literal-secret-0123456789"
    policy = address_policy(webhook_settings(tmp_path, webhook_allowed_networks=[]))
    assert check_urls(subs, policy) == {"b": "private", "c": "scheme"}


def test_load_yaml(tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(
        "subscriptions:\n"
        "  - id: erp\n"
        "    tenant_id: tenant_acme\n"
        "    url: https://erp.example/hooks\n"
        "    events: [work_order.*, compliance.violation_detected]\n"
        "    secret_env: WH_ERP\n"
    )
    [sub] = load_subscriptions(path, {"WH_ERP": "x" * 20})
    assert sub.patterns == ("work_order.*", "compliance.violation_detected")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"events": ["nope.*"], "secret_env": "WH"}, "events"),
        ({"events": [], "secret_env": "WH"}, "events"),
        ({"events": ["*"]}, "exactly one of secret"),
        ({"events": ["*"], "secret_env": "WH", "secret": "hunter2-hunter2-hunter2"}, "exactly one"),
        ({"events": ["*"], "secret_env": "WH", "tenant_id": "bad tenant"}, "tenant_id"),
        ({"events": ["*"], "secret_env": "WH", "id": "a.b"}, "id"),
        ({"events": ["*"], "secret_env": "WH", "colour": "red"}, "colour"),
        ({"events": ["*"], "secret_env": "MISSING"}, "MISSING is not set"),
        ({"events": ["*"], "secret": "short-but-secret"[:10]}, "shorter than 16"),
        (
            {"events": ["*"], "secret_env": "WH", "previous_secret_env": "WH_OLD"},
            "previous secret shorter than 16",
        ),  # it signs every request while rotating
    ],
)
def test_invalid_files_name_the_problem_not_the_secret(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    base = {"id": "a", "tenant_id": "t1", "url": "https://a.example/h"}
    path = _write(tmp_path / "s.json", {"subscriptions": [{**base, **entry}]})
    with pytest.raises(ConfigError) as info:
        load_subscriptions(path, {"WH": "w" * 32, "WH_OLD": "short-but"})
    text = str(info.value)
    assert message in text
    assert "hunter2" not in text and "short-but" not in text and "w" * 32 not in text


def test_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    one = {"id": "a", "tenant_id": "t1", "url": "https://a.example/h", "events": ["*"],
           "secret_env": "WH"}  # fmt: skip
    with pytest.raises(ConfigError, match="duplicate"):
        load_subscriptions(_write(tmp_path / "d.json", [one, one]), {"WH": "w" * 32})
    with pytest.raises(ConfigError, match="cannot read"):
        load_subscriptions(tmp_path / "absent.json", {})


def test_claims_lease_rows_until_recorded_or_released(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "d.sqlite3")
    store.enqueue([_new("e1"), _new("e2"), _new("e3")], now=0.0)
    claimed = store.claim_due("s1", 1.0, 2, lease_until=100.0)
    assert [d.event_id for d in claimed] == ["e1", "e2"]
    assert [d.event_id for d in store.claim_due("s1", 1.0, 5, 100.0)] == ["e3"]  # not e1, e2
    assert store.claim_due("s1", 2.0, 5, 100.0) == []
    store.record(("s1", "e1"), DeliveryState(Status.PENDING, 1, 50.0, 1.0, 1.0, "HTTP 500"))
    assert [d.event_id for d in store.claim_due("s1", 60.0, 5, 200.0)] == ["e1"]  # lease cleared
    assert store.release_leases() == 3
    assert [d.event_id for d in store.due("s1", 60.0, 5)] == ["e2", "e3", "e1"]  # by due time
    store.close()


def _dead(store: WebhookStore, sub: str, event: str, reason: str, at: float) -> None:
    store.record((sub, event), DeliveryState(Status.DEAD, 7, at, 0.0, at, "HTTP 500", at, reason))


def test_requeue_makes_dead_deliveries_due_again_with_a_fresh_budget(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "d.sqlite3")
    store.enqueue([_new("e1"), _new("e2"), _new("e3"), _new("e4", "s2"), _new("e5")], now=0.0)
    _dead(store, "s1", "e1", "WEBHOOK_DELIVERY_EXPIRED", 100.0)
    _dead(store, "s1", "e2", "WEBHOOK_URL_FORBIDDEN", 90.0)
    _dead(store, "s2", "e4", "WEBHOOK_DELIVERY_EXPIRED", 80.0)
    store.record(("s1", "e3"), DeliveryState(Status.DELIVERED, 1, 0.0, 0.0, 0.0, None, 5.0))
    store.mark_dead_lettered([("s1", "e1"), ("s1", "e2"), ("s2", "e4")])
    assert store.get("s1", "e1").body == b'{"id":"e1"}'  # kept for a requeue

    dry = store.requeue(500.0, subscription_id="s1", dry_run=True)
    assert (dry.keys, dry.to_dict()["requeued"]) == ([("s1", "e2"), ("s1", "e1")], 0)
    assert store.counts() == {"pending": 1, "delivered": 1, "dead": 3}

    done = store.requeue(500.0, subscription_id="s1", reason="WEBHOOK_DELIVERY_EXPIRED")
    assert done.keys == [("s1", "e1")] and done.to_dict()["requeued"] == 1
    row = store.get("s1", "e1")
    assert row.state == DeliveryState(Status.PENDING, 0, 500.0)  # attempts and budget reset
    assert row.body == b'{"id":"e1"}'
    assert [d.event_id for d in store.due("s1", 500.0, 10)] == ["e5", "e1"]  # e5 was due at 0
    assert store.unpublished_dead() == []  # it is not a dead letter any more
    assert store.requeue_mark() == 1  # dry runs do not move it
    # dead again later: dead-lettered again; until then it is not requeued (the publisher's
    # mark could miss a row turned pending under it)
    _dead(store, "s1", "e1", "WEBHOOK_DELIVERY_EXPIRED", 900.0)
    assert [d.event_id for d in store.unpublished_dead()] == ["e1"]
    early = store.requeue(910.0, event_ids=["e1"])
    assert (early.keys, early.not_yet_dead_lettered) == ([], 1)
    assert store.requeue_mark() == 1

    by_id = store.requeue(950.0, event_ids=["e4", "e3"])
    assert by_id.keys == [("s2", "e4")]  # e3 was delivered: untouched
    assert store.requeue_mark() == 2
    assert store.get("s1", "e3").state.status is Status.DELIVERED
    store.close()


def test_requeue_counts_rows_whose_body_is_gone(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "d.sqlite3")
    store.enqueue([_new("e1")], now=0.0)
    _dead(store, "s1", "e1", "WEBHOOK_DELIVERY_EXPIRED", 100.0)
    store.mark_dead_lettered([("s1", "e1")])
    store._db.execute("UPDATE deliveries SET body = NULL")  # as an older version left them
    done = store.requeue(500.0)
    assert (done.keys, done.without_body) == ([], 1)
    assert store.get("s1", "e1").state.status is Status.DEAD
    store.close()


def test_the_dead_letter_scan_uses_its_index(tmp_path: Path) -> None:
    # Dead rows are kept for days: without an index on dlq_published the publisher's scan
    # (every few seconds) walks all of them on the store's one thread, delaying every tenant.
    store = WebhookStore(tmp_path / "d.sqlite3")
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT subscription_id FROM deliveries WHERE status = 'dead' "
        "AND dlq_published = 0 ORDER BY finished_at LIMIT 500"
    ).fetchall()
    assert any("deliveries_dead_unpublished" in str(row) for row in plan), plan
