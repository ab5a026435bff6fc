"""The VM fidelity tier: a VM with sch_fq, bonds and netem; moa's real stack measured there.

- `runner`: prepare the VM (scripts/vm/prepare.sh) and boot it once per batch (scripts/vm/run.sh).
- `scripted_testbed`: testbed topologies (box with a bond or veth uplink, hypervisor namespaces
  with VTEPs) written as shell commands, so the same description runs inside the VM and on the
  host (the host's tests build theirs command by command instead: moa_bus/lab/host_testbed.py).
- `batch`: a batch of named steps -> one bash script; each step's output lands in OUTDIR/steps.
- `measure`: shell snippets for ping/iperf3/counters and the parsers of their output;
  `traffic`: background traffic of a step (pings, iperf3 servers, pktgen floods) and its trap.
- `shaping`: the comparison shapers (tc-netem, the reference EDT program) as shell commands.
- `shaper_scenarios`: the end-to-end scenarios (latency, capacity, bond, UDP overload), each run
  with every comparison shaper in one boot, and their analysis into flat `<shaper>_<metric>`
  results.
- `moa_stack`: moa's real stack in the VM (moa serve in the box namespace, the Materialize of
  the tier's links, the CLI); `stack_scenarios`: issue 5's scenarios on that stack, with netem
  beside them, and `stack_results`: their figures.
- `report`: results JSON and PNG plots.
- `e2e`: the whole run (`moa bench e2e`, `python -m moa_bus.lab.vm.e2e`).
"""
