# The two README commands: `make demo` (the main job end to end) and `make test`.
# Both create .venv and install the project into it first (torch pinned by
# constraints.txt to the CPU build 2.13.0 on machines like ours).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline machines: an existing copy of the corpora (see README, "Data").
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(NMT_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/multi30k),)
export NMT_DATA_DIR := $(SHARED_DATA)
endif
endif

# The demo's recipe and budget (any train.py overrides): 12 minutes of training
# (conf/experiment/multi30k_en_de_demo.yaml).
DEMO_ARGS ?= experiment=multi30k_en_de_demo
DEMO_DIR ?= runs/demo
# The captioning demo (procedural shapes, docs/captioning.md): its training budget.
CAPTION_ARGS ?= trainer.max_time=00:00:12:00
CAPTION_DIR ?= runs/demo-caption

.PHONY: install demo demo-caption test test-fast lint typecheck layers browser notebook bench-data bench-train bench-translate

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: install
	$(PY) -m nmt.cli prepare
	rm -rf $(DEMO_DIR)
	$(PY) train.py run_dir=$(DEMO_DIR) test_after_training=false $(DEMO_ARGS)
	@echo "dev BLEU (greedy): $$($(PY) -c "import json; print(round(json.load(open('$(DEMO_DIR)/metrics.json'))['val/bleu'], 2))")"
	$(PY) evaluate.py checkpoint=$$(ls $(DEMO_DIR)/checkpoints/best-*.ckpt | head -n 1) \
		split=test_2016_flickr decoding.beam_size=5 output_dir=$(DEMO_DIR)/evaluation progress=false

demo-caption: install
	rm -rf $(CAPTION_DIR)
	$(PY) train.py task=caption data=shapes run_dir=$(CAPTION_DIR) test_after_training=false $(CAPTION_ARGS)
	$(PY) caption.py checkpoint=$$(ls $(CAPTION_DIR)/checkpoints/best-*.ckpt | head -n 1) \
		images=[$$(ls data/shapes/generated/images/test_0000*.png | paste -sd, -)] \
		attention_plots=$(CAPTION_DIR)/attention progress=false
	$(PY) evaluate.py checkpoint=$$(ls $(CAPTION_DIR)/checkpoints/best-*.ckpt | head -n 1) \
		data=shapes split=test decoding.beam_size=3 decoding.max_len=30 \
		output_dir=$(CAPTION_DIR)/evaluation progress=false

lint: install
	$(PY) -m ruff check .

typecheck: install
	$(PY) -m mypy

# The layers contract and no import circle (pyproject.toml, [tool.importlinter]).
layers: install
	$(VENV)/bin/lint-imports

# Debian's Chromium for the demo page's browser test (tests/test_demo_page.py), which
# fails instead of skipping under NMT_REQUIRE_BROWSER=1.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# Two pytest-xdist workers, each test module on one of them (a module's fixtures, such as a
# trained toy model, are built once), in collection order: the slow ones first
# (tests/conftest.py, where each worker is also held to one thread).
XDIST := -n 2 --dist loadscope --no-loadscope-reorder

test: lint typecheck layers browser
	NMT_REQUIRE_BROWSER=1 $(PY) -m pytest -m "slow or not slow" $(XDIST) --durations=10

test-fast: install
	$(PY) -m pytest $(XDIST)

# The tour with its outputs (notebooks/tour.ipynb) from its text, notebooks/tour.py: after
# editing the text (tests/test_notebook.py checks that the two have the same cells).
notebook: install
	$(PY) notebooks/render.py

bench-data: install
	$(PY) bench/data.py

bench-train: install
	$(PY) bench/train.py

bench-translate: install
	$(PY) bench/translate.py
