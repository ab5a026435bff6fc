"""Netlink for moa's box: VTEPs, bridges, XDP, clsact, bpf filters, sch_fq, on one worker thread.

Modules, by what each talks to:
    model.py    moa's devices, marks (ifalias), fq sizing and errors: no kernel, no pyroute2
    worker.py   NetlinkWorker: the one thread, in the box's network namespace, all of it runs on
    devices.py  Netlink: VTEPs, bridges, generic XDP through pyroute2, one checked request at a time
    tc.py       clsact and moa's bpf filters (pyroute2), sch_fq (iproute2's tc): Netlink's tc half
    raw.py      rtnetlink by hand, pipelined: a plan's bulk operations and fast dumps; the
                kernel's numbers (IFF_UP, TC_INGRESS, ...) used by the package
    qdisc_tree.py  a device's root qdisc tree kept as rtnetlink messages, and put back
"""
