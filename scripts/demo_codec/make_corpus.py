"""The corpus the committed demo codec (pretrained/demo_codec) was trained on: espeak-ng speech
of 72 voices (the synthetic corpus' 8 and 64 drawn from espeak-ng's English accents x formant
variants x pitch x speed), one sentence each of data_pipeline.synth.SENTENCES, ~19 minutes at
24 kHz, level-normalised, as WebDataset shards the tokenizer task reads.

    python scripts/demo_codec/make_corpus.py out_dir=runs/demo_codec_corpus

Formant variants m3 and f1 are never drawn: tests/test_codec_decodes.py speaks with them to
check voices the codec never heard. Then the project's own training command (the demo
may start from a codec trained so, committed with its command and figures), e.g. on CPU:

    python -m higgs_train.train task=tokenizer model=tokenizer/tiny trainer=cpu \
        data.shards=runs/demo_codec_corpus/shards run_dir=runs/demo_codec trainer.max_steps=30000 \
        checkpoint_every_n_steps=500 task.data.crop_seconds=0.5 task.data.batch_size=8 task.data.num_workers=0 \
        task.optim.lr=1e-3 task.loss.gan_start_step=1000000000 trainer.val_check_interval=1000 \
        trainer.limit_val_batches=1

and scripts/demo_codec/publish.py to measure a checkpoint against the bar and publish it.
"""
from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data_pipeline.synth import SENTENCES, VOICES, Voice, tts
from higgs_train.shards import ShardWriter

LANGS = ["en-us", "en-gb", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan", "en"]
VARIANTS = ["m1", "m2", "m4", "m5", "m6", "m7", "f2", "f3", "f4", "f5", "iven", "iven3", "steph", "klatt",
            "Andy", "Denis", "Alicia", "Annie", "john", "max"]   # not m3, f1: held out
N_RANDOM_VOICES, N_SENTENCES, LEVEL_DB = 64, 300, -20.0


def voices(seed: int = 0) -> list[Voice]:
    rng = random.Random(seed)
    return list(VOICES) + [Voice(f"r{i}", f"{rng.choice(LANGS)}+{rng.choice(VARIANTS)}", rng.randint(0, 95),
                                 rng.randint(120, 200)) for i in range(N_RANDOM_VOICES)]


def main(out_dir: str) -> None:
    vs = voices()
    seconds = 0.0
    with ShardWriter(Path(out_dir) / "shards", max_bytes=64 << 20) as w:
        for i, text in enumerate(SENTENCES[:N_SENTENCES]):
            v = vs[i % len(vs)]
            try:
                wav = tts(text, v)
            except RuntimeError as e:   # an accent or variant this espeak-ng lacks
                print(f"skipped {v.espeak}: {e}", file=sys.stderr)
                continue
            wav = wav / max(1e-6, float(np.sqrt(np.mean(wav ** 2)))) * 10 ** (LEVEL_DB / 20)
            buf = io.BytesIO()
            sf.write(buf, wav.astype(np.float32), 24000, format="FLAC")
            w.write(f"utt{i:04d}", buf.getvalue(), {"id": f"utt{i:04d}", "text": text, "speaker": v.name,
                                                    "espeak": v.espeak, "duration": len(wav) / 24000})
            seconds += len(wav) / 24000
    print(f"{out_dir}: {seconds / 60:.1f} min of speech, {len(vs)} voices")


if __name__ == "__main__":
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    main(args.get("out_dir", "runs/demo_codec_corpus"))
