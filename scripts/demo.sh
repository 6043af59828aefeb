#!/usr/bin/env bash
# The main job on a small generated corpus, stage by stage. Each stage resumes:
# rerunning `make demo` skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=${DEMO_DIR:-demo_out}
mkdir -p "$D"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
t0=$(date +%s)

step "1/2 generate a synthetic multi-speaker corpus (espeak-ng voices) -> $D/raw"
[ -f "$D/raw/.done" ] || { "$PY" -m data_pipeline.synth out_dir="$D/raw" preset=demo && touch "$D/raw/.done"; }

step "2/2 curate: VAD, diarization, quality, transcripts, filters -> $D/corpus"
"$PY" -m data_pipeline input_dir="$D/raw" output_dir="$D/corpus"

printf '\ndemo finished in %ss. Open %s/corpus/report/index.html\n' $(( $(date +%s) - t0 )) "$D"
