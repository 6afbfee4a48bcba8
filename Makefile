# Two entry points do all the set-up on a fresh machine:
#   make demo   - the main job
#   make test   - the test suite
# Both create .venv and install the project into it on first use.

PY := .venv/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-all clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	touch $@

demo: install
	$(PY) -m experiments.cli demo

test: install
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow" -q

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q

clean:
	rm -rf .venv
