#!/usr/bin/env bash
# Run on a lent GPU machine (device tool) from the repository root:
#   bash benchmarks/gpu_check.sh
# Full-size training throughput (4-layer full-width subset, extrapolated), inference RTF
# at batch 1 and 8 with random weights, and peak memory (torch.cuda.max_memory_allocated).
# The GPU image has torch/transformers/tokenizers/safetensors/yaml; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/gpu_bench.py --size full "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.md"
