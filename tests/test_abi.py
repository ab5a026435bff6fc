"""The BTF reader (datapath/libbpf/btf.py) and the generated ABI mirror (datapath/libbpf/abi.py).

Cross-checks are independent of the code under test: the C compiler's own sizeof/offsetof of
abi.h (a tiny host program compiled here), and bpftool's dump of the object's BTF.
"""
from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

import schemas
from datapath.libbpf import abi as abi_mod
from datapath.libbpf import read_btf
from datapath.libbpf.btf import Btf, BtfError, Kind
from tests.fixtures.bpf import compile_bpf, selftest_o  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BPF_DIR = REPO / "datapath" / "bpf"

# Fields the Python side relies on, by Python type name: renaming one in abi.h must fail here.
FIELDS = {
    "Link": ["slot", "stage"],
    "StageParams": ["rate_bps", "queue_ns", "latency_ns", "jitter_ns", "loss_threshold", "ge",
                    "overhead", "loss_model", "flags", "aqm", "aqm_target_ns", "aqm_interval_ns",
                    "cell_size", "cell_overhead", "corrupt_threshold", "early", "dup",
                    "early_gap", "slot_dist", "slot_gap_ns", "slot_span_ns", "slot_packets",
                    "slot_bytes", "trace_key", "trace_queue"],
    "Chain": ["after_yes", "after_no"],
    "GilbertElliott": ["p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"],
    "StageState": ["lock", "ge_bad", "t_last", "t_depart", "ev_window", "ev_used", "aqm",
                   "corrupted", "early_count", "early_prev", "dup_prev", "duplicated",
                   "slot_next", "slot_pkts", "slot_used", "trace_origin", "trace_key",
                   "trace_idx", "trace_left"],
    "LinkCounters": ["packets", "bytes", "drops", "events_suppressed", "marks", "sojourn"],
    "GlobalCounters": ["non_vxlan", "unknown_vni", "ringbuf_fail", "handover"],
    "DropEvent": ["version", "reason", "stage", "vni", "time_ns", "len", "segs", "reserved"],
    "SkBuff": ["len", "mark", "cb", "tstamp", "wire_len", "gso_segs", "gso_size", "tstamp_type",
               "hwtstamp", "data", "data_end", "ifindex", "priority"],
}


@pytest.fixture(scope="module")
def classifier_o() -> Path:
    from datapath.bpf import object_path

    return Path(object_path(abi_mod.CLASSIFIER))  # built by `make bpf` (make test does it)


@pytest.fixture(scope="module", params=["selftest", "classifier"])
def mirror(request: pytest.FixtureRequest, selftest_o: Path) -> abi_mod.Abi:
    if request.param == "selftest":
        return abi_mod.load(str(selftest_o))
    return abi_mod.load(str(request.getfixturevalue("classifier_o")))


def _fields(ct) -> list[tuple[str, int]]:
    """(name, offset) of the real fields of a ctypes record, recursing into nested records."""
    out = []
    anonymous = getattr(ct, "_anonymous_", ())
    for name, ftype in ct._fields_:
        if name.startswith("_pad"):
            continue
        off = getattr(ct, name).offset
        if name in anonymous:  # C names an anonymous member's fields directly
            out += [(n, off + o) for n, o in _fields(ftype)]
            continue
        out.append((name, off))
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            if ftype.__name__ != "bpf_spin_lock":
                out += [(f"{name}.{n}", off + o) for n, o in _fields(ftype)]
    return out


# -- the mirror ---------------------------------------------------------------------------------

def test_mirror_has_the_fields_python_relies_on(mirror: abi_mod.Abi) -> None:
    for pyname, names in FIELDS.items():
        ct = getattr(mirror, pyname)
        assert issubclass(ct, ctypes.Structure), pyname
        for f in names:
            assert hasattr(ct, f), f"{pyname}.{f}"
    assert ctypes.sizeof(mirror.btf.ctype("struct bpf_spin_lock")) == 4
    assert mirror.StageState.lock.offset == 0 and mirror.StageState.lock.size == 4
    # The timeline's words in the first 56 bytes, CoDel's and PIE's state after them, then
    # reorder's and duplicate's, then the slot's, then a trace link's position (abi.h).
    assert ctypes.sizeof(mirror.StageState) == 168 and mirror.StageState.ge_bad.offset == 4
    assert mirror.StageState.aqm.offset == 56 and mirror.StageState.early_count.offset == 112
    assert mirror.StageState.slot_next.offset == 128
    assert mirror.StageState.trace_origin.offset == 144
    # The hit path's words in the first 80 bytes; reorder's and duplicate's from 112, the slot's
    # from 152, the trace's at the end: read only by the locked path.
    assert ctypes.sizeof(mirror.StageParams) == 184 and mirror.StageParams.early.offset == 112
    assert mirror.StageParams.slot_gap_ns.offset == 152
    assert mirror.StageParams.trace_key.offset == 176
    # The trace map's bounds are the schema's (schemas.messages.TRACE_MAX).
    assert mirror.TRACE_MAX == schemas.messages.TRACE_MAX and mirror.TRACE_OPP == 1500
    # A passed packet's counters are the first two words; the AQM's are further on, then the
    # sojourn histogram to the end of the fourth cache line (abi.h).
    assert ctypes.sizeof(mirror.LinkCounters) == 256 and mirror.LinkCounters.bytes.offset == 8
    assert mirror.LinkCounters.sojourn.offset == 80 and mirror.LinkCounters.sojourn.size == 176
    assert ctypes.sizeof(mirror.Link) == 8 + 2 * ctypes.sizeof(mirror.StageParams)
    assert mirror.Link.stage.size == 2 * ctypes.sizeof(mirror.StageParams)
    assert ctypes.sizeof(mirror.SkBuff) == 192
    # Room to grow: two reserved words after the version 1 fields (abi.h).
    assert ctypes.sizeof(mirror.DropEvent) == 40 and mirror.DropEvent.reserved.offset == 24


def test_mirror_enums(mirror: abi_mod.Abi) -> None:
    assert {m.name: m.value for m in mirror.Stage} == {"EGRESS": 0, "INGRESS": 1}
    assert {m.name: m.value for m in mirror.DropReason} == {"LOSS": 0, "QUEUE": 1, "HORIZON": 2,
                                                                "LINK_DOWN": 3, "AQM": 4}
    assert {m.name: m.value for m in mirror.Aqm} == {"TAILDROP": 0, "CODEL": 1, "PIE": 2}
    assert {m.name: m.value for m in mirror.LossModel} == {
        "NONE": 0, "BERNOULLI": 1, "GILBERT_ELLIOTT": 2}
    assert (mirror.StageFlags.REORDER, mirror.StageFlags.DOWN, mirror.StageFlags.ECN,
            mirror.StageFlags.CORRUPT, mirror.StageFlags.EARLY, mirror.StageFlags.DUPLICATE,
            mirror.StageFlags.SLOT, mirror.StageFlags.TRACE) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert (mirror.NR_STAGES, mirror.NR_DROP_REASONS, mirror.DROP_EVENT_VERSION) == (2, 5, 2)


def test_names_are_schemas_table(mirror: abi_mod.Abi) -> None:
    """The one Python table of drop reasons and stages (schemas) is the object's enums, by value."""
    import schemas
    assert tuple(m.name.lower() for m in sorted(mirror.DropReason)) == schemas.DROP_REASONS
    assert tuple(m.name.lower() for m in sorted(mirror.Stage)) == schemas.STAGES
    # The sojourn histogram's buckets: abi.h's macros (via enum moa_abi_consts) are schemas'.
    assert (mirror.SOJOURN_SHIFT, mirror.SOJOURN_BUCKETS) == (schemas.SOJOURN_SHIFT,
                                                              schemas.SOJOURN_BUCKETS) == (10, 22)
    assert len(schemas.SOJOURN_BOUNDS_NS) == mirror.SOJOURN_BUCKETS - 1
    assert schemas.SOJOURN_BOUNDS_NS[0] == 1024 and schemas.SOJOURN_BOUNDS_NS[-1] == 1 << 30


def test_a_table_that_differs_from_the_enums_stops_the_load(
        classifier_o: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas
    monkeypatch.setattr(schemas, "DROP_REASONS", ("loss", "horizon", "queue", "link_down", "aqm"))
    with pytest.raises(abi_mod.AbiError, match=r"enum moa_drop_reason is loss=0, queue=1, "
                                               r"horizon=2, link_down=3, aqm=4 .*"
                                               r"schemas.DROP_REASONS is loss, horizon, queue, "
                                               r"link_down, aqm"):
        abi_mod.Abi(str(classifier_o))
    monkeypatch.setattr(schemas, "DROP_REASONS", ("loss", "queue", "horizon", "link_down"))
    with pytest.raises(abi_mod.AbiError, match=r"aqm=4 \(MOA_NR_DROP_REASONS=5\)"):
        abi_mod.Abi(str(classifier_o))
    monkeypatch.setattr(schemas, "DROP_REASONS", ("loss", "queue", "horizon", "link_down", "aqm"))
    monkeypatch.setattr(schemas, "STAGES", ("egress",))
    with pytest.raises(abi_mod.AbiError, match="enum moa_stage is egress=0, ingress=1"):
        abi_mod.Abi(str(classifier_o))


def test_module_attributes_come_from_the_classifier(classifier_o: Path) -> None:
    assert abi_mod.path == str(classifier_o)
    assert abi_mod.Link is abi_mod.load().Link
    assert abi_mod.Stage.INGRESS == 1
    with pytest.raises(AttributeError):
        abi_mod.NoSuchThing  # noqa: B018


def _c_layout(names: dict[str, list[str]], tmp_path: Path) -> dict[str, int]:
    """sizeof/offsetof from the C compiler for "struct.field.sub" paths."""
    lines = []
    for cname, paths in names.items():
        lines.append(f'\tprintf("%s %zu\\n", "{cname}", sizeof(struct {cname}));')
        for p in paths:
            lines.append(f'\tprintf("%s %zu\\n", "{cname}.{p}", offsetof(struct {cname}, {p}));')
    src = tmp_path / "layout.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\n"
                   '#include "abi.h"\nint main(void)\n{\n' + "\n".join(lines)
                   + "\n\treturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run(["clang", "-Wall", "-Werror", f"-I{BPF_DIR}", str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_mirror_matches_the_c_compiler(mirror: abi_mod.Abi, tmp_path: Path) -> None:
    # Every field, nested ones included, against the host compiler's offsetof of abi.h.
    names = {cname: [n for n, _ in _fields(getattr(mirror, pyname))]
             for pyname, cname in abi_mod.STRUCTS.items()}
    c = _c_layout(names, tmp_path)
    checked = 0
    for pyname, cname in abi_mod.STRUCTS.items():
        ct = getattr(mirror, pyname)
        assert ctypes.sizeof(ct) == c[cname], cname
        for n, off in _fields(ct):
            assert off == c[f"{cname}.{n}"], f"{cname}.{n}"
            checked += 1
    assert checked > 80


def test_mirror_enums_match_the_c_compiler(mirror: abi_mod.Abi, tmp_path: Path) -> None:
    values = [f"MOA_STAGE_{m.name}" for m in mirror.Stage] + \
             [f"MOA_DROP_{m.name}" for m in mirror.DropReason] + \
             [f"MOA_LOSS_{m.name}" for m in mirror.LossModel] + \
             [f"MOA_AQM_{m.name}" for m in mirror.Aqm] + \
             ["MOA_NR_STAGES", "MOA_NR_DROP_REASONS", "MOA_DROP_EVENT_VERSION", "MOA_F_REORDER",
              "MOA_F_DOWN", "MOA_F_ECN", "MOA_F_CORRUPT", "MOA_F_EARLY", "MOA_F_DUPLICATE",
              "MOA_F_SLOT", "MOA_F_TRACE", "MOA_SOJOURN_SHIFT", "MOA_SOJOURN_BUCKETS",
              "MOA_TRACE_MAX", "MOA_TRACE_KEYS_MAX", "MOA_TRACE_OPP"]
    src = tmp_path / "enums.c"
    src.write_text('#include <stdio.h>\n#include <linux/bpf.h>\n#include "abi.h"\n'
                   'int main(void)\n{\n'
                   + "".join(f'\tprintf("{v} %lld\\n", (long long){v});\n' for v in values)
                   + "\treturn 0;\n}\n")
    exe = tmp_path / "enums"
    subprocess.run(["clang", f"-I{BPF_DIR}", str(src), "-o", str(exe)], check=True)
    c = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                     check=True).stdout.splitlines())
    py = {f"MOA_STAGE_{m.name}": m.value for m in mirror.Stage}
    py |= {f"MOA_DROP_{m.name}": m.value for m in mirror.DropReason}
    py |= {f"MOA_LOSS_{m.name}": m.value for m in mirror.LossModel}
    py |= {f"MOA_AQM_{m.name}": m.value for m in mirror.Aqm}
    py |= {"MOA_NR_STAGES": mirror.NR_STAGES, "MOA_NR_DROP_REASONS": mirror.NR_DROP_REASONS,
           "MOA_DROP_EVENT_VERSION": mirror.DROP_EVENT_VERSION,
           "MOA_F_REORDER": int(mirror.StageFlags.REORDER),
           "MOA_F_DOWN": int(mirror.StageFlags.DOWN), "MOA_F_ECN": int(mirror.StageFlags.ECN),
           "MOA_F_CORRUPT": int(mirror.StageFlags.CORRUPT),
           "MOA_F_EARLY": int(mirror.StageFlags.EARLY),
           "MOA_F_DUPLICATE": int(mirror.StageFlags.DUPLICATE),
           "MOA_F_SLOT": int(mirror.StageFlags.SLOT), "MOA_F_TRACE": int(mirror.StageFlags.TRACE),
           "MOA_SOJOURN_SHIFT": mirror.SOJOURN_SHIFT,
           "MOA_SOJOURN_BUCKETS": mirror.SOJOURN_BUCKETS, "MOA_TRACE_MAX": mirror.TRACE_MAX,
           "MOA_TRACE_KEYS_MAX": mirror.TRACE_KEYS_MAX, "MOA_TRACE_OPP": mirror.TRACE_OPP}
    assert {k: int(v) for k, v in c.items()} == py


def _bpftool_structs(obj: Path) -> dict[str, tuple[int, dict[str, int]]]:
    """struct name -> (size, {member: byte offset}) from `bpftool btf dump file X format raw`."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
                         check=True, capture_output=True, text=True).stdout
    structs: dict[str, tuple[int, dict[str, int]]] = {}
    current: dict[str, int] | None = None
    for line in out.splitlines():
        m = re.match(r"\[\d+\] STRUCT '([^']*)' size=(\d+)", line)
        if m:
            current = {}
            structs[m.group(1)] = (int(m.group(2)), current)
            continue
        m = re.match(r"\s+'([^']*)' type_id=\d+ bits_offset=(\d+)", line)
        if m and current is not None:
            current[m.group(1)] = int(m.group(2)) // 8
        elif not line.startswith(("\t", " ")):
            current = None
    return structs


def test_mirror_matches_bpftool(selftest_o: Path) -> None:
    mirror = abi_mod.load(str(selftest_o))
    dumped = _bpftool_structs(selftest_o)
    for pyname, cname in abi_mod.STRUCTS.items():
        ct = getattr(mirror, pyname)
        size, members = dumped[cname]
        assert ctypes.sizeof(ct) == size, cname
        for member, off in members.items():
            if member == "(anon)":  # anonymous unions: their members are checked against C
                continue
            assert getattr(ct, member).offset == off, f"{cname}.{member}"


def test_missing_type_is_named(tmp_path: Path) -> None:
    src = tmp_path / "lacking.bpf.c"
    src.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n#include "abi.h"\n'
                   "struct moa_link only_link;\n"
                   'SEC("tc") int p(struct __sk_buff *skb) { return 0; }\n'
                   'char LICENSE[] SEC("license") = "GPL";\n')
    with pytest.raises(abi_mod.AbiError, match="moa_stage_params|moa_gilbert|moa_stage_state"):
        abi_mod.Abi(str(compile_bpf(src, tmp_path)))
    src.write_text(src.read_text().replace("struct moa_link only_link;",
                                           "struct moa_link l; struct moa_stage_state s;"
                                           "struct moa_link_counters c; "
                                           "struct moa_global_counters g;"
                                           "struct moa_drop_event e; struct moa_box b;"
                                           "struct moa_dist_table t; struct moa_dist_cdf f;"
                                           "struct moa_flow w;"))
    with pytest.raises(abi_mod.AbiError, match="enum moa_stage"):
        abi_mod.Abi(str(compile_bpf(src, tmp_path)))


# -- the BTF reader on the shapes abi.h does not have -------------------------------------------

BTF_CASES = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef unsigned int u32_t;

struct packed_one {
	__u8 a;
	__u64 b;
	__u16 c;
} __attribute__((packed));

struct with_union {
	__u32 tag;
	union {
		__u64 wide;
		__u8 bytes[6];
	};
	struct { __u16 x, y; } point;
	__s8 neg;
	_Bool flag;
	u32_t alias;
	__s64 matrix[2][3];
	void *ptr;
};

struct with_bits {
	__u32 a : 3;
	__u32 b : 29;
};

enum small_enum { SE_A = 3, SE_B = 0x80000000 };

struct packed_one g_packed;
struct with_union g_union;
struct with_bits g_bits;
enum small_enum g_enum;
const volatile __u16 ro_a = 1;
const volatile __u64 ro_b = 2;

SEC("tc") int p(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Btf, Path]:
    d = tmp_path_factory.mktemp("btf-cases")
    src = d / "cases.bpf.c"
    src.write_text(BTF_CASES)
    obj = compile_bpf(src, d)
    return read_btf(str(obj)), src


def test_btf_packed_union_anonymous_and_arrays(cases: tuple[Btf, Path], tmp_path: Path) -> None:
    btf, src = cases
    P = btf.ctype("packed_one")
    assert ctypes.sizeof(P) == 11 and P.b.offset == 1 and P.c.offset == 9
    U = btf.ctype("struct with_union")
    u = U()
    u.wide = 0x0102030405060708
    assert u.bytes[0] == 8  # anonymous union flattened, members share storage
    u.point.y = 3
    u.neg = -5
    u.matrix[1][2] = -9
    assert (u.point.y, u.neg, u.matrix[1][2]) == (3, -5, -9)
    assert btf.ctype("with_union") is U  # cached
    assert btf.ctype("u32_t") is ctypes.c_uint32
    # Cross-check against the C compiler, as for abi.h.
    checks = [("packed_one", "a"), ("packed_one", "b"), ("packed_one", "c"),
              ("with_union", "tag"), ("with_union", "wide"), ("with_union", "point"),
              ("with_union", "neg"), ("with_union", "flag"), ("with_union", "alias"),
              ("with_union", "matrix"), ("with_union", "ptr")]
    prog = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
            BTF_CASES.split("struct packed_one g_packed;")[0]
            .split("#include <bpf/bpf_helpers.h>")[1],
            "int main(void) {",
            'printf("%zu %zu\\n", sizeof(struct packed_one), sizeof(struct with_union));']
    prog += [f'printf("%zu\\n", offsetof(struct {s}, {f}));' for s, f in checks]
    prog += ["return 0; }"]
    c_src = tmp_path / "cases.c"
    c_src.write_text("\n".join(prog))
    exe = tmp_path / "cases"
    subprocess.run(["clang", str(c_src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert [int(x) for x in out[:2]] == [ctypes.sizeof(P), ctypes.sizeof(U)]
    types = {"packed_one": P, "with_union": U}
    assert [int(x) for x in out[2:]] == [getattr(types[s], f).offset for s, f in checks]


def test_btf_enums_datasec_and_errors(cases: tuple[Btf, Path]) -> None:
    btf, _ = cases
    # No kind_flag (clang 14 writes none): values read as unsigned, as the BTF spec says.
    assert btf.enum("small_enum") == {"SE_A": 3, "SE_B": 0x80000000}
    assert btf.ctype("enum small_enum") is ctypes.c_uint32
    rodata = btf.datasec(".rodata")
    assert rodata == {"ro_a": (0, 2), "ro_b": (8, 8)}
    assert "packed_one" in btf.names(Kind.STRUCT)
    with pytest.raises(BtfError, match="bitfield"):
        btf.ctype("with_bits")
    with pytest.raises(BtfError, match="no_such_struct"):
        btf.ctype("no_such_struct")
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\0" * 32)
