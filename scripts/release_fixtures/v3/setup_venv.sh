#!/usr/bin/env bash
# Throwaway venv holding the Higgs TTS 3 REFERENCE code: PyPI sglang-omni==0.1.9 (the owners'
# serving code; its Higgs model, loader, prompt builder and sampler) and, as an independent
# cross-check, mlx-audio==0.6.2 with mlx[cpu]==0.32.4. Used only to write the fixtures under
# tests/fixtures/release_v3/; never a runtime dependency of the project.
#
#   bash scripts/release_fixtures/v3/setup_venv.sh      # V3_VENV=/tmp/v3_venv by default
#
# Idempotent: a venv that already imports everything is left alone (delete it to rebuild).
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV=${V3_VENV:-/tmp/v3_venv}
# The import check is reference.py's own (__main__): sglang-omni's Higgs modules with sglang
# stubbed, the transformers codec class, mlx-audio's model and codec package.
check() { "$VENV/bin/python" scripts/release_fixtures/v3/reference.py; }
if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
  echo "[v3_venv] $VENV already complete: nothing to do"; exit 0
fi
PIP="$VENV/bin/pip"

echo "[v3_venv] creating $VENV"
"${PYTHON:-python3}" -m venv "$VENV"
# torch: the CPU wheel from the local wheel folder (pip's find-links), as scripts/release_fixtures/
# setup_venv.sh and the project's .venv get it. sglang-omni pins torch 2.14.1 (CUDA); its Higgs
# modules use nothing newer than 2.13, so it is installed --no-deps below.
echo "[v3_venv] pip install torch==2.13.0 (CPU), transformers==5.19.0 and the pure deps"
# transformers 5.19.0: sglang-omni's hf_config / codec facade use its Qwen3Config and
# HiggsAudioV2TokenizerModel. torchaudio: HiggsAudioV2TokenizerModel requires it to import.
# scipy: mlx-audio's codec package imports its resampler (scipy.signal) at package import.
"$PIP" install -q torch==2.13.0 "transformers==5.19.0" safetensors numpy scipy "torchaudio==2.11.0"
# PyPI's torchaudio is a CUDA build whose C++ library cannot load beside the CPU torch; the
# Python side imports without it (nothing here calls its kernels).
rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
echo "[v3_venv] pip install mlx[cpu]==0.32.4; --no-deps sglang-omni==0.1.9 mlx-audio==0.6.2"
"$PIP" install -q "mlx[cpu]==0.32.4"
# --no-deps: sglang-omni pulls sglang/CUDA torch; mlx-audio pulls audio I/O (sounddevice, librosa,
# ...) that its higgs_audio_v3 model never imports.
"$PIP" install -q --no-deps "sglang-omni==0.1.9" "mlx-audio==0.6.2"
check
echo "[v3_venv] ready: $VENV/bin/python"
