"""Every reference to a file of the repository names one that exists; nothing points outside it.

Scanned: the source and docs of the repository (.py .h .c .md .sh .toml .json .service, Makefiles
and scripts with a #! line), not the venv, caches or build outputs. A reference is
- a path under a top-level folder: docs/..., tests/..., datapath/..., moa_bus/..., schemas/...,
  scripts/..., examples/... (a glob or {a,b} alternatives must match something; {name} is a
  placeholder; x.bpf.o, a build output, exists when x.bpf.c does);
- a Markdown document by name (`semantics.md`): found next to the citing file, at the top of the
  repository or in docs/; with a folder, relative to the citing file or the top;
- the target of a Markdown link in a .md file, relative to that file (URLs and #anchors aside);
- a dotted module path (`moa_bus.lab.vm.shaping`, `datapath.api.PlanError`): each package and
  module must exist, and the first name after the last module must occur in it (a top-level
  name followed by no module of it, `datapath.close()`, is taken for an object of that name).
Outside the repository: /work/..., ../shared, the shared design or seed folders, "design notes".

This file is not scanned: its patterns and its self-test's bad references would be findings.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()

SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache",
             ".hypothesis", ".mypy_cache", ".ruff_cache", "results", "vm-cache", "node_modules"}
SUFFIXES = {".py", ".h", ".c", ".md", ".sh", ".toml", ".json", ".service"}
TOP = ("docs", "tests", "datapath", "moa_bus", "schemas", "scripts", "examples")
PACKAGES = ("datapath", "moa_bus", "schemas", "tests")

_NOT_AFTER = r"(?<![\w./$-])"  # not the tail of a longer path, a URL or a shell variable
PATH_RE = re.compile(_NOT_AFTER + r"((?:%s)/[\w./*{},-]*[\w*}])" % "|".join(TOP))
DOC_RE = re.compile(_NOT_AFTER + r"([\w-][\w./-]*\.md)\b")
LINK_RE = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
MODULE_RE = re.compile(_NOT_AFTER + r"((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(PACKAGES))
OUTSIDE_RE = re.compile(r"/work/|\.\./shared\b|\bshared/(?:design|seed)\b|design notes", re.I)


@dataclass(frozen=True)
class Finding:
    where: str
    line: int
    ref: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.ref} ({self.why})"


def source_files(root: Path = ROOT) -> list[Path]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info"))
        for name in sorted(files):
            p = Path(d) / name
            if p.resolve() == SELF:
                continue
            if p.suffix in SUFFIXES or name == "Makefile" or _has_shebang(p):
                out.append(p)
    return out


def _has_shebang(p: Path) -> bool:
    if p.suffix:
        return False
    try:
        with p.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _alternatives(ref: str) -> list[str]:
    """{a,b} alternatives expanded; a {placeholder} without a comma becomes a glob."""
    m = re.search(r"\{([^{}]*)\}", ref)
    if not m:
        return [ref]
    parts = m[1].split(",") if "," in m[1] else ["*"]
    return [x for part in parts for x in _alternatives(ref[:m.start()] + part + ref[m.end():])]


def _exists(root: Path, rel: str) -> bool:
    for alt in _alternatives(rel):
        if any(c in alt for c in "*?["):
            if any(root.glob(alt)):
                return True
            continue
        p = root / alt
        if p.exists():
            return True
        if alt.endswith(".bpf.o") and p.with_name(p.name[:-2] + ".c").exists():
            return True  # a build output: exists once built from its source
    return False


def _module_ok(root: Path, dotted: str) -> bool:
    names = dotted.split(".")
    here = root / names[0]
    for i, name in enumerate(names[1:]):
        if re.fullmatch(r"__\w+__", name):
            return True
        if here.is_dir():
            if i == 0 and not (here / f"{name}.py").is_file() and not (here / name).is_dir():
                return True  # `datapath.close()`: more often an object of that name than a module
            if (here / f"{name}.py").is_file():
                here = here / f"{name}.py"
            elif (here / name).is_dir():
                here = here / name
            else:
                init = here / "__init__.py"
                return init.is_file() and re.search(rf"\b{name}\b", init.read_text()) is not None
        else:  # a module: the next name is something it defines; deeper names are not checked
            return re.search(rf"\b{name}\b", here.read_text()) is not None
    return True


def findings_in(text: str, where: Path, root: Path = ROOT) -> list[Finding]:
    """Dangling and outside references in `text`, which is the file `where` of the tree `root`."""
    rel = where.relative_to(root).as_posix() if where.is_absolute() else where.as_posix()
    base = (root / rel).parent
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in OUTSIDE_RE.finditer(line):
            found.append(Finding(rel, n, m[0], "points outside the repository"))
        for m in PATH_RE.finditer(line):
            if not _exists(root, m[1]):
                found.append(Finding(rel, n, m[1], "no such path"))
        for m in DOC_RE.finditer(line):
            ref = m[1]
            if ref.split("/", 1)[0] in TOP:
                continue  # a path under a top-level folder: PATH_RE's
            places = [base, root] if "/" in ref else [base, root, root / "docs"]
            if not any((p / ref).exists() for p in places):
                found.append(Finding(rel, n, ref, "no such document"))
        if rel.endswith(".md"):
            for m in LINK_RE.finditer(line):
                target = m[1].split("#", 1)[0]
                if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):
                    continue
                if not (base / target).exists():
                    found.append(Finding(rel, n, m[1], "broken link"))
        for m in MODULE_RE.finditer(line):
            if not _module_ok(root, m[1]):
                found.append(Finding(rel, n, m[1], "no such module or name"))
    return found


def test_every_reference_in_the_repository_resolves() -> None:
    files = source_files()
    assert len(files) > 100, "the scan found too few files: is ROOT right?"
    found = [f for p in files for f in findings_in(p.read_text(errors="replace"), p)]
    assert not found, "references that lead nowhere:\n" + "\n".join(map(str, found))


def test_the_docs_the_code_cites_are_in_the_repository() -> None:
    for doc in ("architecture", "contract", "semantics", "kernel-facts", "timeline",
                "environment", "benchmarks"):
        assert (ROOT / "docs" / f"{doc}.md").is_file(), doc


def test_the_scanner_finds_bad_references(tmp_path: Path) -> None:
    """On a synthetic tree: each kind of bad reference is found, each good one is not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "semantics.md").write_text("# semantics\n")
    (tmp_path / "datapath" / "bpf").mkdir(parents=True)
    (tmp_path / "datapath" / "__init__.py").write_text("")
    (tmp_path / "datapath" / "api.py").write_text("class PlanError(Exception): ...\n")
    (tmp_path / "datapath" / "bpf" / "port.h").write_text("")
    (tmp_path / "datapath" / "bpf" / "edt.bpf.c").write_text("")
    good = ("see docs/semantics.md, semantics.md and datapath/bpf/port.h\n"
            "built: datapath/bpf/edt.bpf.o; all: datapath/bpf/*.h, datapath/bpf/{port,edt.bpf}.*\n"
            "raises datapath.api.PlanError; https://example.org/tests/nothing.py\n"
            "[the semantics](docs/semantics.md#the-lan-case) [web](https://example.org/x.md)\n")
    bad = ("see kernel-facts.md (LAN case)\n"
           "and tests/test_plumbing_pair.py, datapath/bpf/nothere.h, docs/*.txt\n"
           "raises datapath.api.NoSuchError from datapath.bpf.nomodule\n"
           "[gone](docs/gone.md) and /work/shared/design/semantics.md and the design notes\n")
    where = tmp_path / "README.md"
    assert findings_in(good, where, tmp_path) == []
    found = findings_in(bad, where, tmp_path)
    refs = {(f.line, f.ref) for f in found}
    assert {(1, "kernel-facts.md"), (2, "tests/test_plumbing_pair.py"),
            (2, "datapath/bpf/nothere.h"), (2, "docs/*.txt"), (3, "datapath.api.NoSuchError"),
            (3, "datapath.bpf.nomodule"), (4, "docs/gone.md"), (4, "/work/"),
            (4, "design notes")} <= refs, found
    assert str(found[0]).startswith("README.md:1: kernel-facts.md")
