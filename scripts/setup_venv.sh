#!/usr/bin/env bash
# Create .venv with everything the project needs (idempotent: a complete
# .venv is left alone). CPU-only machines get the CPU builds of torch & co.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# Debian packages: espeak-ng/sox for the synthetic corpus, ffmpeg for decoding
# odd formats, chromium + its driver for the browser test of the server page, slurm-wlm + munge
# for the one-node Slurm cluster the cluster tests start (slurm/local/).
need=()
for cmd in espeak-ng sox ffmpeg; do command -v "$cmd" >/dev/null || need+=("$cmd"); done
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
PATH=$PATH:/usr/sbin command -v slurmctld >/dev/null || need+=(slurm-wlm)
PATH=$PATH:/usr/sbin command -v munged >/dev/null || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "[setup] warning: missing ${need[*]}; install them (e.g. apt-get install ${need[*]})" >&2
  fi
fi

# .complete holds a digest of what decides the installed set: a venv made before a dependency was
# added (pyproject.toml, the CPU constraints, this script) is brought up to date, not left as it is.
want=$(cat pyproject.toml constraints/cpu.txt scripts/setup_venv.sh | sha1sum | cut -c1-40)
if [ -f "$VENV/.complete" ] && [ "$(cat "$VENV/.complete")" = "$want" ]; then exit 0; fi
if [ -x "$VENV/bin/python" ]; then
  echo "[setup] updating $VENV (its dependencies changed)"
else
  echo "[setup] creating $VENV (about 2 minutes)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU=1
  "$PIP" install -q torch
  "$PIP" install -q -e ".[dev]"
else
  GPU=0
  "$PIP" install -q torch==2.13.0
  "$PIP" install -q -c constraints/cpu.txt -e ".[dev]"
fi
"$PIP" install -q --no-deps resemblyzer==0.1.4
if [ "$GPU" = 0 ]; then
  # PyPI's torchaudio is a CUDA build whose C++ library cannot load beside the
  # CPU torch; without it torchaudio uses its pure-Python paths (what pyannote
  # and peft need).
  rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
fi
"$VENV/bin/python" -c "import torch, lightning, hydra, webdataset, resemblyzer, pyannote.audio, peft, bitsandbytes, silero_vad, pocketsphinx, speechmos, faster_whisper" \
  && echo "$want" > "$VENV/.complete"
echo "[setup] $VENV ready"
