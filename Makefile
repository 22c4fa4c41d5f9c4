# The two Quick start commands of the README: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test torture torture-long install install-test bench bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q .

# The tests import tasksd from this tree, so the launcher's C child (isolation/_spawn.c) is built here too.
install-test: $(BIN)/python
	$(BIN)/pip install -q '.[test]'
	$(BIN)/python setup.py -q build_ext --inplace

# The main job: tasksd in the foreground on the bundled examples (raw_exec enabled by contrib/examples.hcl).
run: install
	$(BIN)/tasksctl validate manifests/examples manifests/examples/yaml
	$(BIN)/tasksd --config contrib/examples-config.hcl --tasks-dir manifests/examples

# The console scripts the tests spawn (tasksd, tasksctl) are the installed ones, so packaging mistakes fail here.
test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The reliability suite alone: the short version (also part of `make test`), and the long one (200 manifests and
# 50 kill -9 of tasksd, 1000 fuzzed manifests through the daemon, a 30-minute soak): about 40 minutes.
torture: install-test
	$(BIN)/python -m pytest -s tests/torture $(PYTEST_ARGS)

torture-long: install-test
	TASKSD_TORTURE_LONG=1 $(BIN)/python -m pytest -s tests/torture $(PYTEST_ARGS)

# Benchmarks need root; peers.py installs supervisor/runit if missing and takes a few minutes more.
bench: install
	$(BIN)/python bench/spawn.py --n 100
	$(BIN)/python bench/chroot_scaling.py --n 50
	$(BIN)/python bench/converge.py --n 100,1000 --idle 30 --drops 20

bench-peers: install
	$(BIN)/python bench/peers.py --n 100,1000 --idle 10

clean:
	rm -rf $(VENV) build *.egg-info isolation/*.so
