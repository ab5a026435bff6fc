"""The lab: moa shown and measured from outside: testbeds, the demo, benchmarks, the VM harness.

- `host_testbed`: a testbed in network namespaces built on this host with iproute2 (the demo,
  `moa bench control` and the tests use it).
- `demo/`: `moa demo`. `datapath_bench`: `moa bench datapath` (the classifier through
  BPF_PROG_TEST_RUN). `control_bench`: `moa bench control` (the service and the box).
- `vm/`: the VM fidelity tier (`moa bench e2e`, tests/vm).

Imports run lab -> cli -> service -> datapath -> schemas; nothing outside the lab imports it.
"""
