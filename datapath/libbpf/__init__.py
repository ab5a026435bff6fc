"""ctypes over Debian's libbpf.so.1: objects, maps, programs, ring buffers; BTF, the abi.h mirror.

Modules, each one job:
    lib.py      loading libbpf.so.1 with its prototypes, its log (captured per thread), errors
    checks.py   what BPF needs from this machine (bpffs, privilege, program/map types, helpers)
    maps.py     Map: lookup/update/delete/keys, batches, per-CPU values, pins
    objects.py  BpfObject (open, .rodata, map sizes, pins, load) and Program (test_run)
    ringbuf.py  RingBuffer: a BPF ring buffer read from the asyncio loop
    btf.py      Btf: a BTF reader building ctypes types (imports nothing of libbpf)
    abi.py      the ctypes mirror of datapath/bpf/abi.h, built from the classifier's BTF

The loader's names are re-exported here (``from datapath.libbpf import BpfObject, Map``);
``btf`` and ``abi`` are imported as modules (``from datapath.libbpf import abi``).
"""
from datapath.libbpf.checks import check_environment
from datapath.libbpf.lib import (
    BpfError, BpfLoadError, LibbpfMissing, load_libbpf, load_library, possible_cpus, version,
)
from datapath.libbpf.maps import BPF_ANY, BPF_EXIST, BPF_F_LOCK, BPF_NOEXIST, Map, MapType
from datapath.libbpf.objects import BpfObject, Program, TestRun, open_btf_raw, read_btf
from datapath.libbpf.ringbuf import RingBuffer

__all__ = [
    "BpfError", "BpfLoadError", "LibbpfMissing", "BpfObject", "Map", "Program", "TestRun",
    "RingBuffer", "load_libbpf", "load_library", "version", "check_environment", "open_btf_raw",
    "read_btf", "possible_cpus", "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_LOCK", "MapType",
]
