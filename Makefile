# moa: `make demo` and `make test` do all of their own set-up on a fresh Debian 12 machine (root).
VENV    ?= .venv
PY      := $(VENV)/bin/python
MOA     := $(VENV)/bin/moa
CLANG   ?= clang
BPF_DIR := datapath/bpf
BPF_SRC := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJ := $(BPF_SRC:.bpf.c=.bpf.o)
BPF_HDR := $(wildcard $(BPF_DIR)/*.h)
# The compile command (clang's flags) is defined once, in build.py, shared with setup.py and the
# tests; the system python3 runs it, so `make bpf` needs no venv.
BPF_BUILD := $(BPF_DIR)/build.py

.PHONY: all setup bpf test test-host test-vm demo schemas clean distclean

all: bpf

# System packages (apt), bpffs, then a venv with moa and its test dependencies.
setup: $(VENV)/.installed
	@bash scripts/setup.sh

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bpf: $(BPF_OBJ)

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(BPF_HDR) $(BPF_BUILD)
	CLANG='$(CLANG)' python3 $(BPF_BUILD) $< $@

schemas: setup
	$(PY) -m schemas.generate

# Every tier; a test that cannot run fails (MOA_REQUIRE_ALL=1), it never skips.
test: setup bpf
	MOA_REQUIRE_ALL=1 $(PY) -m pytest -q tests

test-host: setup bpf
	MOA_REQUIRE_ALL=1 $(PY) -m pytest -q tests -m 'not vm'

test-vm: setup bpf
	MOA_REQUIRE_ALL=1 $(PY) -m pytest -q tests -m vm

demo: setup bpf
	$(MOA) demo

clean:
	rm -f $(BPF_DIR)/*.bpf.o

distclean: clean
	rm -rf $(VENV)
