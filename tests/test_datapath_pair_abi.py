"""The pair's records live in abi.h (the ABI rule) and its Python side reads them from the pair
object's BTF: checked here against the C compiler's own view of abi.h, independently of the BTF
reader, and by a round trip through the loaded (unpinned) pair maps."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from datapath.pair import COUNTERS, PairProgram, counter_names

BPF_DIR = Path(__file__).resolve().parent.parent / "datapath" / "bpf"


def c_facts(tmp_path: Path) -> dict[str, int]:
    src = tmp_path / "pair_abi.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\n#include \"abi.h\"\n"
        "int main(void)\n{\n"
        '\tprintf("size %zu\\n", sizeof(struct moa_pair_peer));\n'
        '\tprintf("peer_ifindex %zu\\n", offsetof(struct moa_pair_peer, peer_ifindex));\n'
        '\tprintf("peer_mtu %zu\\n", offsetof(struct moa_pair_peer, peer_mtu));\n'
        '\tprintf("xdp_redirect %d\\n", MOA_PAIR_XDP_REDIRECT);\n'
        '\tprintf("xdp_too_big %d\\n", MOA_PAIR_XDP_TOO_BIG);\n'
        '\tprintf("tc_redirect %d\\n", MOA_PAIR_TC_REDIRECT);\n'
        '\tprintf("miss %d\\n", MOA_PAIR_MISS);\n'
        '\tprintf("nr %d\\n", MOA_PAIR_NR_COUNTERS);\n'
        "\treturn 0;\n}\n")
    exe = tmp_path / "pair_abi"
    subprocess.run(["clang", "-Wall", "-Werror", f"-I{BPF_DIR}", str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_pair_records_from_btf_match_abi_h(tmp_path: Path) -> None:
    c = c_facts(tmp_path)
    pair = PairProgram(None, max_vteps=16)
    try:
        assert ctypes.sizeof(pair.Peer) == c["size"]
        assert pair.Peer.peer_ifindex.offset == c["peer_ifindex"]
        assert pair.Peer.peer_mtu.offset == c["peer_mtu"]
        assert len(pair.counter_names) == c["nr"]
        for i, name in enumerate(pair.counter_names):
            assert c[name] == i
        assert pair.counter_names == COUNTERS
        # round trip through the real map with the BTF-built type (the DEVMAP, which connect()
        # also writes, wants devices that exist: the peers map alone here)
        pair.peers.update(7, pair.Peer(peer_ifindex=9, peer_mtu=1450))
        entries = pair.entries()
        assert (entries[7].ifindex, entries[7].peer_ifindex, entries[7].peer_mtu) == (7, 9, 1450)
        assert pair.peers.lookup(7)[:8] == (9).to_bytes(4, "little") + (1450).to_bytes(4, "little")
        pair.disconnect(7)
        assert pair.entries() == {}
        assert pair.counters() == dict.fromkeys(COUNTERS, 0)
    finally:
        pair.close()


def test_counter_names_refuse_holes() -> None:
    assert counter_names({"MOA_PAIR_B": 1, "MOA_PAIR_A": 0,
                          "MOA_PAIR_NR_COUNTERS": 2}) == ("a", "b")
    try:
        counter_names({"MOA_PAIR_A": 0, "MOA_PAIR_C": 2, "MOA_PAIR_NR_COUNTERS": 3})
    except RuntimeError as e:
        assert "0..2" in str(e)
    else:
        raise AssertionError("a hole in the enum must be refused")
