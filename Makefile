# The two commands of the README: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (override with make PYTHON=python3)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,faces,lint,ray]'
	# The default generator's weights: only gan_face_generate/weights.tar is read, so skip its
	# declared dependencies (wandb, torchvision).
	$(PY) -m pip install --quiet --no-deps gan-face-generate
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clusterguide fit --generator digiface-dcgan --layer block1 --clusters 4 --samples 20000 --seed 0 --out runs/demo --force
	$(VENV)/bin/clusterguide grid runs/demo --out runs/demo/overview.png --per-cluster 8
	@echo "open runs/demo/overview.png; metrics in runs/demo/metrics.json"

test: $(STAMP)
	$(PY) -m pytest -q

# The quick loop while editing: skips tests marked slow (real weights, Ray, training) and browser.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

# ruff (lint + format) and mypy on src/, with the versions pinned in constraints.txt.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_mapping.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
