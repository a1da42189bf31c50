# visionpipes: the two set-up commands.
#   make demo   set up .venv (first time, or when a pyproject changed), then run the main job
#   make test   set up .venv, then ruff and the whole test suite
# FAISS=gpu installs faiss-gpu instead of faiss-cpu (they overwrite each other: choose one).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FAISS  ?= cpu
STAMP  := $(VENV)/.installed-$(FAISS)
SETUP_INPUTS := pyproject.toml $(wildcard packages/*/pyproject.toml)

.PHONY: setup demo test lint bench clean
.DEFAULT_GOAL := demo

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . -e 'packages/core[nas,ray]' -e 'packages/medical[bench]' -e packages/driving -e 'packages/retail[$(FAISS),milvus]'
	@# ultralytics pulls opencv-python beside opencv-python-headless; both write cv2/.
	@# Keep the headless build only, installed last so that its cv2/ is the one on disk.
	$(BIN)/python -m pip uninstall -q -y opencv-python || true
	$(BIN)/python -m pip install -q --force-reinstall --no-deps opencv-python-headless
	@rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/vp-core demo

# Import contracts (import-linter): one file per package under importlinter/, plus the workspace's.
CONTRACTS := $(wildcard importlinter/*.ini)

lint: $(STAMP)
	$(BIN)/ruff check .
	@for c in $(CONTRACTS); do $(BIN)/lint-imports --no-cache $$c || exit 1; done

# Two pytest workers (pytest-xdist), each taking whole test files (module fixtures built once):
# 5m40s instead of ~9 min on 2 cores. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/core_blocks.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
