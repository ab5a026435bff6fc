"""Status names a trace, it does not carry it (issue 14; docs/contract.md, "Status"): 60 s of
the T-Mobile downlink trace is 395 KB of JSON, the whole trace 1.2 MB, more than a default
server's message; status made each page carry it (and failed `internal` when one link's did not
fit). A trace is reported by its summary: how many opportunities, the period, the mean rate and
the sha256 of its text, which is what `sha256sum` prints for the trace file.

The box's real datapath (its counters, in a network namespace) behind the status endpoint's own
page maker; the desired state holds the link as a commit would (this host's loss-only box
refuses to apply a trace: no sch_fq).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import msgspec
import pytest

import schemas
from datapath.traces import read_mahimahi
from moa_bus.cli.show import rows, _emulation
from moa_bus.engine_paging import merge_pages
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.desired import DesiredState, Held
from moa_bus.service.status import StatusPages
from tests.fixtures.moabox import box  # noqa: F401
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.netns]

TRACE = Path(__file__).parent / "fixtures" / "traces" / "TMobile-LTE-short.down.60s.gz"
PAYLOAD = 256 * 1024  # a server's max_payload, smaller than the trace's JSON (395 KB)


def _materialize(text: str) -> schemas.Materialize:
    """A link whose both directions run the trace: the link's, and an endpoint's own copy of
    it with a loss (a direction with parameters of its own is listed in `directions`)."""
    trace = msgspec.to_builtins(read_mahimahi(text))
    return schemas.decode(schemas.Materialize, json.dumps({"id": "cell", "links": [
        {"id": "lte", "emulation": {"trace": trace, "queue": 1_000_000}, "endpoints": [
            {"vni": 900, "remote": Testbed.hv_addr(1)},
            {"vni": 901, "remote": Testbed.hv_addr(2),
             "emulation": {"loss": 0.01, "trace": trace}}]}]}).encode())


async def test_status_reports_a_trace_by_its_summary(box) -> None:  # noqa: F811
    text = gzip.decompress(TRACE.read_bytes()).decode()
    m = _materialize(text)
    assert len(schemas.encode(m)) > 2 * PAYLOAD                 # the trace twice: 790 KB
    pages = StatusPages(DesiredState(held={"cell": Held(m, 1)}), box, "h", {})
    body = await pages.page(schemas.StatusRequest(), PAYLOAD)
    assert len(body) < 4096, len(body)                           # one page, a few hundred bytes
    reply = json.loads(body)
    assert reply["next"] is None
    (link,) = reply["materializations"][0]["links"]
    ms = [int(x) for x in text.split()]
    want = {"opportunities": len(ms), "period_ms": ms[-1],
            "rate": len(ms) * 12_000 * 1000 // ms[-1],
            "sha256": hashlib.sha256(text.encode()).hexdigest()}   # sha256sum of the file
    assert link["emulation"]["trace"] == want
    assert [(d["vni"], d["emulation"]["loss"], d["emulation"]["trace"])
            for d in link["directions"]] == [(901, 0.01, want)]
    assert want["opportunities"] == 69_905 and 59_000 < want["period_ms"] <= 60_000

    # the engine client's merge and `moa show` read it as any status (schemas.StatusEmulation)
    merged = schemas.decode(schemas.StatusReply, json.dumps(merge_pages([reply])).encode())
    shown = rows(merged.materializations[0].links[0])
    assert [vnis for vnis, _ in shown] == [[900], [901]]
    assert all(_emulation(e)[3].startswith("trace ~") for _, e in shown)


def test_a_summary_is_of_the_trace_as_mm_link_reads_it() -> None:
    """Two traces that differ only in one opportunity differ in their sha256; the summary of a
    trace is what its rate and period say (5 x 1,500 B in 4 ms: 15 Mbit/s)."""
    a = schemas.Trace(opportunities_ms=(0, 1, 1, 1, 4)).summary()
    b = schemas.Trace(opportunities_ms=(0, 1, 1, 2, 4)).summary()
    assert (a.opportunities, a.period_ms, a.rate) == (5, 4, 15_000_000)
    assert a.sha256 == hashlib.sha256(b"0\n1\n1\n1\n4\n").hexdigest() != b.sha256
    e = schemas.status_emulation(schemas.Emulation(trace=schemas.Trace(opportunities_ms=(1, 2))))
    assert isinstance(e, schemas.StatusEmulation) and e.trace.rate == 12_000_000
    assert schemas.status_emulation(schemas.Emulation()).trace is None
