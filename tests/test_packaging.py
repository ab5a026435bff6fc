"""`pip install .` gives a working moa (issue 6): setup.py's BPF build, the wheel, the unit file.

Each install goes into a fresh venv under a private tmp dir, from a copy of the source tree that
has no .bpf.o (as a fresh clone), so parallel `make bpf` runs and builds cannot interfere. pip
uses this machine's index configuration as it is (build isolation fetches setuptools from it).
moa's runtime dependencies are not installed again: a .pth line appends the project venv's
site-packages after the fresh venv's own, so the installed moa, not the source tree, is imported.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BPF_SRC = REPO / "datapath" / "bpf"
TREE = ["pyproject.toml", "setup.py", "README.md", "moa_bus", "datapath", "schemas"]
EM_BPF = 247  # ELF e_machine of BPF objects
# What a wheel must ship: every program in the tree at test time except the test-only selftest.
SHIPPED = sorted(p.name.removesuffix(".c") + ".o" for p in BPF_SRC.glob("*.bpf.c")
                 if p.name != "selftest.bpf.c")


def load_setup_module():
    """setup.py's functions (it only calls setup() when run as __main__, as the backend does)."""
    spec = importlib.util.spec_from_file_location("moa_setup", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_tree(dst: Path) -> Path:
    """The files a clean checkout has that the build reads; no objects, caches or egg-info."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.bpf.o", "*.egg-info", "build")
    dst.mkdir()
    for name in TREE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    return dst


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(**env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass
class Venv:
    root: Path
    python: Path
    site: Path

    @classmethod
    def create(cls, root: Path) -> "Venv":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                       timeout=60)
        python = root / "bin" / "python"
        code = "import sysconfig; print(sysconfig.get_path('purelib'))"
        site = subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                              text=True).stdout.strip()
        return cls(root, python, Path(site))

    def pip_install(self, *args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        # The project venv's pip drives the fresh venv (--python), so the fresh one needs no pip.
        return run([sys.executable, "-m", "pip", "--python", self.python, "install", "--no-deps",
                    *args], cwd=cwd, **env)

    def borrow_dependencies(self) -> None:
        (self.site / "zz_moa_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"moa-pkg-{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(workdir: Path) -> Venv:
    """`pip install .` of a clean copy of the tree into a fresh venv."""
    src = copy_tree(workdir / "src")
    venv = Venv.create(workdir / "venv")
    done = venv.pip_install(src, cwd=workdir)
    assert done.returncode == 0, f"pip install . failed:\n{done.stdout}\n{done.stderr}"
    assert not list((src / "datapath" / "bpf").glob("*.bpf.o")), "the build wrote into the tree"
    venv.borrow_dependencies()
    return venv


def test_wheel_ships_every_bpf_object_but_the_selftest(installed: Venv) -> None:
    assert SHIPPED and "tc_classifier.bpf.o" in SHIPPED
    bpf = installed.site / "datapath" / "bpf"
    assert sorted(p.name for p in bpf.glob("*.bpf.o")) == SHIPPED
    for name in SHIPPED:
        elf = (bpf / name).read_bytes()
        assert elf[:4] == b"\x7fELF", name
        assert int.from_bytes(elf[18:20], "little") == EM_BPF, name  # e_machine
    # Sources and headers ship too (rebuilding, and the selftest for tests).
    assert (bpf / "abi.h").is_file() and (bpf / "selftest.bpf.c").is_file()
    # Recorded, so that pip uninstall removes them.
    record = next(installed.site.glob("moa-*.dist-info")).joinpath("RECORD").read_text()
    for name in SHIPPED:
        assert f"datapath/bpf/{name}," in record, name


def test_installed_moa_runs(installed: Venv, workdir: Path) -> None:
    moa = installed.root / "bin" / "moa"
    done = run([moa, "--help"], cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "doctor" in done.stdout
    done = run([moa, "serve", "--help"], cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout
    # The installed copy is the one imported, not the source tree.
    done = run([installed.python, "-c", "import moa_bus, datapath.bpf; "
                "print(moa_bus.__file__); print(datapath.bpf.object_path('tc_classifier'))"],
               cwd=workdir)
    assert done.returncode == 0, done.stderr
    paths = done.stdout.split()
    assert len(paths) == 2 and all(p.startswith(str(installed.site)) for p in paths), paths
    # every package of moa_bus is in the wheel (pyproject.toml lists them)
    done = run([installed.python, "-c", "import moa_bus.service.transport, moa_bus.cli.serve, "
                "moa_bus.lab.demo.story, moa_bus.lab.vm.e2e, moa_bus.lab.datapath_bench"],
               cwd=workdir)
    assert done.returncode == 0, done.stderr


def test_installed_objects_load_into_the_kernel(installed: Venv, workdir: Path) -> None:
    """Every shipped object passes the verifier from where the package put it (root, no pins)."""
    names = [n.removesuffix(".bpf.o") for n in SHIPPED]
    code = ("import sys\n"
            "from datapath.bpf import object_path\n"
            "from datapath.libbpf import BpfObject\n"
            "for name in sys.argv[1:]:\n"
            "    with BpfObject.open(object_path(name)) as obj:\n"
            "        print(name, len(obj.program_names()))\n")
    done = run([installed.python, "-c", code, *names], cwd=workdir)
    assert done.returncode == 0, done.stderr
    loaded = dict(line.split() for line in done.stdout.splitlines())
    assert sorted(loaded) == sorted(names)
    assert all(int(n) >= 1 for n in loaded.values()), loaded


def test_systemd_unit_is_valid_for_the_installed_moa(installed: Venv, workdir: Path) -> None:
    text = (REPO / "examples" / "moa.service").read_text()
    exec_start = "ExecStart=/opt/moa/bin/moa serve --config /etc/moa/moa.toml"
    assert exec_start in text.splitlines()
    for line in ("Type=simple", "Restart=always", "KillMode=mixed", "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    unit_dir = workdir / "units"
    unit_dir.mkdir(exist_ok=True)
    unit = unit_dir / "moa.service"
    unit.write_text(text.replace("/opt/moa/bin/moa", str(installed.root / "bin" / "moa")))
    # verify checks the syntax, the directives and that ExecStart's binary exists and runs.
    done = run(["systemd-analyze", "verify", unit], cwd=workdir, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_missing_clang_fails_the_install_naming_what_to_install(workdir: Path) -> None:
    src = copy_tree(workdir / "src-noclang")
    venv = Venv.create(workdir / "venv-noclang")
    done = venv.pip_install(src, cwd=workdir, CLANG="/nonexistent/clang")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "/nonexistent/clang not found" in out and "apt-get install clang libbpf-dev" in out, out
    assert not (venv.site / "datapath").exists()


def test_editable_install_leaves_the_objects_to_make_bpf(workdir: Path) -> None:
    """`pip install -e .` (make setup) compiles nothing, so it needs no clang at all."""
    src = copy_tree(workdir / "src-editable")
    venv = Venv.create(workdir / "venv-editable")
    done = venv.pip_install("-e", src, cwd=workdir, CLANG="/nonexistent/clang")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert not list(src.rglob("*.bpf.o")) and not list(venv.site.rglob("*.bpf.o"))
    venv.borrow_dependencies()
    done = run([venv.python, "-c", "import datapath.bpf; print(datapath.bpf.BPF_DIR)"], cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(src / "datapath" / "bpf")  # runs from the tree


def test_compile_error_names_the_file_and_shows_clang(tmp_path: Path) -> None:
    setup_mod = load_setup_module()
    src_dir = tmp_path / "bpf"
    src_dir.mkdir()
    shutil.copy2(BPF_SRC / "probe.bpf.c", src_dir / "probe.bpf.c")
    shutil.copy2(BPF_SRC / "selftest.bpf.c", src_dir / "selftest.bpf.c")
    objects = setup_mod.compile_bpf_objects(src_dir, tmp_path / "out")
    assert [p.name for p in objects] == ["probe.bpf.o"]  # selftest is test-only
    (src_dir / "zz_broken.bpf.c").write_text("int broken(\n")
    with pytest.raises(setup_mod.CompileError) as err:
        setup_mod.compile_bpf_objects(src_dir, tmp_path / "out")
    msg = str(err.value)
    assert "compiling zz_broken.bpf.c failed" in msg and "error:" in msg and "libbpf-dev" in msg


def test_make_bpf_compiles_with_build_py_under_the_system_python(tmp_path: Path) -> None:
    """`make bpf` may run before the venv exists: it runs datapath/bpf/build.py (the one compile
    command, which setup.py and tests/fixtures/bpf.py use too) with the system python3, so that
    file needs the standard library only (-I: no venv, no user site, no sibling modules)."""
    out = tmp_path / "probe.bpf.o"
    done = run(["/usr/bin/python3", "-I", BPF_SRC / "build.py", BPF_SRC / "probe.bpf.c", out],
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int.from_bytes(out.read_bytes()[18:20], "little") == EM_BPF
    done = run(["make", "-n", "-B", "datapath/bpf/probe.bpf.o"], cwd=REPO)  # -n: prints only
    assert done.returncode == 0, done.stderr
    assert "python3 datapath/bpf/build.py datapath/bpf/probe.bpf.c datapath/bpf/probe.bpf.o" \
        in done.stdout, done.stdout
