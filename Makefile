# The two set-up commands of the README: `make demo` and `make test`. Both create .venv and install into it
# when needed (Python >= 3.10; CPU is enough).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

# The demo job on the embedded dataset (override for a quicker run, e.g. `make demo DEMO_SET="train.iterations=50"`).
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
DEMO_TRAIN ?= 240
DEMO_VAL ?= 60
DEMO_SIZE ?= 96x128
DEMO_SET ?=

.PHONY: demo test install lint format typecheck architecture clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,demo,export,video]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pamm data synth --out $(DEMO_DATA) --layout nyud --train $(DEMO_TRAIN) --val $(DEMO_VAL) \
		--size $(DEMO_SIZE) --seed 0 --overwrite --preview $(DEMO_RUN)/dataset-preview.png
	$(PY) -m pamm train --config demo --out $(DEMO_RUN) --set data.root=$(DEMO_DATA)/NYUDv2 \
		$(foreach s,$(DEMO_SET),--set $(s)) $(if $(wildcard $(DEMO_RUN)/checkpoints/step-*),--resume,)
	$(PY) -m pamm evaluate --run $(DEMO_RUN) --baselines
	$(PY) -m pamm predict --checkpoint $(DEMO_RUN) --out $(DEMO_RUN)/predictions --overwrite --quiet \
		$$(ls $(DEMO_DATA)/NYUDv2/images/*.png | sort | head -n 4)
	$(PY) -m pamm predict --checkpoint $(DEMO_RUN) --out $(DEMO_RUN)/photos --overwrite --quiet \
		"$$($(PY) -c 'import pathlib, sklearn.datasets as d; print(pathlib.Path(d.__file__).parent / "images")')"
	@echo "demo finished: $(DEMO_RUN)/metrics.json, $(DEMO_RUN)/predictions/ and photos/, TensorBoard:" \
		"tensorboard --logdir $(DEMO_RUN). To have pamm on PATH: . $(VENV)/bin/activate"

test: install
	$(PY) -m pytest -q -n 2

# What CI checks besides the tests (CONTRIBUTING.md): lint and formatting, then the types of the package.
lint: install
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/ruff format --check

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks docs
	$(VENV)/bin/ruff format

typecheck: install
	$(VENV)/bin/mypy

# Re-draw docs/architecture.md from the package's imports (tests/test_architecture.py checks it is current).
architecture: install
	$(PY) docs/architecture.py

clean:
	rm -rf $(VENV) runs data/demo .pytest_cache .mypy_cache .ruff_cache
