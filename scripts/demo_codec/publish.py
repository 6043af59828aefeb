"""Measure a tokenizer training run's codec as tests/test_codec_decodes.py does, and publish it as
the demo's starting codec (pretrained/demo_codec: config.json, fp16 model.safetensors, figures.json).

    python scripts/demo_codec/publish.py src=RUN_DIR/checkpoints/step-N.ckpt [out=pretrained/demo_codec]
    python scripts/demo_codec/publish.py src=EXPORT_DIR measure_only=true

src: a training checkpoint of `python -m higgs_train.train task=tokenizer` (its model weights and
codebooks) or an export directory. Prints, per espeak-ng voice of the synthetic corpus and two it
never heard, the median F0 of original and reconstruction and the error in semitones, and the
worst cross-voice / random-codes correlations; the bar is tests/test_codec_decodes.py's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from data_pipeline.espeak import PROBE_SECONDS, PROBE_TEXT, UNSEEN_VOICES, VOICES, tts
from higgs_train.files import write_text_atomic
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.tokenizer import checks


def load(src: Path) -> AudioTokenizer:
    if src.is_dir():
        return AudioTokenizer.from_pretrained(src)
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    model = AudioTokenizer(TokenizerConfig.from_dict(ckpt["tokenizer_config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def measure(tok: AudioTokenizer) -> dict:
    speech = {v.name: (0.8 * tts(PROBE_TEXT, v))[:int(PROBE_SECONDS * 24000)] for v in VOICES + UNSEEN_VOICES}
    with torch.no_grad():
        return checks.report(tok, speech)


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    src, out = Path(args["src"]), Path(args.get("out", "pretrained/demo_codec"))
    torch.set_num_threads(int(args.get("threads", 1)))
    tok = load(src)
    r = measure(tok)
    voices = {k: v for k, v in r.items() if isinstance(v, dict)}
    print("| voice | F0 original (Hz) | F0 reconstruction (Hz) | error (semitones) | periodic share |")
    print("|---|---|---|---|---|")
    for k, v in voices.items():
        print(f"| {k} | {v['f0']:.0f} | {v['f0_recon']:.0f} | {v['semitones']:.1f} | {v['periodic']:.3f} |")
    print(f"worst cross-voice correlation {r['cross_corr']:.3f} (bar < 0.5); random codes {r['random_codes_corr']:.3f} "
          f"(bar < 0.5); worst F0 error {max(v['semitones'] for v in voices.values()):.1f} semitones (bar <= 2)")
    if args.get("measure_only", "false") == "true":
        return
    tok.half()   # a few MB in the repository; loading casts back to float32
    tok.save_pretrained(out)
    figures = {"src": str(src), "cross_corr": r["cross_corr"], "random_codes_corr": r["random_codes_corr"],
               "voices": voices}
    write_text_atomic(out / "figures.json", json.dumps(figures, indent=1))
    print(f"published to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
