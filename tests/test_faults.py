"""datapath/faults.py: the failpoints tests arm to make the real code fail (the restart, fault and
bus tests use them against the real kernel; here the spec itself)."""
from __future__ import annotations

import pytest

from datapath import faults
from datapath.netlink.model import DatapathNetlinkError
from datapath.libbpf import BpfError


@pytest.fixture(autouse=True)
def clean():
    faults.disarm()
    yield
    faults.disarm()


def test_a_failpoint_fires_once_where_its_path_matches() -> None:
    faults.arm("plan.before/m1/*=error:map")
    faults.hit("plan.before", "m2", 0)  # another plan: nothing
    with pytest.raises(BpfError, match="failpoint plan.before/m1/3"):
        faults.hit("plan.before", "m1", 3)
    faults.hit("plan.before", "m1", 3)  # spent


def test_at_n_fires_at_the_nth_hit() -> None:
    faults.arm("plan.after/rb/0=error:netlink@2,state.after-write/rb=error:qdisc")
    faults.hit("plan.after", "rb", 0)
    with pytest.raises(DatapathNetlinkError, match="RTNETLINK"):
        faults.hit("plan.after", "rb", 0)
    with pytest.raises(DatapathNetlinkError, match="sch_fq"):
        faults.hit("state.after-write", "rb")
    assert faults.armed()  # spent failpoints stay listed until disarmed


@pytest.mark.parametrize("spec", ["plan.before/x", "plan.before/x=explode", "=kill",
                                  "plan.before/x=kill@0", "plan.before/x=kill@y"])
def test_a_spec_that_cannot_be_read_is_refused(spec: str) -> None:
    with pytest.raises(faults.FailpointError, match="POINT=ACTION"):
        faults.arm(spec)
    assert not faults.armed()
