"""The floors and the packages: imports run one way, lab -> cli -> service -> datapath ->
schemas (schemas imports neither of the others, datapath no moa_bus); every package says on its
first line what it is for; no module grows past 450 lines without saying why at its top. Read
from the source (every import statement, also those inside functions), so a lazy import that
runs only on some path counts as much as one at the top.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from moa_bus.cli import COMMANDS
from moa_bus.cli.bench import BENCHES
from moa_bus.cli.demo import DEMO

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moa_bus"
MAX_LINES = 450  # above this a module says at its top why it is one module


def _imports(path: Path) -> set[str]:
    """Every module an import statement of `path` names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]  # a module's package, and a package's own (__init__ dropped)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _under(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_imports_run_lab_cli_service() -> None:
    wrong = {}
    for path in _modules(PACKAGE / "service"):
        bad = _under(_imports(path), "moa_bus.cli", "moa_bus.lab", "moa_bus.engine")
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    for path in [*_modules(PACKAGE / "cli"), *PACKAGE.glob("engine*.py")]:
        bad = _under(_imports(path), "moa_bus.lab")
        if path.name.startswith("engine"):
            bad |= _under(_imports(path), "moa_bus.cli")
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    for folder, above in (("datapath", ("moa_bus",)), ("schemas", ("moa_bus", "datapath"))):
        for path in _modules(ROOT / folder):
            bad = _under(_imports(path), *above)
            if bad:
                wrong[str(path.relative_to(ROOT))] = bad
    assert not wrong, wrong


def test_the_verbs_name_modules_that_exist() -> None:
    """The CLI reaches the lab only by module path (demo, bench): each path must resolve."""
    named = [m for m, _ in COMMANDS.values()] + [m for m, _ in BENCHES.values()] + [DEMO]
    assert [m for m in named if importlib.util.find_spec(m) is None] == []
    assert all(m.startswith("moa_bus.cli.") for m, _ in COMMANDS.values())


FLOORS = ("schemas", "datapath", "moa_bus")


def test_each_package_says_what_it_is_for_and_modules_stay_small() -> None:
    inits = [init for floor in FLOORS for init in sorted((ROOT / floor).rglob("__init__.py"))]
    assert len(inits) >= 10, inits
    for init in inits:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.splitlines()[0].strip(), f"{init}: no one-line docstring"
        assert len(doc.splitlines()) == 1 or doc.splitlines()[1] == "", init
    long = [str(p.relative_to(ROOT)) for floor in FLOORS for p in _modules(ROOT / floor)
            if len(p.read_text().splitlines()) > MAX_LINES
            and "one module" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert long == [], f"over {MAX_LINES} lines without a reason at the top: {long}"
