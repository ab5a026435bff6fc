"""A schedule's rules and arithmetic, without a box: what decode refuses (bounds, ordering, the
links named), what expand makes of the links in each period (and refuses, naming the step's
field), where a schedule stands at a time, and the start a resend keeps
(docs/semantics.md, "Scheduled changes")."""
from __future__ import annotations

import json

import msgspec
import pytest

import schemas
from moa_bus.service.schedule import in_force, resolve_start
from schemas.schedule import expand, links_at, next_step, position

S = 1_000_000_000
MS = 1_000_000


def _doc(schedule: dict, emulation: dict | None = None) -> dict:
    return {"id": "m", "links": [
        {"id": "a", "tags": ["t"], "emulation": emulation or {"latency": "10ms", "jitter": "5ms"},
         "endpoints": [{"vni": 1, "remote": "10.0.0.1"}, {"vni": 2, "remote": "10.0.0.2"}]},
        {"id": "b", "tags": ["t"], "emulation": {"loss": 0.1},
         "endpoints": [{"vni": 3, "remote": "10.0.0.1"}, {"vni": 4, "remote": "10.0.0.2"}]}],
        "schedule": schedule}


def _decode(doc: dict) -> schemas.Materialize:
    return schemas.decode(schemas.Materialize, json.dumps(doc).encode())


@pytest.mark.parametrize("schedule, field", [
    ({"steps": []}, "schedule.steps"),
    ({"steps": [{"at": "1s", "link": "a", "set": {"loss": 0.1}}] * 65}, "schedule.steps"),
    ({"steps": [{"at": "1s", "set": {"loss": 0.1}}]}, "schedule.steps[0]"),
    ({"steps": [{"at": "1s", "link": "a", "tag": "t", "set": {"loss": 0.1}}]}, "schedule.steps[0]"),
    ({"steps": [{"at": "1s", "link": "a", "set": {}}]}, "schedule.steps[0].set"),
    ({"steps": [{"at": "1s", "link": "a", "set": {"loss": 1.5}}]}, "schedule.steps[0].set.loss"),
    ({"steps": [{"at": "1s", "link": "a", "set": {"latency": "1ms", "jitter": "2ms"}}]},
     "schedule.steps[0].set.jitter"),
    ({"steps": [{"at": "2s", "link": "a", "set": {"loss": 0.1}},
                {"at": "2s", "link": "a", "set": {"loss": 0.2}}]}, "schedule.steps[1].at"),
    ({"steps": [{"at": "2s", "link": "a", "set": {"loss": 0.1}},
                {"at": "2000500us", "link": "a", "set": {"loss": 0.2}}]}, "schedule.steps[1].at"),
    ({"steps": [{"at": "8d", "link": "a", "set": {"loss": 0.1}}]}, "schedule.steps[0].at"),
    ({"repeat": "2s", "steps": [{"at": "2s", "link": "a", "set": {"loss": 0.1}}]},
     "schedule.repeat"),
    ({"steps": [{"at": "1s", "link": "c", "set": {"loss": 0.1}}]}, "schedule.steps[0].link"),
    ({"steps": [{"at": "1s", "tag": "u", "set": {"loss": 0.1}}]}, "schedule.steps[0].tag"),
    ({"start": -1, "steps": [{"at": "1s", "link": "a", "set": {"loss": 0.1}}]},
     "schedule.start"),
    ({"steps": [{"at": "1s", "link": "a", "set": {"state": "sideways"}}]},
     "schedule.steps[0].set.state"),
])
def test_decode_refuses_with_the_field(schedule: dict, field: str) -> None:
    with pytest.raises(schemas.InvalidMessage) as e:
        _decode(_doc(schedule))
    assert e.value.field == field, e.value


def test_steps_add_up_and_a_later_period_starts_from_the_last_step() -> None:
    m = _decode(_doc({"repeat": "10s", "steps": [
        {"at": "1s", "tag": "t", "set": {"loss": 0.2}},
        {"at": "2s", "link": "b", "set": {"state": "down", "loss": 0.3}}]},
        emulation={"loss": 0.0}))
    e = expand(m, m.schedule)
    assert e.touched == [[0, 1], [1]]
    states = [[(link.emulation.loss, link.emulation.state) for link in s] for s in e.first]
    assert states == [[(0.2, "up"), (0.2, "up")], [(0.2, "up"), (0.3, "down")]]
    # the second period's first step meets b down: it stays down (only step 1 set it)
    assert [(link.emulation.loss, link.emulation.state) for link in e.later[0]] == [
        (0.2, "up"), (0.2, "down")]


def test_a_rule_broken_only_in_the_second_period_is_refused_there() -> None:
    m = _decode(_doc({"repeat": "10s", "steps": [
        {"at": "1s", "link": "b", "set": {"loss": 0.2}},
        {"at": "2s", "link": "b", "set": {"loss": 0, "burst": {"p": 0.1, "r": 0.5}}}]}))
    with pytest.raises(schemas.InvalidMessage) as e:
        expand(m, m.schedule)
    assert e.value.field == "schedule.steps[0].set.loss" and "second period" in e.value.message
    once = msgspec.structs.replace(m, schedule=msgspec.structs.replace(m.schedule, repeat=None))
    assert len(expand(once, once.schedule).first) == 2  # without repeat it never meets it


def test_a_step_over_a_directions_own_parameters_is_checked_with_them() -> None:
    doc = _doc({"steps": [{"at": "1s", "link": "a", "set": {"latency": "1ms", "jitter": 0}}]})
    doc["links"][0]["endpoints"][1]["emulation"] = {"jitter": "5ms"}
    with pytest.raises(schemas.InvalidMessage) as e:
        expand(_decode(doc), _decode(doc).schedule)
    assert e.value.field == "schedule.steps[0].set.jitter" and "VNI 2" in e.value.message


def test_position_and_next_step() -> None:
    m = _decode(_doc({"repeat": "5s", "steps": [
        {"at": "1s", "link": "a", "set": {"loss": 0.1}},
        {"at": "2s", "link": "a", "set": {"loss": 0.2}}]}))
    s, start = m.schedule, 100 * S
    assert position(s, start, start - S) == (0, -1)  # not started yet
    assert position(s, start, start + S - 1) == (0, -1)
    assert position(s, start, start + S) == (0, 0)
    assert position(s, start, start + 4 * S) == (0, 1)
    assert position(s, start, start + 5 * S) == (0, 1)  # period 1 before its first step
    assert position(s, start, start + 6 * S) == (1, 0)
    assert position(s, start, start + 27 * S) == (5, 1)
    assert next_step(s, start, 0, -1) == (0, 0, start + S)
    assert next_step(s, start, 0, 1) == (1, 0, start + 6 * S)
    once = msgspec.structs.replace(s, repeat=None)
    assert position(once, start, start + 60 * S) == (0, 1)
    assert next_step(once, start, 0, 1) is None
    e = expand(m, s)
    assert links_at(m, e, 0, -1) is m.links
    assert links_at(m, e, 3, 1)[0].emulation.loss == 0.2


def test_start_at_accept_is_kept_by_a_resend_and_in_force_follows_it() -> None:
    m = _decode(_doc({"steps": [{"at": "1s", "link": "b", "set": {"state": "down"}}]}))
    first = resolve_start(m, None, 7 * S)
    assert first.schedule.start == 7 * S
    assert resolve_start(m, first, 9 * S).schedule.start == 7 * S  # the same schedule again
    other = msgspec.structs.replace(m, schedule=msgspec.structs.replace(
        m.schedule, repeat=3 * S))
    assert resolve_start(other, first, 9 * S).schedule.start == 9 * S  # a new one restarts
    given = msgspec.structs.replace(m, schedule=msgspec.structs.replace(m.schedule, start=S))
    assert resolve_start(given, first, 9 * S).schedule.start == S
    assert in_force(first, 7 * S + 999 * MS).links[1].emulation.state == "up"
    assert in_force(first, 8 * S).links[1].emulation.state == "down"
