"""Evaluation harness cost: each scorer per second of audio, and the whole harness on a model.

    python -m benchmarks.evaluate [items=6] [model=LLM_EXPORT tokenizer=AUDIO_TOKENIZER_EXPORT]

Scorer rows: espeak-ng sentences (voices v0-v3, 24 kHz), each scorer called once per clip as the
harness calls it; x RT = scorer seconds / audio seconds (lower is cheaper). The first call of each
scorer (model load, decoder set-up) is timed apart as "load". Harness row: the default config
(greedy, all scorers) on the given exports, or on tiny random ones (higgs_train/testing/tiny_exports.py) when none
are given; rtf there is synthesis only, as the harness reports it.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data_pipeline.synth import SENTENCES, VOICES, tts
from higgs_train.audio import save_audio
from higgs_train.cli import parse
from higgs_train.config import package_configs
from higgs_train.evaluate import EvalItem

SR = 24_000


@dataclass
class Args:
    items: int = field(default=6, metadata={"help": "espeak-ng sentences scored"})
    model: Optional[str] = field(default=None, metadata={"help": "LLM export (null: tiny random exports)"})
    tokenizer: Optional[str] = field(default=None, metadata={"help": "its audio tokenizer export"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.evaluate", __doc__)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    save_audio(tmp / "ref.wav", tts(SENTENCES[0], VOICES[0], SR), SR)
    items = [EvalItem(f"i{k}", SENTENCES[10 + k], speakers={"v0": [tmp / "ref.wav"]}) for k in range(args.items)]
    wavs = [tts(it.text, VOICES[k % 4], SR) for k, it in enumerate(items)]
    audio_s = sum(len(w) for w in wavs) / SR
    with initialize_config_dir(str(package_configs("recipes") / "recipes/evaluate"), version_base="1.3"):
        model, tok = args.model, args.tokenizer
        if not model:
            from higgs_train.testing.tiny_exports import make_tiny_exports

            model, tok = make_tiny_exports(tmp / "tiny")
        cfg = compose("evaluate", overrides=[f"model={model}", f"tokenizer={tok}", f"eval_set={tmp / 'set.jsonl'}",
                                             f"out_dir={tmp / 'out'}", "progress=false", "sampling.max_frames=250"])
    print(f"{len(items)} espeak-ng clips, {audio_s:.1f} s of audio, torch threads 1\n")
    print(f"| {'scorer':<12} | {'load s':>7} | {'score s':>8} | {'x RT':>6} |")
    print(f"|{'-' * 14}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for name, node in cfg.scorers.items():
        t0 = time.perf_counter()
        scorer = instantiate(node)
        scorer(wavs[0][:SR], SR, items[0])            # first call: lazy model / decoder loading
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for w, it in zip(wavs, items):
            scorer(w, SR, it)
        took = time.perf_counter() - t0
        print(f"| {name:<12} | {load:7.2f} | {took:8.2f} | {took / audio_s:6.3f} |")

    import json

    from recipes.evaluate.__main__ import run

    (tmp / "set.jsonl").write_text("\n".join(json.dumps({"id": it.id, "text": it.text}) for it in items))
    t0 = time.perf_counter()
    res = run(cfg)
    wall = time.perf_counter() - t0
    m = res.summary["means"]
    print(f"\nharness on {model}: {res.summary['ok']}/{len(items)} items in {wall:.1f} s wall "
          f"(load + synth + scoring + tables), generated {m.get('seconds', 0) * len(items):.1f} s of audio, "
          f"synthesis rtf {m.get('rtf', float('nan')):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
