"""`python -m inference model=EXPORT_DIR tokenizer=EXPORT_DIR text="..." output=out.wav [overrides]`.

Voice: voice=NAME (a preset folder in voices_dir, else in MODEL/voices/ where fine-tuning puts its
voice; "a,b" gives [SPEAKER0]=a and [SPEAKER1]=b), or
reference_audio=clip.wav reference_text="...", or nothing (the model picks a voice).
Sampling: sampling.temperature=0.7 sampling.top_k=50 sampling.top_p=0.95 sampling.seed=1 ...
Stops: stops.budget_factor=2.5 stops.silence_s=2 stops.loop_s=2 ... (0 = off); a chunk the model did
not end itself is reported with its reason (budget, silence, loop, max_frames).
The output format follows the extension (wav, flac, mp3). `--help` shows the whole config.
"""
from __future__ import annotations

import logging
import sys
import time

import hydra
from omegaconf import DictConfig

from higgs_train.audio import save_audio
from higgs_train.config import package_configs

log = logging.getLogger("inference")


def synthesize(cfg: DictConfig) -> float:
    """Run the CLI config; returns the real-time factor (seconds of compute per second of audio)."""
    from tqdm import tqdm

    from inference.engine import Request, RequestError, engine_from_config

    t0 = time.perf_counter()
    engine = engine_from_config(cfg)
    log.info("loaded %s + %s on %s in %.1f s", cfg.model, cfg.tokenizer, engine.device, time.perf_counter() - t0)
    req = Request(cfg.text, voice=cfg.voice, reference_audio=cfg.reference_audio,
                  reference_text=cfg.reference_text, scene=cfg.scene)
    t0 = time.perf_counter()
    with tqdm(desc="frames", unit="frame", disable=not cfg.progress, file=sys.stderr) as bar:
        try:
            [res] = engine.generate([req], progress=bar.update)
        except RequestError as e:
            raise SystemExit(f"error: {e}") from None
    took = time.perf_counter() - t0
    seconds = len(res.audio) / res.sample_rate
    save_audio(cfg.output, res.audio, res.sample_rate)
    rtf = took / max(seconds, 1e-9)
    log.info("wrote %s: %.2f s of audio (%d frames, %d text chunks) in %.1f s, real-time factor %.2f",
             cfg.output, seconds, res.codes.shape[1], len(res.chunks), took, rtf)
    if res.stop_reason != "eos":   # the model did not end it: say where and why (higgs_train/llm/stops.py)
        log.warning("stopped before the model ended: %s", ", ".join(
            f"chunk {i + 1}/{len(res.chunks)} by {r}" for i, r in enumerate(res.stop_reasons) if r != "eos"))
    return rtf


@hydra.main(version_base="1.3", config_path=str(package_configs("inference") / "inference"), config_name="infer")
def main(cfg: DictConfig) -> None:
    synthesize(cfg)


if __name__ == "__main__":
    main()
