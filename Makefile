# make demo : generated corpus -> curate -> tokenizer -> tokenize -> LLM -> speech (see README)
# make test : the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out

# Keep every run offline and quiet about telemetry.
export WANDB_MODE ?= offline
export PYANNOTE_METRICS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# Tiny models on few cores: OpenMP hand-offs cost more than the matmuls save.
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test clean-demo

setup:
	@VENV=$(VENV) bash scripts/setup_venv.sh

test: setup
	$(PY) -m pytest tests --durations=15

demo: setup
	@DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

clean-demo:
	rm -rf $(DEMO_DIR)
