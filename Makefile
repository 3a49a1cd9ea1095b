# fedweave — set-up, quick start and tests. Every target works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
# torch is installed first and pinned, so that nothing pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-slow test-vision bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# the quickstart's needs only: torch, then fedweave without extras
$(BASE_STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e . "$(TORCH_SPEC)"
	touch $(BASE_STAMP)

# everything the test suite exercises (the dev extras: Ray, Flower, MLflow, ...)
$(STAMP): $(BASE_STAMP)
	$(PIP) install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

demo: $(BASE_STAMP)
	$(VENV)/bin/fedweave run --out runs/quickstart --overwrite
	@echo "fedweave is installed in .venv: run 'source .venv/bin/activate' to put it on your PATH."

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# torchvision's models (model.name: torchvision:<name>) in a separate environment: no
# torchvision build imports beside the pinned CPU torch here (docs/dependencies.md), so
# this pairs a torch with the torchvision built for it (≈ 5.5 GB, a CUDA build that also
# runs on the CPU) and runs the real-model tests, torchvision's included.
VISION_VENV := .venv-vision
VISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
test-vision:
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install --quiet $(VISION_SPEC)
	$(VISION_VENV)/bin/python -m pip install --quiet -e ".[dev]" $(VISION_SPEC)
	$(VISION_VENV)/bin/python -m pytest -q -rs tests/test_real_models.py

bench: $(STAMP)
	$(PY) bench/overhead.py

clean:
	rm -rf runs .pytest_cache
