"""The testbed topology also runs on the host kernel (veth uplink, no bond, no fq): traffic from
hv1 crosses the box's VTEPs and bridge to hv2, the same way it does inside the VM."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess

import pytest

from moa_bus.lab.vm import batch, measure, scripted_testbed

pytestmark = pytest.mark.netns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_traffic_crosses_the_box_on_the_host(tmp_path) -> None:
    prefix = f"mh{random.randrange(10**4):04d}"
    tb = scripted_testbed.two_hypervisors(prefix, uplink="veth", with_fq=False)
    box, hv1, hv2 = tb.ns("box"), tb.ns("hv1"), tb.ns("hv2")
    b = batch.Batch()
    b.add("setup", tb.setup() + tb.box_bridge("lan0", [100, 101])
          + [measure.wait_ping(hv1, "192.168.77.2")], critical=True)
    b.add("ping", measure.ping(hv1, "192.168.77.2", count=20, interval_s=0.01, warmup=2)
          + measure.link_stats(box, ("vx101",), "after"))
    b.add("tcp", measure.iperf3(hv2, hv1, "192.168.77.2", seconds=1, port=_free_port()))
    b.finally_commands += tb.teardown()
    script = tmp_path / "cmd.sh"
    script.write_text(b.script())
    try:
        proc = subprocess.run(["bash", str(script)], env=dict(os.environ, MOA_VM_OUT=str(tmp_path)),
                              capture_output=True, text=True, timeout=120)
    finally:
        for ns in tb.namespaces:  # the batch cleans up; this covers a killed batch
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    res = batch.results(tmp_path)
    assert proc.returncode == 0, (proc.stdout, {n: r.err for n, r in res.items()})
    assert res["ping"].rc == 0 and res["tcp"].rc == 0, {n: r.err for n, r in res.items()}
    assert len(measure.parse_ping(res["ping"].out)) == 20
    # the replies' way back is VNI 100; the requests left the box through its VTEP of VNI 101
    sent = json.loads(res["ping"].file(".after.vx101.json").read_text())[0]["stats64"]["tx"]
    assert sent["packets"] >= 20
    assert measure.parse_iperf3_tcp(res["tcp"].out).goodput_bps > 1e6
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed
