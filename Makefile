# clipocr — every job is a `clipocr` sub-command; these targets wrap them with sensible defaults.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# cache-teacher / train / eval variables (override on the command line)
SHARDS          ?= data/shards
STORE           ?= data/teacher_store
RUN             ?= runs/student
CLIP_MODEL      ?= ViT-B-16
CLIP_PRETRAINED ?=
DEVICE          ?= cuda
PRESET          ?= small
EVAL_DATA       ?= data/evaluation
DEMO_SCALE      ?= 1
# Real word crops to report beside the rendered test sets, where present (CI has them, users may not).
REAL_DATA       ?= $(wildcard ../shared/data/real-train)

.PHONY: setup test lint demo cache-teacher train eval peers clean

## setup: create .venv and install clipocr (editable) with its dev extra; idempotent
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## test: lint + the test suite (CPU only)
test: setup
	$(BIN)/ruff check clipocr tests bench
	$(BIN)/ruff format --check clipocr tests bench
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check --fix clipocr tests bench
	$(BIN)/ruff format clipocr tests bench

## demo: the whole pipeline end to end on rendered words and the bundled teacher (CPU, offline)
demo: setup
	$(BIN)/clipocr demo --scale $(DEMO_SCALE) $(if $(REAL_DATA),--real-data $(REAL_DATA)) \
		$(if $(CLIP_PRETRAINED),--clip-model $(CLIP_MODEL) --clip-pretrained $(CLIP_PRETRAINED))

## cache-teacher: run the frozen CLIP once over SHARDS and write per-stage features to STORE
cache-teacher: setup
	$(BIN)/clipocr cache-teacher --shards $(SHARDS) --out $(STORE) --clip-model $(CLIP_MODEL) \
		$(if $(CLIP_PRETRAINED),--clip-pretrained $(CLIP_PRETRAINED)) --device $(DEVICE)

## train: distil the student from the cached teacher targets (CLIP is not loaded)
train: setup
	$(BIN)/clipocr train --shards $(SHARDS) --teacher-store $(STORE) --out $(RUN) --preset $(PRESET)

## eval: the standard benchmark protocol on every LMDB under EVAL_DATA
eval: setup
	$(BIN)/clipocr-eval $(RUN)/student.safetensors --data $(EVAL_DATA)

## peers: install the optional EasyOCR/Tesseract comparison extra
peers: setup
	$(BIN)/python -m pip install -q -e '.[dev,peers]'
	@command -v tesseract >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-eng; \
	else echo "note: Tesseract needs: sudo apt-get install tesseract-ocr tesseract-ocr-eng (bench/peers.py skips it until then)"; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
