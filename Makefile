# `make demo` and `make test` build .venv from nothing when it is missing.
# Override the interpreter with `make PYTHON=/path/to/python3.12 ...`.
PYTHON ?= $(shell scripts/find_python.sh)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench docs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.12 found; use make PYTHON=..."; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) scripts/demo.py

# make test: everything but the benchmarks' smoke runs (under 10 minutes on 2 cores);
# make test-all (what CI runs): everything.
test: $(STAMP)
	$(VPY) -m pytest -q tests -m "not bench"

test-all: $(STAMP)
	$(VPY) -m pytest -q tests

# The site, into site/: the tutorials run at smoke size for their output and figures
# (scripts/build_docs.py --execute --full renders the full sizes), mkdocs in strict mode.
docs: $(STAMP)
	$(VPY) scripts/build_docs.py --execute

bench: $(STAMP)
	$(VPY) bench/langevin.py

clean:
	rm -rf $(VENV) runs site docs/tutorials docs/changelog.md dist build
