# `make demo` and `make test` build .venv from nothing when it is missing.
# Override the interpreter with `make PYTHON=/path/to/python3.12 ...`.
PYTHON ?= $(shell scripts/find_python.sh)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.12 found; use make PYTHON=..."; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) scripts/demo.py

test: $(STAMP)
	$(VPY) -m pytest -q tests

bench: $(STAMP)
	$(VPY) bench/langevin.py

clean:
	rm -rf $(VENV) runs
