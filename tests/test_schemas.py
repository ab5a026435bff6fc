"""schemas/: unit parsing, messages, strict decoding with field paths, validation, JSON Schema
files.

Pure Python, no kernel and no network.
"""
from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas import (
    Ack, AckError, Dematerialize, DirectionStatus, DropBatch, DropEvent, Emulation, EmulationPatch,
    Endpoint,
    GilbertElliott, InvalidMessage, Link, LinkStats, LinkStatsBatch, LinkStatus, LinkUpdate,
    Materialize, MaterializationStatus, StatusEmulation, StatusReply, StatusRequest, Trace, Update,
    decode, encode,
)
from schemas import generate, messages, units

MS = 1_000_000
S = 1_000_000_000

# ----------------------------------------------------------------------------- units

GOOD_DURATIONS = [
    (0, 0), (1, 1), (10 * MS, 10 * MS), ("10ms", 10 * MS), ("1.5ms", 1_500_000),
    ("250us", 250_000), ("250µs", 250_000), ("2s", 2 * S), ("100ns", 100), ("0s", 0),
    ("10 ms", 10 * MS), (".5s", S // 2), ("10.s", 10 * S), ("10s", 10 * S), ("3600s", 3600 * S),
    ("0.000000001s", 1),
]
BAD_DURATIONS = [
    (-1, "negative"), ("-1ms", "negative"), (True, "boolean"), (float("nan"), "NaN"),
    (1.5, "integer"), (10.0, "integer"), ("10", "not a number with a unit"),
    ("10xs", "unknown unit"), ("1.5ns", "whole number"), ("3601s", "maximum"),
    ("1e3ms", "unknown unit"), ("", "not a number with a unit"),
    ("ms", "not a number with a unit"), ("10MS", "unknown unit"), (None, "not NoneType"),
    ([1], "not list"), ("1" * 60 + "s", "too long"), ("10ms ", "not a number with a unit"),
    ("١٠ms", "not a number with a unit"),  # non-ASCII digits
]
GOOD_RATES = [
    (0, 0), (1000, 1000), ("100mbps", 100 * 10**6), ("100Mbps", 100 * 10**6), ("1gbps", 10**9),
    ("1.5gbps", 1_500_000_000), ("64kbps", 64_000), ("100bps", 100), ("400gbps", 400 * 10**9),
    ("34.5Gbps", 34_500_000_000), ("10000gbps", 10**13),
]
BAD_RATES = [
    (-1, "negative"), ("-5mbps", "negative"), ("100MBps", "unknown unit"), ("1.5bps", "whole"),
    ("10001gbps", "maximum"), ("100", "not a number with a unit"), (False, "boolean"),
    ("100mbit", "unknown unit"),
]
GOOD_SIZES = [
    (0, 0), (1500, 1500), ("256KiB", 262_144), ("1MiB", 1 << 20), ("64KB", 64_000),
    ("64kB", 64_000), ("1MB", 10**6), ("1500B", 1500), ("1.5KiB", 1536), ("1GiB", 1 << 30),
]
BAD_SIZES = [
    (-1, "negative"), ("1.1B", "whole"), ("1kib", "unknown unit"), ("2TiB", "unknown unit"),
    ((1 << 40) + 1, "maximum"), ("1b", "unknown unit"), (1.0, "integer"),
]


@pytest.mark.parametrize("parse, value, expected",
                         [(units.parse_duration, v, e) for v, e in GOOD_DURATIONS]
                         + [(units.parse_rate, v, e) for v, e in GOOD_RATES]
                         + [(units.parse_size, v, e) for v, e in GOOD_SIZES])
def test_unit_parses(parse, value, expected):
    result = parse(value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("parse, value, words",
                         [(units.parse_duration, v, w) for v, w in BAD_DURATIONS]
                         + [(units.parse_rate, v, w) for v, w in BAD_RATES]
                         + [(units.parse_size, v, w) for v, w in BAD_SIZES])
def test_unit_rejects_with_reason(parse, value, words):
    with pytest.raises(ValueError) as e:
        parse(value)
    assert words in str(e.value)


@pytest.mark.parametrize("fmt, value, text", [
    (units.format_duration, 10 * MS, "10ms"), (units.format_duration, 1_500_000, "1.5ms"),
    (units.format_duration, 0, "0ns"), (units.format_duration, 250_000, "250us"),
    (units.format_duration, 2 * S, "2s"), (units.format_duration, 1_234_567, "1.234567ms"),
    (units.format_rate, 0, "unlimited"), (units.format_rate, 100 * 10**6, "100mbps"),
    (units.format_rate, 1_500_000_000, "1.5gbps"), (units.format_rate, 999, "999bps"),
    (units.format_size, 262_144, "256KiB"), (units.format_size, 64_000, "64KB"),
    (units.format_size, 1536, "1.5KiB"), (units.format_size, 1500, "1.5KB"),
    (units.format_size, 215_358, "215.358KB"),
    (units.format_size, 215_359_001, "215359001B"),
    (units.format_size, 0, "0B"), (units.format_size, 100, "100B"),
])
def test_unit_formats(fmt, value, text):
    assert fmt(value) == text


@settings(max_examples=500)
@given(ns=st.integers(0, units.MAX_DURATION_NS), bps=st.integers(1, units.MAX_RATE_BPS),
       size=st.integers(0, units.MAX_SIZE_BYTES))
def test_format_parse_round_trip_is_exact(ns, bps, size):
    assert units.parse_duration(units.format_duration(ns)) == ns
    assert units.parse_rate(units.format_rate(bps)) == bps
    assert units.parse_size(units.format_size(size)) == size


# ----------------------------------------------------------------------------- docs/contract.md

MATERIALIZE_EXAMPLE = """{"id": "rlz42.exp.proj",
 "links": [
  {"id": "a-b", "tags": ["wan"],
   "endpoints": [{"vni": 100, "remote": "10.0.0.11"}, {"vni": 101, "remote": "10.0.0.12"}],
   "emulation": {"latency": "10ms", "jitter": "1ms", "loss": 0.01, "capacity": "100mbps",
                 "queue": "256KiB"}},
  {"id": "lan1",
   "endpoints": [{"vni": 200, "remote": "10.0.0.11"}, {"vni": 201, "remote": "10.0.0.12"},
                 {"vni": 202, "remote": "10.0.0.13"}],
   "emulation": {"latency": "2ms", "capacity": "1gbps"}}]}"""
ACK_OK_EXAMPLE = ('{"id": "rlz42.exp.proj", "op": "materialize", "ok": true, "generation": 3, '
                  '"elapsed_ms": 8.1, "error": null}')
ACK_ERROR_EXAMPLE = """{"id": "rlz42.exp.proj", "op": "materialize", "ok": false,
 "error": {"code": "invalid", "field": "links[0].endpoints[1].vni",
           "message": "0 is outside 1..16777215"}}"""


def test_interfaces_materialize_example_decodes_exactly():
    m = decode(Materialize, MATERIALIZE_EXAMPLE)
    assert m == Materialize(id="rlz42.exp.proj", links=[
        Link(id="a-b", tags=["wan"],
             endpoints=[Endpoint(vni=100, remote="10.0.0.11"),
                        Endpoint(vni=101, remote="10.0.0.12")],
             emulation=Emulation(latency=10 * MS, jitter=1 * MS, loss=0.01, capacity=100_000_000,
                                 queue=256 * 1024)),
        Link(id="lan1",
             endpoints=[Endpoint(vni=200, remote="10.0.0.11"),
                        Endpoint(vni=201, remote="10.0.0.12"),
                        Endpoint(vni=202, remote="10.0.0.13")],
             emulation=Emulation(latency=2 * MS, capacity=1_000_000_000)),
    ])
    assert [link.kind for link in m.links] == ["p2p", "lan"]
    # After decode the unit fields are plain ints, so any msgspec encoder handles them.
    assert type(m.links[0].emulation.latency) is int and type(m.links[0].emulation.queue) is int
    assert (msgspec.json.decode(msgspec.json.encode(m))["links"][0]["emulation"]["latency"]
            == 10 * MS)


def test_interfaces_ack_examples_decode_and_encode_exactly():
    ok = decode(Ack, ACK_OK_EXAMPLE)
    assert ok == Ack(id="rlz42.exp.proj", op="materialize", ok=True, generation=3, elapsed_ms=8.1)
    assert json.loads(encode(ok)) == json.loads(ACK_OK_EXAMPLE)
    assert encode(ok) == ACK_OK_EXAMPLE.replace(", ", ",").replace(": ", ":").encode()
    bad = decode(Ack, ACK_ERROR_EXAMPLE)
    assert bad.error == AckError(code="invalid", field="links[0].endpoints[1].vni",
                                 message="0 is outside 1..16777215")
    assert bad.ok is False and bad.generation is None


def test_interfaces_error_ack_is_what_decode_reports():
    """The error example of docs/contract.md is exactly the error decode produces for VNI 0."""
    text = MATERIALIZE_EXAMPLE.replace('"vni": 101', '"vni": 0')
    with pytest.raises(InvalidMessage) as e:
        decode(Materialize, text)
    expected = json.loads(ACK_ERROR_EXAMPLE)["error"]
    assert msgspec.to_builtins(e.value.to_ack_error()) == expected


def test_status_request_forms():
    assert decode(StatusRequest, "{}") == StatusRequest()
    assert decode(StatusRequest, b'{"id": "rlz42.exp.proj"}') == StatusRequest(id="rlz42.exp.proj")
    assert decode(Dematerialize, '{"id": "x"}') == Dematerialize(id="x")


# ----------------------------------------------------------------------------- round trips

def _link_stats() -> LinkStats:
    return LinkStats(materialization="m", link="a-b", vni=100, stage="egress", packets=10,
                     bytes=15000, drops={"loss": 1, "queue": 0, "horizon": 0})


ROUND_TRIP = [
    decode(Materialize, MATERIALIZE_EXAMPLE),
    Materialize(id="m", links=[]),
    Materialize(id="m", links=[Link(id="l", endpoints=[
        Endpoint(vni=1, remote="2001:db8::1", local="2001:db8::2", port=4790),
        Endpoint(vni=16777215, remote="::1")],
        emulation=Emulation(latency=S, jitter=S, capacity=10**12, queue=1500,
                            burst=GilbertElliott(p=0.01, r=0.5, loss_good=0.0, loss_bad=0.8),
                            reorder=True))]),
    Materialize(id="m", links=[Link(id="acc", endpoints=[
        Endpoint(vni=1, remote="10.0.0.1"),
        Endpoint(vni=2, remote="10.0.0.2", emulation=EmulationPatch(capacity=2 * 10**6,
                                                                  queue=None, loss=0.25))],
        emulation=Emulation(capacity=20 * 10**6, queue=64_000))]),
    Dematerialize(id="m"),
    Update(id="m", links=[LinkUpdate(link="acc", endpoint=2, inherit=["queue"],
                                     emulation=EmulationPatch(loss=0.5))]),
    Update(id="m", links=[LinkUpdate(link="a-b", emulation=EmulationPatch(latency=50 * MS)),
                          LinkUpdate(tag="wan", emulation=EmulationPatch(queue=None, burst=None,
                                                                         capacity=10**6))]),
    Update(id="m", schedule=None),
    Update(id="m", schedule=schemas.Schedule(
        start=10**18, repeat=5_000 * MS, steps=[
            schemas.ScheduleStep(at=2_000 * MS, link="a-b", set=EmulationPatch(state="down")),
            schemas.ScheduleStep(at=4_000 * MS, tag="wan", set=EmulationPatch(state="up"))])),
    schemas.ScheduleReport(host="h", materialization="m", generation=3, step=1, cycle=0,
                           links=["a-b"], due_ns=10**18, applied_ns=10**18 + 20_000,
                           late_ns=20_000),
    StatusRequest(), StatusRequest(id="m"),
    Ack(id="m", op="materialize", ok=True, generation=1, elapsed_ms=0.5),
    Ack(id=None, op="update", ok=False, error=AckError(code="malformed", message="x")),
    DropBatch(host="h", events=[DropEvent(time_ns=1, vni=100, reason="queue", stage="ingress",
                                          len=1514, segs=1, link="a-b", materialization="m")],
              counts={"queue": 7}, suppressed=6, lost=0),
    LinkStatsBatch(host="h", time_ns=123, links=[_link_stats()]),
    StatusReply(host="h", fq_memory_bytes=1 << 20, materializations=[MaterializationStatus(
        id="m", generation=2, links=[LinkStatus(id="a-b", kind="p2p", vnis=[100, 101],
                                                emulation=StatusEmulation(latency=MS),
                                                counters=[_link_stats()]),
                                     LinkStatus(id="acc", kind="p2p", vnis=[1, 2],
                                                emulation=StatusEmulation(), counters=[],
                                                directions=[DirectionStatus(
                                                    vni=2, emulation=schemas.status_emulation(
                                                        Emulation(loss=0.5, trace=Trace(
                                                            opportunities_ms=(1, 2)))))])])]),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert decode(type(message), encode(message)) == message


def test_every_message_type_has_a_round_trip_case():
    kinds = {type(m) for m in ROUND_TRIP}
    assert set(generate.MESSAGES.values()) <= kinds


def test_patch_apply_changes_only_what_it_sets():
    base = Emulation(latency=10 * MS, jitter=MS, capacity=10**8, queue=262_144)
    patched = EmulationPatch(latency=50 * MS, queue=None).apply(base)
    assert patched == Emulation(latency=50 * MS, jitter=MS, capacity=10**8, queue=None)
    assert base.latency == 10 * MS  # apply does not touch its input
    u = decode(Update, '{"id": "m", "links": [{"link": "a-b", "emulation": {"latency": "50ms"}}]}')
    assert u.links[0].emulation.changes() == {"latency": 50 * MS}
    assert u.links[0].emulation.apply(base).latency == 50 * MS


def test_patch_apply_checks_rules_across_fields():
    base = Emulation(latency=10 * MS, jitter=5 * MS, capacity=10**8, queue=262_144)
    with pytest.raises(InvalidMessage) as e:
        EmulationPatch(latency=MS).apply(base, "links[3].emulation")
    assert e.value.field == "links[3].emulation.jitter"
    with pytest.raises(InvalidMessage) as e:
        EmulationPatch(capacity=0).apply(base)
    assert e.value.field == "emulation.queue"


# ----------------------------------------------------------------------------- strictness

@pytest.mark.parametrize("kind, text, field", [
    (Materialize, '{"id": "m", "links": [], "extra": 1}', "extra"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "colour": 1}]}',
     "links[0].colour"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [{"vni": 1,'
                  ' "remote": "10.0.0.1", "vlan": 2}]}]}',
     "links[0].endpoints[0].vlan"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"delay": "1ms"}}]}',
     "links[0].emulation.delay"),
    (Update, '{"id": "m", "links": [{"link": "l", "emulation": {"latency": 1, "x": 1}}]}',
     "links[0].emulation.x"),
    (StatusRequest, '{"all": true}', "all"),
    (Dematerialize, '{"id": "m", "force": true}', "force"),
])
def test_unknown_field_is_named(kind, text, field):
    with pytest.raises(InvalidMessage) as e:
        decode(kind, text)
    assert (e.value.field, e.value.code) == (field, "invalid")
    assert "unknown field" in e.value.message


@pytest.mark.parametrize("kind, text, field, words", [
    (Materialize, '{"links": []}', "id", "missing required field"),
    (Materialize, '{"id": "m", "links": [{"id": "l"}]}', "links[0].endpoints",
     "missing required field"),
    (Materialize, '{"id": "m", "links": {}}', "links", "Expected array, got object"),
    (Materialize, '{"id": 5, "links": []}', "id", "Expected str, got int"),
    (Materialize, '[]', "", "Expected object, got array"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [{"vni": "1",'
                  ' "remote": "10.0.0.1"}]}]}',
     "links[0].endpoints[0].vni", "Expected int, got str"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"latency": "5 parsecs"}}]}',
     "links[0].emulation.latency", "unknown unit"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"capacity": -1}}]}',
     "links[0].emulation.capacity", "negative"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"queue": [1]}}]}',
     "links[0].emulation.queue", "not list"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"loss": "1%"}}]}',
     "links[0].emulation.loss", "Expected float, got str"),
    (Materialize, '{"id": "m", "links": [{"id": "l", "endpoints": [], "emulation":'
                  ' {"loss": 1e400}}]}',
     "links[0].emulation.loss", "out of range"),
    (Ack, '{"id": null, "op": "x", "ok": "yes"}', "ok", "Expected bool, got str"),
    (DropBatch, '{"host": "h", "events": [{"time_ns": 1, "vni": 1, "reason": "cosmic",'
                ' "stage": "egress", "len": 1, "segs": 1}], "counts": {}, "suppressed": 0,'
                ' "lost": 0}',
     "events[0].reason", "Invalid enum value 'cosmic'"),
])
def test_type_errors_name_the_field(kind, text, field, words):
    with pytest.raises(InvalidMessage) as e:
        decode(kind, text)
    assert (e.value.field, e.value.code) == (field, "invalid")
    assert words in e.value.message


@pytest.mark.parametrize("data", [b"", b"{", b"[", b"nope", b'{"id": "m",}', b"\xff\xfe", "\ud800",
                                  b'{"id": "m"} x', b"[" * 100_000 + b"]" * 100_000])
def test_not_json_is_malformed(data):
    with pytest.raises(InvalidMessage) as e:
        decode(Materialize, data)
    assert (e.value.code, e.value.field) == ("malformed", "")
    assert e.value.to_ack_error() == AckError(code="malformed", field=None, message=e.value.message)


# ----------------------------------------------------------------------------- validation rules

def _materialize(**emulation) -> dict:
    return {"id": "m", "links": [{"id": "l", "emulation": emulation, "endpoints": [
        {"vni": 10, "remote": "10.0.0.1"}, {"vni": 11, "remote": "10.0.0.2"}]}]}


def _with(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


BASE = _materialize()
EP0 = ("links", 0, "endpoints", 0)
TWO_LINKS = {"id": "m", "links": [
    {"id": "a", "endpoints": [{"vni": 1, "remote": "10.0.0.1"}, {"vni": 2, "remote": "10.0.0.2"}]},
    {"id": "b", "endpoints": [{"vni": 3, "remote": "10.0.0.1"}, {"vni": 4, "remote": "10.0.0.2"}]}]}

RULES = [
    # (name, document, field, words)
    ("vni 0", _with(BASE, EP0 + ("vni",), 0), "links[0].endpoints[0].vni",
     "0 is outside 1..16777215"),
    ("vni too big", _with(BASE, EP0 + ("vni",), 1 << 24), "links[0].endpoints[0].vni", "outside"),
    ("vni negative", _with(BASE, EP0 + ("vni",), -5), "links[0].endpoints[0].vni", "outside"),
    ("vni duplicate in link", _with(BASE, ("links", 0, "endpoints", 1, "vni"), 10),
     "links[0].endpoints[1].vni", "VNI 10 is used twice (also links[0].endpoints[0].vni)"),
    ("vni duplicate across links", _with(TWO_LINKS, ("links", 1, "endpoints", 1, "vni"), 1),
     "links[1].endpoints[1].vni", "also links[0].endpoints[0].vni"),
    ("link id duplicate", _with(TWO_LINKS, ("links", 1, "id"), "a"), "links[1].id", "used twice"),
    ("one endpoint", _with(BASE, ("links", 0, "endpoints"), [{"vni": 1, "remote": "10.0.0.1"}]),
     "links[0].endpoints", "at least 2 endpoints, got 1"),
    ("no endpoint", _with(BASE, ("links", 0, "endpoints"), []), "links[0].endpoints", "got 0"),
    ("empty id", _with(BASE, ("id",), ""), "id", "must be 1..128 characters"),
    ("long id", _with(BASE, ("id",), "x" * 129), "id", "1..128"),
    ("id charset", _with(BASE, ("id",), "a b"), "id", "letters, digits"),
    ("id slash", _with(BASE, ("links", 0, "id"), "a/b"), "links[0].id", "link id"),
    ("tag charset", _with(BASE, ("links", 0, "tags"), ["ok", "not ok"]), "links[0].tags[1]", "tag"),
    ("remote not ip", _with(BASE, EP0 + ("remote",), "node1"), "links[0].endpoints[0].remote",
     "not an IPv4 or IPv6 address"),
    ("remote unspecified", _with(BASE, EP0 + ("remote",), "0.0.0.0"),
     "links[0].endpoints[0].remote", "unicast"),
    ("remote multicast", _with(BASE, EP0 + ("remote",), "239.1.1.1"),
     "links[0].endpoints[0].remote", "unicast"),
    ("local family", _with(BASE, EP0 + ("local",), "2001:db8::1"), "links[0].endpoints[0].local",
     "different families"),
    ("local not ip", _with(BASE, EP0 + ("local",), "x"), "links[0].endpoints[0].local",
     "not an IPv4"),
    ("port 0", _with(BASE, EP0 + ("port",), 0), "links[0].endpoints[0].port", "outside 1..65535"),
    ("port big", _with(BASE, EP0 + ("port",), 65536), "links[0].endpoints[0].port", "outside"),
    ("negative latency", _materialize(latency=-1), "links[0].emulation.latency", "negative"),
    ("absurd latency", _materialize(latency="2h"), "links[0].emulation.latency", "unknown unit"),
    ("latency over bound", _materialize(latency=3601 * S), "links[0].emulation.latency", "maximum"),
    ("jitter > latency", _materialize(latency="1ms", jitter="2ms"), "links[0].emulation.jitter",
     "jitter 2ms is larger than latency 1ms"),
    ("loss > 1", _materialize(loss=1.5), "links[0].emulation.loss", "outside [0, 1]"),
    ("loss < 0", _materialize(loss=-0.1), "links[0].emulation.loss", "outside [0, 1]"),
    ("burst p", _materialize(burst={"p": 2, "r": 0.5}), "links[0].emulation.burst.p", "outside"),
    ("burst loss_bad", _materialize(burst={"p": 0.1, "r": 0.5, "loss_bad": -1}),
     "links[0].emulation.burst.loss_bad", "outside"),
    ("burst and loss", _materialize(loss=0.1, burst={"p": 0.1, "r": 0.5}),
     "links[0].emulation.loss", "loss must be 0 when burst"),
    ("loss_correlation 1", _materialize(loss=0.1, loss_correlation=1.0),
     "links[0].emulation.loss_correlation", "below 1"),
    ("loss_correlation < 0", _materialize(loss=0.1, loss_correlation=-0.5),
     "links[0].emulation.loss_correlation", "outside [0, 1]"),
    ("burst and loss_correlation", _materialize(loss_correlation=0.5, burst={"p": 0.1, "r": 0.5}),
     "links[0].emulation.loss_correlation", "must be 0 when burst"),
    ("state", _materialize(state="sideways"), "links[0].emulation.state", "up"),
    ("custom without table", _materialize(latency="1ms", jitter="1ms", distribution="custom"),
     "links[0].emulation.distribution_table", "needs its distribution_table"),
    ("table without custom", _materialize(distribution="normal", distribution_table=[1, 2]),
     "links[0].emulation.distribution_table", "only for distribution custom"),
    ("table of one value", _materialize(distribution="custom", distribution_table=[1]),
     "links[0].emulation.distribution_table", "length >= 2"),
    ("table too long", _materialize(distribution="custom", distribution_table=[0] * 4097),
     "links[0].emulation.distribution_table", "length <= 4096"),
    ("table value", _materialize(distribution="custom", distribution_table=[0, -32769]),
     "links[0].emulation.distribution_table[1]", ">= -32768"),
    ("corrupt > 1", _materialize(corrupt=1.5), "links[0].emulation.corrupt", "outside [0, 1]"),
    ("corrupt < 0", _materialize(corrupt=-0.1), "links[0].emulation.corrupt", "outside [0, 1]"),
    ("duplicate > 1", _materialize(duplicate=1.5), "links[0].emulation.duplicate",
     "outside [0, 1]"),
    ("duplicate correlation 1", _materialize(duplicate=0.1, duplicate_correlation=1.0),
     "links[0].emulation.duplicate_correlation", "must be below 1"),
    ("duplicate correlation alone", _materialize(duplicate_correlation=0.5),
     "links[0].emulation.duplicate_correlation", "needs duplicate"),
    ("reorder_early without latency", _materialize(reorder_early={"probability": 0.1}),
     "links[0].emulation.reorder_early", "needs a latency"),
    ("reorder_early gap 0", _materialize(latency="1ms", reorder_early={"probability": 0.1,
                                                                       "gap": 0}),
     "links[0].emulation.reorder_early.gap", "outside 1..2147483648"),
    ("reorder_early correlation 1", _materialize(latency="1ms", reorder_early={
        "probability": 0.1, "correlation": 1.0}),
     "links[0].emulation.reorder_early.correlation", "must be below 1"),
    ("overhead < -60", _materialize(overhead=-61), "links[0].emulation.overhead",
     "outside -60..4096"),
    ("overhead big", _materialize(overhead=4097), "links[0].emulation.overhead", "outside"),
    ("overhead not int", _materialize(overhead="24B"), "links[0].emulation.overhead", "Expected"),
    ("cell_size big", _materialize(cell_size=4097), "links[0].emulation.cell_size",
     "outside 0..4096"),
    ("cell_size < 0", _materialize(cell_size=-1), "links[0].emulation.cell_size", "outside"),
    ("cell_overhead without cells", _materialize(cell_overhead=5),
     "links[0].emulation.cell_overhead", "needs a cell_size"),
    ("empty cell", _materialize(cell_size=48, cell_overhead=-48),
     "links[0].emulation.cell_overhead", "costing 0 bytes"),
    ("cell_overhead big", _materialize(cell_size=48, cell_overhead=4097),
     "links[0].emulation.cell_overhead", "outside"),
    ("aqm kind", _materialize(capacity="10mbps", aqm={"kind": "red"}),
     "links[0].emulation.aqm.kind", "codel"),
    ("aqm without capacity", _materialize(aqm={"kind": "codel"}), "links[0].emulation.aqm.kind",
     "needs a capacity"),
    ("aqm target 0", _materialize(capacity="10mbps", aqm={"kind": "codel", "target": 0}),
     "links[0].emulation.aqm.target", "outside 1us..3s"),
    ("aqm interval 4s", _materialize(capacity="10mbps", aqm={"kind": "codel", "interval": "4s"}),
     "links[0].emulation.aqm.interval", "outside 1us..3s"),
    ("ecn with taildrop", _materialize(capacity="10mbps", aqm={"ecn": True}),
     "links[0].emulation.aqm.ecn", "needs an AQM"),
    ("target with taildrop", _materialize(capacity="10mbps", aqm={"target": "5ms"}),
     "links[0].emulation.aqm.target", "needs an AQM"),
    ("aqm unknown field", _materialize(capacity="10mbps", aqm={"kind": "codel", "tupdate": 1}),
     "links[0].emulation.aqm.tupdate", "unknown field"),
    ("distribution", _materialize(latency="10ms", jitter="1ms", distribution="gamma"),
     "links[0].emulation.distribution", "one of: uniform, normal, pareto, paretonormal"),
    ("delay_correlation 1", _materialize(latency="10ms", jitter="1ms", delay_correlation=1),
     "links[0].emulation.delay_correlation", "below 1"),
    ("capacity tiny", _materialize(capacity="999bps"), "links[0].emulation.capacity",
     "minimum 1kbps"),
    ("queue without capacity", _materialize(queue="64KB"), "links[0].emulation.queue",
     "needs a capacity"),
    ("queue tiny", _materialize(capacity="1mbps", queue=100), "links[0].emulation.queue",
     "below the minimum 1500"),
]


EP1_EMU = ("links", 0, "endpoints", 1, "emulation")


def _direction(link_emulation: dict, own: object) -> dict:
    """BASE with the link's emulation and endpoint 1's own (the direction towards VNI 11)."""
    return _with(_with(BASE, ("links", 0, "emulation"), link_emulation), EP1_EMU, own)


# One direction's own parameters: each field with the bounds of a link's, named under the
# endpoint; a rule broken only by the two together says so (docs/contract.md, "Each direction").
DIRECTION_RULES = [
    ("own empty", _direction({}, {}), "links[0].endpoints[1].emulation", "sets no parameter"),
    ("own not an object", _direction({}, 5), "links[0].endpoints[1].emulation", "Expected"),
    ("own unknown field", _direction({}, {"delay": 1}), "links[0].endpoints[1].emulation.delay",
     "unknown field"),
    ("own loss > 1", _direction({}, {"loss": 1.5}), "links[0].endpoints[1].emulation.loss",
     "outside [0, 1]"),
    ("own loss < 0", _direction({}, {"loss": -0.5}), "links[0].endpoints[1].emulation.loss",
     "outside [0, 1]"),
    ("own latency negative", _direction({}, {"latency": -1}),
     "links[0].endpoints[1].emulation.latency", "negative"),
    ("own latency over bound", _direction({}, {"latency": 3601 * S}),
     "links[0].endpoints[1].emulation.latency", "maximum"),
    ("own capacity tiny", _direction({}, {"capacity": "999bps"}),
     "links[0].endpoints[1].emulation.capacity", "minimum 1kbps"),
    ("own capacity over bound", _direction({}, {"capacity": 10**13 + 1}),
     "links[0].endpoints[1].emulation.capacity", "maximum"),
    ("own queue tiny", _direction({"capacity": "1mbps"}, {"queue": 100}),
     "links[0].endpoints[1].emulation.queue", "below the minimum 1500"),
    ("own burst p", _direction({}, {"burst": {"p": 2, "r": 0.5}}),
     "links[0].endpoints[1].emulation.burst.p", "outside"),
    ("own state", _direction({}, {"state": "off"}), "links[0].endpoints[1].emulation.state",
     "one of: up, down"),
    ("own distribution", _direction({}, {"distribution": "gamma"}),
     "links[0].endpoints[1].emulation.distribution", "one of: uniform"),
    ("own loss_correlation 1", _direction({}, {"loss": 0.1, "loss_correlation": 1}),
     "links[0].endpoints[1].emulation.loss_correlation", "below 1"),
    ("own delay_correlation 1", _direction({}, {"delay_correlation": 1}),
     "links[0].endpoints[1].emulation.delay_correlation", "below 1"),
    # rules across fields, broken by the endpoint alone
    ("own jitter > own latency", _direction({}, {"latency": "1ms", "jitter": "2ms"}),
     "links[0].endpoints[1].emulation.jitter", "jitter 2ms is larger than latency 1ms"),
    # ... and only by the two together: the message says it is the combination, and which
    ("own jitter > link latency", _direction({"latency": "1ms"}, {"jitter": "2ms"}),
     "links[0].endpoints[1].emulation.jitter",
     "larger than latency 1ms (the delay is latency ± jitter), in the direction towards "
     "endpoint VNI 11: its own parameters over the link's emulation"),
    ("own latency < link jitter", _direction({"latency": "5ms", "jitter": "4ms"},
                                             {"latency": "1ms"}),
     "links[0].endpoints[1].emulation.jitter", "in the direction towards endpoint VNI 11"),
    ("own queue, link unlimited", _direction({}, {"queue": "64KB"}),
     "links[0].endpoints[1].emulation.queue", "needs a capacity"),
    ("own unlimited, link queue", _direction({"capacity": "1mbps", "queue": "64KB"},
                                             {"capacity": 0}),
     "links[0].endpoints[1].emulation.queue", "in the direction towards endpoint VNI 11"),
    ("own burst, link loss", _direction({"loss": 0.1}, {"burst": {"p": 0.1, "r": 0.5}}),
     "links[0].endpoints[1].emulation.loss", "loss must be 0 when burst is given"),
    ("own loss, link burst", _direction({"burst": {"p": 0.1, "r": 0.5}}, {"loss": 0.1}),
     "links[0].endpoints[1].emulation.loss", "in the direction towards endpoint VNI 11"),
    ("own cell_overhead, link cells", _direction({"cell_size": 48, "cell_overhead": -40},
                                                 {"cell_size": 20}),
     "links[0].endpoints[1].emulation.cell_overhead", "in the direction towards endpoint VNI 11"),
    ("own loss_correlation, link burst", _direction({"burst": {"p": 0.1, "r": 0.5}},
                                                    {"loss_correlation": 0.5}),
     "links[0].endpoints[1].emulation.loss_correlation", "must be 0 when burst"),
]


@pytest.mark.parametrize("doc, field, words", [r[1:] for r in DIRECTION_RULES],
                         ids=[r[0] for r in DIRECTION_RULES])
def test_a_direction_s_own_parameters_are_bounded_and_named(doc, field, words):
    with pytest.raises(InvalidMessage) as e:
        decode(Materialize, json.dumps(doc))
    assert (e.value.field, e.value.code) == (field, "invalid")
    assert words in e.value.message


def test_a_direction_is_the_link_s_emulation_with_its_own_fields_over_it():
    doc = _direction({"latency": "10ms", "capacity": "20mbps", "queue": "256KiB", "loss": 0.01},
                     {"capacity": "2mbps", "queue": None, "loss": 0.5})
    m = decode(Materialize, json.dumps(doc))
    link = m.links[0]
    down = schemas.direction(link.emulation, link.endpoints[0].emulation)
    up = schemas.direction(link.emulation, link.endpoints[1].emulation)
    assert down is link.emulation  # no parameters of its own: the link's, the very object
    assert up == Emulation(latency=10 * MS, capacity=2_000_000, queue=None, loss=0.5)
    # Left out, the field is not written back: older documents encode as they did.
    assert b'"emulation":{' not in schemas.encode(link.endpoints[0])
    assert decode(Materialize, schemas.encode(m)) == m
    # A burst the link has can be removed for one direction (null is a value, as in a patch).
    doc = _direction({"burst": {"p": 0.1, "r": 0.5}}, {"burst": None, "loss": 0.2})
    link = decode(Materialize, json.dumps(doc)).links[0]
    assert schemas.direction(link.emulation, link.endpoints[1].emulation) == Emulation(loss=0.2)


@pytest.mark.parametrize("doc, field, words", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_validation_rule(doc, field, words):
    with pytest.raises(InvalidMessage) as e:
        decode(Materialize, json.dumps(doc))
    assert (e.value.field, e.value.code) == (field, "invalid")
    assert words in e.value.message


def test_validation_accepts_the_edges():
    doc = _materialize(latency="3600s", jitter="3600s", loss=1, capacity="1kbps", queue="1500B",
                       reorder=True)
    doc = _with(_with(doc, EP0 + ("vni",), 16777215), ("links", 0, "endpoints", 1, "vni"), 1)
    m = decode(Materialize, json.dumps(doc))
    e = m.links[0].emulation
    assert ((e.latency, e.jitter, e.loss, e.capacity, e.queue)
            == (3600 * S, 3600 * S, 1.0, 1000, 1500))
    assert type(e.loss) is float


def test_validation_normalizes_addresses():
    doc = _with(_with(BASE, EP0 + ("remote",), "2001:DB8:0:0::1"), EP0 + ("local",),
                "2001:db8::0002")
    ep = decode(Materialize, json.dumps(doc)).links[0].endpoints[0]
    assert (ep.remote, ep.local) == ("2001:db8::1", "2001:db8::2")


@pytest.mark.parametrize("links, field, words", [
    ([], "links", "at least one"),
    ([{"emulation": {"latency": 1}}], "links[0]", "exactly one of link and tag"),
    ([{"link": "a", "tag": "b", "emulation": {"latency": 1}}], "links[0]", "exactly one"),
    ([{"link": "a", "emulation": {}}], "links[0].emulation", "sets no parameter"),
    ([{"tag": "bad tag", "emulation": {"latency": 1}}], "links[0].tag", "tag"),
    ([{"link": "a", "emulation": {"loss": 2}}], "links[0].emulation.loss", "outside"),
    ([{"link": "a", "emulation": {"latency": 1}}, {"link": "b", "emulation": {"capacity": "1bps"}}],
     "links[1].emulation.capacity", "minimum"),
    ([{"link": "a", "emulation": {"latency": "1ms", "jitter": "2ms"}}], "links[0].emulation.jitter",
     "larger than latency"),
    ([{"link": "a", "emulation": {"capacity": 0, "queue": "64KiB"}}], "links[0].emulation.queue",
     "needs a capacity"),
    ([{"link": "a", "emulation": {"loss": 0.1, "burst": {"p": 0.1, "r": 0.1}}}],
     "links[0].emulation.loss", "loss must be 0"),
    ([{"link": "a", "emulation": {"state": "off"}}], "links[0].emulation.state", "down"),
    ([{"link": "a", "emulation": {"aqm": {"kind": "codel", "target": "10s"}}}],
     "links[0].emulation.aqm.target", "outside"),
    ([{"link": "a", "emulation": {"capacity": 0, "aqm": {"kind": "codel"}}}],
     "links[0].emulation.aqm.kind", "needs a capacity"),
    ([{"link": "a", "emulation": {"loss_correlation": 1}}], "links[0].emulation.loss_correlation",
     "below 1"),
    ([{"link": "a", "emulation": {"cell_size": 0, "cell_overhead": 5}}],
     "links[0].emulation.cell_overhead", "needs a cell_size"),
    ([{"link": "a", "emulation": {"overhead": -100}}], "links[0].emulation.overhead", "outside"),
    # one direction (docs/contract.md, "Each direction")
    ([{"tag": "wan", "endpoint": 5, "emulation": {"loss": 0.1}}], "links[0].endpoint",
     "give it with link, not with tag"),
    ([{"link": "a", "endpoint": 0, "emulation": {"loss": 0.1}}], "links[0].endpoint",
     "outside 1..16777215"),
    ([{"link": "a", "endpoint": 1 << 24, "emulation": {"loss": 0.1}}], "links[0].endpoint",
     "outside"),
    ([{"link": "a", "endpoint": "x", "emulation": {"loss": 0.1}}], "links[0].endpoint",
     "Expected"),
    ([{"link": "a", "inherit": ["loss"]}], "links[0].inherit", "give it with endpoint"),
    ([{"link": "a", "endpoint": 5, "inherit": ["delay"]}], "links[0].inherit[0]", "Invalid enum"),
    ([{"link": "a", "endpoint": 5, "inherit": ["loss", "loss"]}], "links[0].inherit",
     "names a field twice"),
    ([{"link": "a", "endpoint": 5, "inherit": ["loss"], "emulation": {"loss": 0.1}}],
     "links[0].inherit", "loss is both inherited and set"),
    ([{"link": "a", "endpoint": 5}], "links[0].emulation", "sets no parameter"),
    ([{"link": "a", "endpoint": 5, "emulation": {"loss": 7}}], "links[0].emulation.loss",
     "outside"),
])
def test_update_rules(links, field, words):
    with pytest.raises(InvalidMessage) as e:
        decode(Update, json.dumps({"id": "m", "links": links}))
    assert e.value.field == field and words in e.value.message


def test_vni_fields_name_each_vni():
    m = decode(Materialize, MATERIALIZE_EXAMPLE)
    assert schemas.vni_fields(m) == {
        100: "links[0].endpoints[0].vni", 101: "links[0].endpoints[1].vni",
        200: "links[1].endpoints[0].vni", 201: "links[1].endpoints[1].vni",
        202: "links[1].endpoints[2].vni"}


def test_validate_checks_structs_built_in_python():
    m = Materialize(id="m", links=[Link(id="l", endpoints=[Endpoint(vni=0, remote="10.0.0.1"),
                                                           Endpoint(vni=2, remote="10.0.0.2")])])
    with pytest.raises(InvalidMessage) as e:
        schemas.validate(m)
    assert e.value.field == "links[0].endpoints[0].vni"
    with pytest.raises(InvalidMessage) as e:
        schemas.validate(Emulation(latency=-5))
    assert e.value.field == "latency"
    with pytest.raises(InvalidMessage) as e:
        schemas.validate(DropBatch(host="h", events=[], counts={"gremlins": 1}, suppressed=0,
                                   lost=0))
    assert e.value.field == "counts"


def _abi_enum(name: str, prefix: str) -> list[str]:
    """The enumerators of `enum name` in datapath/bpf/abi.h, by value, prefix cut, lower case."""
    text = (Path(__file__).resolve().parent.parent / "datapath/bpf/abi.h").read_text()
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.DOTALL)
    assert body is not None, f"enum {name} not found in abi.h"
    values = {int(v): n for n, v in re.findall(rf"\b{prefix}(\w+)\s*=\s*(\d+)", body[1])
              if not n.startswith("NR_")}
    return [values[i].lower() for i in range(len(values))]


def test_drop_reason_and_stage_names_follow_abi_h():
    """DropEvent.reason and the counts' keys are abi.h's enums by name: checked, not copied."""
    assert list(schemas.DROP_REASONS) == _abi_enum("moa_drop_reason", "MOA_DROP_")
    assert list(schemas.STAGES) == _abi_enum("moa_stage", "MOA_STAGE_")
    assert typing.get_args(messages.DropReason) == schemas.DROP_REASONS
    assert typing.get_args(messages.Stage) == schemas.STAGES


# ----------------------------------------------------------------------------- JSON Schema files

def test_generated_schemas_are_current():
    """Fails when a Struct changed without `python -m schemas.generate`."""
    stale = generate.stale_files()
    assert stale == [], f"stale: {[p.name for p in stale]}; run python -m schemas.generate"
    assert generate.main(["--check"]) == 0


def test_stale_check_notices_an_edit(tmp_path: Path):
    generate.write_files(tmp_path)
    assert generate.stale_files(tmp_path) == []
    victim = tmp_path / "ack.schema.json"
    victim.write_text(victim.read_text().replace('"ok"', '"okay"'))
    (tmp_path / "update.schema.json").unlink()
    assert sorted(p.name for p in generate.stale_files(tmp_path)) == ["ack.schema.json",
                                                                       "update.schema.json"]
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0


def test_generate_check_command_line():
    """The command CI and people run, as a process, against the committed files."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "schemas.generate", "--check"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_generated_schema_content():
    for stem in generate.MESSAGES:
        doc = json.loads((generate.DIRECTORY / f"{stem}.schema.json").read_text())
        assert next(iter(doc)) == "$comment" and doc["$comment"] == generate.COMMENT
    mat = json.loads((generate.DIRECTORY / "materialize.schema.json").read_text())["$defs"]
    latency = mat["Emulation"]["properties"]["latency"]["anyOf"]
    assert latency[0]["type"] == "integer" and latency[0]["maximum"] == units.MAX_DURATION_NS
    pattern = re.compile(latency[1]["pattern"])
    assert pattern.match("10ms") and pattern.match("1.5ms") and not pattern.match("10xs")
    rate = re.compile(mat["Emulation"]["properties"]["capacity"]["anyOf"][1]["pattern"])
    assert rate.match("100Mbps") and rate.match("1gbps") and not rate.match("100MBps")
    assert mat["Endpoint"]["properties"]["vni"]["maximum"] == 16777215
    assert mat["Link"]["additionalProperties"] is False


# ----------------------------------------------------------------------------- fuzz

# Inputs near valid messages reach the validation rules; random bytes and small random JSON
# reach the parser. Hypothesis draws a seed (or raw bytes) and a seeded random.Random builds the
# payload: drawing deep structures through hypothesis costs ~2 ms per example here, a seed ~0.2 ms,
# and a failing seed is still reported and replayable.
_AWKWARD = [None, True, False, 0, 1, -1, 4789, 65536, (1 << 24) - 1, 1 << 24, 1 << 64, -(1 << 63),
            1 << 70, 0.5, 1.5, -0.0, 1e308, "", "10ms", "1.5gbps", "256KiB", "-1ms", "3601s",
            "10.0.0.1", "::1", "0.0.0.0", "a-b", "a b", "x" * 200, "\u0000", "\ud800", "NaN", [],
            {}, [1], {"x": 1}, {"p": 0.1, "r": 2}, {"vni": 5, "remote": "10.0.0.9"}]
_SEEDS = [json.loads(MATERIALIZE_EXAMPLE), TWO_LINKS, json.loads(ACK_OK_EXAMPLE),
          msgspec.to_builtins(ROUND_TRIP[4]), msgspec.to_builtins(ROUND_TRIP[9]),
          msgspec.to_builtins(ROUND_TRIP[10]), msgspec.to_builtins(ROUND_TRIP[11]), {"id": "m"}, {}]


def _copy(value):
    return json.loads(json.dumps(value))


def _locations(doc, out):
    """Every (container, key) in doc, depth first."""
    items = (doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list)
             else ())
    for key, value in items:
        out.append((doc, key))
        _locations(value, out)
    return out


def _mutated(rng: random.Random) -> object:
    doc = _copy(rng.choice(_SEEDS))
    for _ in range(rng.randint(1, 3)):
        spots = _locations(doc, [])
        if not spots:
            return _copy(rng.choice(_AWKWARD))
        container, key = rng.choice(spots)
        op = rng.randrange(4)
        if op == 0:
            container[key] = _copy(rng.choice(_AWKWARD))              # wrong type or value
        elif op == 1:
            del container[key]                                         # missing field / element
        elif op == 2 and isinstance(container, dict):
            container[rng.choice(["unexpected", "id", "vni"])] = _copy(rng.choice(_AWKWARD))
        elif isinstance(container, list):
            container.append(_copy(container[key]))                    # duplicate VNIs, ids
    return doc


def _random_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return _copy(rng.choice(_AWKWARD))
    if roll < 0.75:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "links", "x"]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _payload(seed: int) -> bytes:
    rng = random.Random(seed)
    roll = rng.random()
    if roll < 0.6:
        text = json.dumps(_mutated(rng), ensure_ascii=rng.random() < 0.5)
    elif roll < 0.85:
        text = json.dumps(_random_json(rng))
    else:
        return rng.randbytes(rng.randrange(48))
    if rng.random() < 0.1:  # truncate: malformed JSON that starts well
        text = text[:rng.randrange(len(text) + 1)]
    return text.encode("utf-8", "surrogatepass")


_KINDS = [Materialize, Update, Dematerialize, StatusRequest, Ack, DropBatch, LinkStatsBatch,
          StatusReply]


@settings(max_examples=10_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=st.integers(0, 2**64 - 1).map(_payload) | st.binary(max_size=48))
def test_fuzz_decode_raises_only_invalid_message(payload):
    for kind in _KINDS:  # one payload, every kind: a cheap way to cover more per example
        try:
            message = decode(kind, payload)
        except InvalidMessage as e:
            assert e.code in ("malformed", "invalid") and isinstance(e.field, str) and e.message
        else:
            # Whatever passes is valid by our own rules and survives a round trip unchanged.
            assert isinstance(message, kind)
            assert decode(kind, encode(message)) == message


def test_fuzz_valid_materializations_round_trip():
    """Not random: the rule table's base documents pass and round trip (guards the fixtures)."""
    for doc in (BASE, TWO_LINKS):
        m = decode(Materialize, json.dumps(doc))
        assert decode(Materialize, encode(m)) == m
    assert math.isfinite(
        decode(Materialize, json.dumps(_materialize(loss=0.5))).links[0].emulation.loss)


def test_aqm_decodes_with_rfc_defaults_left_to_the_datapath():
    m = schemas.decode(schemas.Materialize, json.dumps(_materialize(
        capacity="10mbps", aqm={"kind": "codel", "ecn": True, "interval": "50ms"})))
    aqm = m.links[0].emulation.aqm
    assert (aqm.kind, aqm.target, aqm.interval, aqm.ecn) == ("codel", None, 50_000_000, True)
    assert schemas.decode(schemas.Materialize, json.dumps(_materialize())).links[0] \
        .emulation.aqm == schemas.Aqm()
    pie = schemas.decode(schemas.Materialize, json.dumps(_materialize(
        capacity="10mbps", aqm={"kind": "pie", "target": "20ms"}))).links[0].emulation.aqm
    assert (pie.kind, pie.target, pie.interval, pie.ecn) == ("pie", 20_000_000, None, False)
