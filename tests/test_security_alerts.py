"""AlertEngine: deduplication per (rule, source), acknowledgement, listeners, counters."""
from __future__ import annotations

import json

import pytest

from security.alert import Alert
from security.alerts import AlertEngine


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Collecting:
    """A destination that records what it was given."""

    def __init__(self) -> None:
        self.got: list[Alert] = []

    def submit(self, alert: Alert) -> bool:
        self.got.append(alert)
        return True


def test_repeats_inside_window_fold_into_one_alert() -> None:
    clock = Clock()
    dest = Collecting()
    eng = AlertEngine(dedup_window=60, destinations=[dest], clock=clock)
    first = eng.raise_alert("port_scan", "high", "10.0.0.9", "10.0.0.1", "scan 10",
                            {"ports": 10})
    assert first is not None
    for ports in (20, 40, 15):
        clock.t += 10
        assert eng.raise_alert("port_scan", "high", "10.0.0.9", "10.0.0.1", f"scan {ports}",
                               {"ports": ports}) is None
    alerts = eng.alerts()
    assert len(alerts) == 1
    a = alerts[0]
    assert a.count == 4
    assert a.evidence["ports"] == 40          # counters never go backwards
    assert a.last_ts == 1030.0 and a.ts == 1000.0
    assert len(dest.got) == 1                  # destinations hear about new alerts only
    assert eng.counters() == {"port_scan": {"raised": 1, "suppressed": 3}}


def test_other_source_or_rule_is_a_new_alert_and_window_expiry_reopens() -> None:
    clock = Clock()
    eng = AlertEngine(dedup_window=60, clock=clock)
    eng.raise_alert("port_scan", "high", "10.0.0.9", "", "a")
    eng.raise_alert("port_scan", "high", "10.0.0.8", "", "b")
    eng.raise_alert("port_sweep", "medium", "10.0.0.9", "", "c")
    clock.t += 61
    eng.raise_alert("port_scan", "high", "10.0.0.9", "", "d")
    assert [a.message for a in eng.alerts()] == ["a", "b", "c", "d"]
    assert len({a.id for a in eng.alerts()}) == 4


def test_packet_timestamps_drive_the_window_not_the_wall_clock() -> None:
    eng = AlertEngine(dedup_window=300, clock=Clock(5.0))
    eng.raise_alert("r", "low", "s", "", "m", ts=100.0)
    assert eng.raise_alert("r", "low", "s", "", "m", ts=399.0) is None
    assert eng.raise_alert("r", "low", "s", "", "m", ts=401.0) is not None


def test_acknowledge_by_id_and_index_and_snapshot_is_a_copy() -> None:
    eng = AlertEngine(clock=Clock())
    a = eng.raise_alert("r1", "info", "s1", "", "m1")
    eng.raise_alert("r2", "info", "s2", "", "m2")
    assert a is not None
    assert eng.acknowledge(a.id)
    assert eng.acknowledge_index(-1)
    assert not eng.acknowledge(999)
    assert not eng.acknowledge("nope")
    snap = eng.alerts()
    assert all(x.acknowledged for x in snap)
    snap[0].message = "changed"
    assert eng.alerts()[0].message == "m1"
    assert eng.unacknowledged() == 0


def test_listeners_called_once_per_new_alert_and_failures_do_not_propagate() -> None:
    eng = AlertEngine(clock=Clock())
    seen: list[str] = []
    eng.add_listener(lambda al: seen.append(al.rule_id))

    def broken(_: Alert) -> None:
        raise RuntimeError("listener bug")

    eng.add_listener(broken)
    eng.raise_alert("r", "high", "s", "", "m")
    eng.raise_alert("r", "high", "s", "", "m")
    assert seen == ["r"]
    assert eng.listener_errors == 1


def test_severity_only_rises_and_unknown_severity_rejected() -> None:
    eng = AlertEngine(clock=Clock())
    eng.raise_alert("r", "low", "s", "", "m")
    eng.raise_alert("r", "critical", "s", "", "m")
    eng.raise_alert("r", "info", "s", "", "m")
    assert eng.alerts()[0].severity == "critical"
    with pytest.raises(ValueError):
        eng.raise_alert("r", "urgent", "s", "", "m")


def test_to_dict_is_json_ready() -> None:
    eng = AlertEngine(clock=Clock())
    eng.raise_alert("dns_tunnel", "high", "10.0.0.2", "10.0.0.53", "msg", {"n": 3})
    d = json.loads(json.dumps(eng.alerts()[0].to_dict()))
    assert d["rule_id"] == "dns_tunnel" and d["evidence"] == {"n": 3} and d["count"] == 1
    assert set(d) >= {"ts", "severity", "rule_id", "src", "dst", "message", "evidence", "count"}


def test_memory_is_bounded() -> None:
    eng = AlertEngine(clock=Clock(), max_alerts=50)
    for i in range(200):
        eng.raise_alert("r", "info", f"10.0.{i // 256}.{i % 256}", "", "m")
    alerts = eng.alerts()
    assert len(alerts) == 50
    assert alerts[-1].src == "10.0.0.199"
    assert eng.acknowledge(alerts[0].id) and not eng.acknowledge(1)


def test_changes_for_the_database_writer_and_update_listeners() -> None:
    clock = Clock()
    eng = AlertEngine(dedup_window=60, clock=clock)
    updates: list[tuple[int, int]] = []
    eng.add_listener(lambda al: updates.append((al.id, al.count)), on_update=True)
    a = eng.raise_alert("port_scan", "high", "s", "", "m", {"ports": 10})
    assert a is not None
    assert [(x.id, x.count) for x in eng.take_changes()] == [(a.id, 1)]
    assert eng.take_changes() == []
    eng.raise_alert("port_scan", "high", "s", "", "m", {"ports": 20})
    eng.raise_alert("port_scan", "high", "s", "", "m", {"ports": 30})
    changed = eng.take_changes()
    assert [(x.id, x.count, x.evidence["ports"]) for x in changed] == [(a.id, 3, 30)]
    eng.acknowledge(a.id)
    assert [x.acknowledged for x in eng.take_changes()] == [True]
    assert updates == [(a.id, 1), (a.id, 2), (a.id, 3)]
