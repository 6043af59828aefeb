#!/usr/bin/env bash
# Throwaway venv holding the ORIGINAL Higgs Audio v2 code (PyPI boson-multimodal==0.1.1),
# used only to write the parity fixtures under tests/fixtures/release/. Never a runtime
# dependency of the project: nothing in higgs_train/, inference/ or tests/ imports it.
#
#   bash scripts/release_fixtures/setup_venv.sh      # BOSON_VENV=/tmp/boson_venv by default
#
# Idempotent: a venv that already imports everything is left alone (delete it to rebuild).
set -euo pipefail
VENV=${BOSON_VENV:-/tmp/boson_venv}
PY=${PYTHON:-python3}
PIP="$VENV/bin/pip"

check() {
  "$VENV/bin/python" - <<'PY'
import torch, transformers, librosa, soundfile, safetensors, einops, dacite, vector_quantize_pytorch
import boson_multimodal.audio_processing.higgs_audio_tokenizer as t  # needs dac + audiotools
import boson_multimodal.model.higgs_audio as m
print(f"[boson_venv] torch {torch.__version__}, transformers {transformers.__version__}, "
      f"librosa {librosa.__version__}; boson_multimodal tokenizer + HiggsAudioModel import")
PY
}

if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
  echo "[boson_venv] $VENV already complete: nothing to do"; exit 0
fi

echo "[boson_venv] creating $VENV"
"$PY" -m venv "$VENV"
# torch: the CPU wheel from the local wheel folder (pip's find-links), same as the project's .venv.
echo "[boson_venv] pip install torch==2.13.0 (CPU)"
"$PIP" install -q torch==2.13.0
# transformers inside the range boson-multimodal 0.1.1 pins (>=4.45.1,<4.47).
echo "[boson_venv] pip install transformers>=4.45.1,<4.47 and the tokenizer/LLM modules' imports"
# librosa 0.11.0: the release at the time of boson-multimodal 0.1.1 (its resample default is soxr_hq).
# omegaconf + packaging: imported at module level by quantization/ddp_utils.py.
# tqdm: descriptaudiocodec/dac/model/base.py. torchaudio: torchaudio.functional.resample (semantic path).
# pandas: dataset/chatml_dataset.py (the collator fixture, scripts/release_fixtures/collator.py).
"$PIP" install -q "transformers>=4.45.1,<4.47" "librosa==0.11.0" soundfile safetensors einops dacite \
  vector-quantize-pytorch omegaconf packaging tqdm pandas "torchaudio==2.11.0"
# PyPI's torchaudio is a CUDA build whose C++ library cannot load beside the CPU torch;
# without it torchaudio.functional.resample (pure torch) still works.
rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
echo "[boson_venv] pip install --no-deps boson-multimodal==0.1.1"
WHEEL=${BOSON_WHEEL:-/tmp/boson/boson_multimodal-0.1.1-py3-none-any.whl}
if [ -f "$WHEEL" ]; then "$PIP" install -q --no-deps "$WHEEL"; else "$PIP" install -q --no-deps boson-multimodal==0.1.1; fi

SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# `dac`: the vendored DAC (descriptaudiocodec/dac/model/dac.py) imports `dac.nn.layers`;
# boson ships that package itself, so a .pth puts its folder on sys.path (no descript-audio-codec).
echo "$SITE/boson_multimodal/audio_processing/descriptaudiocodec" > "$SITE/boson_vendored_dac.pth"
echo "[boson_venv] dac -> boson's vendored descriptaudiocodec (via boson_vendored_dac.pth)"
# `audiotools`: dac.py and base.py import AudioSignal and audiotools.ml.BaseModel only for the
# full DAC class and its file I/O mixin, which the Higgs tokenizer never builds (it uses
# Encoder/Decoder only). descript-audiotools pulls in ~20 packages (tensorboard, matplotlib, ...),
# so a minimal stub stands in: AudioSignal is an unused placeholder, BaseModel an nn.Module.
mkdir -p "$SITE/audiotools/ml"
cat > "$SITE/audiotools/__init__.py" <<'PY'
"""STUB written by scripts/release_fixtures/setup_venv.sh (not descript-audiotools)."""
class AudioSignal:  # referenced only by the unused DAC/CodecMixin file I/O
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("audiotools stub: AudioSignal is not available in the fixture venv")
PY
cat > "$SITE/audiotools/ml/__init__.py" <<'PY'
"""STUB written by scripts/release_fixtures/setup_venv.sh: the DAC base class, a plain nn.Module."""
from torch import nn
class BaseModel(nn.Module):
    pass
PY
echo "[boson_venv] audiotools -> minimal stub (AudioSignal placeholder, ml.BaseModel = nn.Module)"
check
echo "[boson_venv] ready: $VENV/bin/python"
