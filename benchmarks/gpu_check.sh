#!/usr/bin/env bash
# Run on a lent GPU machine (device tool) from the repository root:
#   bash benchmarks/gpu_check.sh
# Full-size training throughput (4-layer full-width subset, extrapolated), inference RTF
# at batch 1 and 8 with random weights, and peak memory (torch.cuda.max_memory_allocated); then a
# release-shaped random checkpoint through the converter and peak GPU memory at 8k context; then
# our engine against the transformers port on the same release-shaped random weights, with and
# without CUDA graphs; then peak memory of bf16 / int8 / nf4 inference and LoRA steps at full size.
# The GPU image has torch/transformers/tokenizers/safetensors/yaml; nothing is installed. Every
# benchmark reads its key=value command line with omegaconf (higgs_train/cli.py): where the image
# lacks it, carry it (pip install --target, PYTHONPATH) as for release_memory's packages below.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp}
failed=()
# each part runs whatever happens to the others (a device session is short: one failure must not
# cost the rest); the exit status says which failed
part() {  # part NAME COMMAND...
  local name=$1; shift
  echo "== $name"
  "$@" 2>&1 | tee "$OUT/$name.md"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "== $name FAILED (rc $rc)"; failed+=("$name"); }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
part gpu_check python3 -m benchmarks.gpu_bench size=full "$@"
# The release's shape through the converter path: a random bf16 checkpoint in the original layout
# (11.5 GB on disk, twice during the conversion), converted in a fresh process (time, peak RSS),
# loaded onto the GPU, then peak GPU memory with an 8k-slot KV cache after an 8k prefill.
# CPU smoke test: python -m benchmarks.gpu_release size=tiny device=cpu context=256
part gpu_release python3 -m benchmarks.gpu_release context=8192
# Our engine against the transformers port's generate() on the same random release-shaped weights
# bf16, batch 1/4/8, greedy, 200 frames forced; ours eager and with its decode steps
# replayed from CUDA graphs (-graphs), the port eager. CPU version: python -m benchmarks.inference_vs_port
part inference_vs_port python3 -m benchmarks.inference_vs_port device=cuda size=release \
  rows=[bf16-b1-t1,bf16-b1-t1-graphs,bf16-b4-t1,bf16-b4-t1-graphs,bf16-b8-t1,bf16-b8-t1-graphs]
# The released model on a 16 GB card (README.md, "The released model on a 16 GB card"; measured):
# the release's full shape (28 layers),
# bf16 / int8 / nf4, peak GPU memory (torch.cuda.max_memory_allocated / max_memory_reserved), tokens/s
# and real-time factor: inference (8k prompt + 100 frames, full-size audio tokenizer loaded) and one LoRA
# step (configs/recipes/finetune.yaml's targets and rank) at 512 / 1024 / 2048. int8 / nf4 need bitsandbytes and
# the LoRA step peft + lightning + omegaconf in the image (carry a wheelhouse: pip install --no-index
# --find-links); a case whose package is missing is listed FAILED with its import error.
# CPU version (2 and 4 layers, extrapolated): python -m benchmarks.release_memory
part release_memory python3 -m benchmarks.release_memory device=cuda layers=[28] seqs=[512,1024,2048] full=skip
[ ${#failed[@]} = 0 ] || { echo "failed parts: ${failed[*]}"; exit 1; }
