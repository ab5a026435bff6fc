"""The box's datapath: BPF programs, libbpf, netlink and the plan, behind one interface (api.py)."""
