"""The plan: desired state + what the kernel holds -> ordered, reversible operations, then run.

Modules:
    planner.py    a Materialize + the kernel's current state -> the fewest ordered operations
    operation.py  Operation (apply/revert, idempotent; bulk paths) and Env, what they act on
    uplink.py     sch_fq, clsact and the classifier's programs on the uplink
    params.py     a VNI's stages in the classifier's moa_links map
    devices.py    VTEPs, LAN bridges, bridge ports, port holds; deleting many devices at once
    pair.py       two VTEPs of a point-to-point link joined as a wire
    runner.py     run_plan: in order, runs of one kind in bulk, rolled back on a failure
"""
