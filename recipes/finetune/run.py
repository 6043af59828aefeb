"""The fine-tuning run: one voice folder -> a merged export with a voice preset.

    python -m recipes.finetune voice_dir=DIR base=LLM_DIR tokenizer=AUDIO_TOKENIZER_EXPORT name=NAME
LLM_DIR: an LLM of any model family (higgs_train/families, from its config.json) in any layout the
family reads: for Higgs Audio v2 an export of ours, a transformers-port directory or the original
release's (e.g. the downloaded bosonai/higgs-audio-v2-generation-3B-base folder); for Higgs TTS 3
ours or the release's (bosonai/higgs-tts-3-4b, which also bundles the audio tokenizer: tokenizer=
may be the same directory). The merged export is written in the base's layout unless
export_layout= asks for another of its family's (v2: native|hf|original; v3: native|original).

Steps, each resumable (rerun the command after an interruption; a finished run is skipped):
    1 curate    DIR -> OUT/corpus: data_pipeline.run.curate in this process, with the config
                `python -m data_pipeline` composes (data_pipeline.config.compose_curation) and the
                curate.* overrides. Transcripts from sidecar files when every audio file has one,
                else ASR; diarization kept to one speaker.
    2 tokenize  data_pipeline.tokenize with the audio tokenizer -> codes in the shards
    3 train     held-out split (OUT/split/{train,val}) and the voice preset (the cleanest 3-15 s
                clip + transcript -> OUT/split/preset), then train.py's fit() from the base export
                (LoRA or full), validating every N steps: held-out loss, and a few held-out
                sentences spoken with the preset (stops.py: does it stop, how long); early stopping;
                the best checkpoint is the lowest loss among the validations that stop
    4 export    the best checkpoint merged, in the base's layout (or export_layout); held-out loss,
                stop rate and duration ratio of base and result. No validation stopped: an error,
                nothing exported
    5 preset    OUT/split/preset -> OUT/export/voices/NAME/
OUT/export appears (renamed from OUT/train/export) only when whole: model + preset.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from data_pipeline.config import CONFIG_DIR
from higgs_train.files import write_text_atomic
from recipes.finetune import FinetuneError
from recipes.finetune.corpus import (audio_files, pick_reference, read_manifest, rejection_reasons, split,
                                     without_sidecar, write_preset)

log = logging.getLogger(__name__)

STEPS = 5
VOICE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")   # inference/voices.py accepts these
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def step(i: int, what: str) -> None:
    print(f"\n==> [{time.strftime('%H:%M:%S')}] {i}/{STEPS} {what}", flush=True)


# ---------------------------------------------------------------- checks before any work

def check_inputs(cfg: DictConfig) -> dict:
    """Paths exist, the base is an LLM export of a model family with a text tokenizer, base and audio tokenizer
    agree on codebooks, LoRA targets exist. Returns the base's model config."""
    if not VOICE_NAME.match(str(cfg.name)):
        raise FinetuneError(f"name={cfg.name!r}: use letters, digits, '-', '_' and '.' (it names the voice preset)")
    voice_dir, base, tok = Path(cfg.voice_dir), Path(cfg.base), Path(cfg.tokenizer)
    if not voice_dir.is_dir():
        raise FinetuneError(f"voice_dir={voice_dir} is not a directory")
    out = Path(cfg.out_dir).resolve()
    if out.is_relative_to(voice_dir.resolve()):
        raise FinetuneError(f"out_dir={out} is inside voice_dir={voice_dir}: its files would be curated as input")
    from higgs_train.families import family_of

    try:   # its family from config.json, then any layout the family reads (v2: ours, the port's, the release's)
        family = family_of(base)
        model_cfg, layout = family.read_config(base)
    except (ValueError, FileNotFoundError) as e:
        raise FinetuneError(f"base={base}: {e}") from None
    base_cfg = {"family": family.name, **asdict(model_cfg)}   # a model size (configs/model/llm/*.yaml)
    if not any((base / f).is_file() for f in TOKENIZER_FILES):
        raise FinetuneError(f"base={base} holds no text tokenizer files ({', '.join(TOKENIZER_FILES)})")
    from higgs_train.tokenizer.layouts import codebook_shape

    try:   # any of the three layouts (higgs_train.tokenizer.layouts)
        got = codebook_shape(tok)
    except (FileNotFoundError, ValueError) as e:
        raise FinetuneError(f"tokenizer={tok}: {e}") from None
    want = (base_cfg["num_codebooks"], base_cfg["codebook_size"])
    if got != want:
        raise FinetuneError(f"base={base} expects {want[0]} codebooks x {want[1]} codes, but tokenizer={tok} "
                            f"gives {got[0]} x {got[1]}: fine-tune with the audio tokenizer the base was trained on")
    if cfg.mode == "lora":
        _check_targets(model_cfg, layout, cfg.lora.targets and list(cfg.lora.targets))
    elif cfg.mode != "full":
        raise FinetuneError(f"mode={cfg.mode!r}: use lora or full")
    if cfg.quantize not in ("none", "int8", "nf4") or (cfg.quantize != "none" and cfg.mode != "lora"):
        raise FinetuneError(f"quantize={cfg.quantize!r} with mode={cfg.mode}: use none, or int8 | nf4 with mode=lora")
    from higgs_train.finetune.lora import resolve_export_layout

    try:   # the fine-tuning task's own check, made before any work
        resolve_export_layout(cfg.export_layout, layout, family.layouts)
    except ValueError as e:
        raise FinetuneError(str(e)) from None
    return base_cfg


def _check_targets(model_cfg, layout: str, targets: list[str] | None) -> None:
    """Targets name linear layers of the model the base loads into (our names or the base layout's;
    None: its family's), checked on the family's model built on the meta device."""
    from higgs_train.families import family_for_config
    from higgs_train.finetune.lora import lora_modules

    model = family_for_config(model_cfg).build(model_cfg)
    try:
        lora_modules(model, targets, layout)
    except ValueError as e:
        raise FinetuneError(str(e)) from None


# ---------------------------------------------------------------- steps

def curate(cfg: DictConfig, corpus: Path) -> list[dict]:
    ignore = OmegaConf.load(CONFIG_DIR / "pipeline/ingest/default.yaml").ignore
    files = audio_files(cfg.voice_dir, ignore)
    if not files:
        raise FinetuneError(f"voice_dir={cfg.voice_dir} holds no audio files")
    missing = without_sidecar(files)
    if missing:
        print(f"{len(missing)} of {len(files)} audio files have no sidecar transcript "
              f"(e.g. {missing[0].name}): transcribing with ASR", flush=True)
    else:
        print(f"all {len(files)} audio files have sidecar transcripts", flush=True)
    from data_pipeline.config import compose_curation
    from data_pipeline.run import curate as run_curation

    overrides = [*cfg.curate.overrides, *(cfg.curate.asr if missing else cfg.curate.sidecar), *cfg.curate.extra]
    print("curating as: python -m data_pipeline input_dir=... output_dir=... " + shlex.join(overrides), flush=True)
    try:   # the paths set after composing: no override quoting (they may hold spaces, commas, '=')
        curation = compose_curation(overrides)
        with open_dict(curation):
            curation.input_dir, curation.output_dir = str(Path(cfg.voice_dir).resolve()), str(corpus)
        run_curation(curation)
    except (HydraException, ValueError) as e:
        raise FinetuneError(f"curation failed: {e}") from None
    if not (corpus / "manifest.jsonl").is_file():
        raise FinetuneError(f"curation wrote no {corpus / 'manifest.jsonl'}")
    rows = read_manifest(corpus)
    kept = sum(float(r["duration"]) for r in rows)
    if kept < cfg.min_seconds:
        reasons = ", ".join(f"{k} {v}" for k, v in rejection_reasons(corpus).most_common(4)) or "none"
        raise FinetuneError(
            f"too little audio: {kept:.1f} s of speech in {len(rows)} clips kept after curating {cfg.voice_dir} "
            f"({len(files)} files), below min_seconds={cfg.min_seconds:g}. Rejections: {reasons} "
            f"(see {corpus / 'rejected.jsonl'}). Add recordings, or relax the curation, e.g. "
            f"curate.extra=[filter.min.dnsmos_ovrl=2.5,segment.min_duration=1]")
    print(f"kept {len(rows)} clips, {kept / 60:.1f} min of speech", flush=True)
    return rows


def tokenize(cfg: DictConfig, corpus: Path) -> None:
    from data_pipeline.tokenize import tokenize_shards

    stats = tokenize_shards(str(corpus / "shards"), str(Path(cfg.tokenizer).resolve()),
                            batch_size=cfg.tokenize.batch_size, device=cfg.tokenize.device)
    print(json.dumps(stats, indent=2), flush=True)


def train(cfg: DictConfig, base_cfg: dict, out: Path, rows: list[dict]) -> tuple[Path, dict, dict]:
    """Split, the voice preset (the stop check's prompt, later the export's), then fit();
    returns (the merged export fit wrote, the split record, the preset record)."""
    from higgs_train.train import fit

    rec = split(out / "corpus", out / "split", cfg.name, float(cfg.val_fraction))
    print(f"train on {rec['clips']['train']} clips ({rec['seconds']['train']:.1f} s), validate on "
          f"{rec['clips']['val']} held-out clips ({rec['seconds']['val']:.1f} s)", flush=True)
    ref = pick_reference(rows, cfg.preset.min_seconds, cfg.preset.max_seconds)
    preset = write_preset(out / "corpus", ref, out / "split" / "preset")
    with open_dict(cfg):
        cfg.model = base_cfg   # the base's sizes (the model group's default would not match)
    return fit(cfg), rec, preset


def stop_check(cfg: DictConfig):
    """The stop check's config (callbacks.stops), or None when it is off (removed, or sentences=0)."""
    stops = cfg.callbacks.get("stops")
    return stops if stops and int(stops.sentences) >= 1 else None


def check_stops(cfg: DictConfig, best: int | None) -> list[dict]:
    """The stop check's history; FinetuneError when it ran and no validation stopped (no best checkpoint)."""
    from recipes.finetune.stops import read_history   # imports Lightning (3 s): not before a run trains

    stops = stop_check(cfg)
    if stops is None:
        return []
    history = read_history(stops.history)
    if best is None and history:
        best_cfg = cfg.callbacks.best
        lo, hi = best_cfg.duration_range
        rates = ", ".join(f"step {h['step']}: {h['stop_rate']:.2f} / {h['duration_ratio']:.2f}" for h in history)
        raise FinetuneError(
            f"no checkpoint stops at a plausible length: at every validation the model did not end some held-out "
            f"sentences itself (cut by the cap of {stops.max_ratio:g}x the recording or by the engine's text budget, "
            f"silence or loop stops: higgs_train/llm/stops.py), or spoke them too short or too long "
            f"(stop rate / duration ratio: {rates}; needed a stop rate >= {best_cfg.min_stop_rate:g} and a ratio "
            f"in {lo:g}-{hi:g}). Nothing was exported to {Path(cfg.out_dir) / 'export'}; the last weights are in "
            f"{Path(cfg.run_dir) / 'export'}. Try a lower task.optim.lr, fewer steps, mode=lora, or more recordings.")
    return history


def _best_step(run_dir: Path) -> tuple[int | None, int | None]:
    """(step of the exported best checkpoint, steps trained), from the checkpoints' metadata."""
    def step_of(p: Path):
        if not p.is_file():
            return None
        return int(torch.load(p, map_location="cpu", mmap=True, weights_only=False)["global_step"])

    return step_of(run_dir / "checkpoints/best.ckpt"), step_of(run_dir / "checkpoints/last.ckpt")


def measure_exports(cfg: DictConfig, exports: dict, preset_dir) -> dict:
    """{name: {"loss": held-out loss, "stops": the stop check (stops.speak) or None when it is off}}
    for each export in `exports` {name: dir}: what `python -m inference voice=NAME` does with it.
    Each model is loaded once for both; the codec, sentences and reference once for all."""
    from higgs_train.families import family_of
    from higgs_train.finetune.lora import held_out_loss, load_export
    from higgs_train.tokenizer import AudioTokenizer
    from recipes.finetune.stops import held_out_sentences, read_reference, speak

    stops = stop_check(cfg)
    codec = sentences = reference = None
    out = {}
    for name, d in exports.items():
        model, tok = load_export(d, cfg.quantize), family_of(d).text_tokenizer(d)
        if stops is not None and codec is None:
            codec = AudioTokenizer.from_pretrained(cfg.tokenizer, device=model.text_embed.weight.device)
            sentences, reference = held_out_sentences(stops.val_shards, stops.sentences), read_reference(preset_dir)
        out[name] = {"loss": held_out_loss(model, tok, cfg),
                     "stops": speak(model, codec, tok, sentences, reference, float(stops.max_ratio)) if stops else None}
        del model
    return out


def next_command(cfg: DictConfig, export: Path) -> str:
    return (f"python -m inference model={shlex.quote(str(export))} tokenizer={shlex.quote(str(cfg.tokenizer))} "
            f"voice={cfg.name} text='\"Hello! This is my voice, fine-tuned.\"' output={cfg.name}.wav")


def finetune(cfg: DictConfig) -> Path:
    """The whole run; returns OUT/export."""
    t0 = time.perf_counter()
    base_cfg = check_inputs(cfg)
    out = Path(cfg.out_dir).resolve()
    export = out / "export"
    if (export / "config.json").is_file() and (export / "voices" / cfg.name).is_dir():
        print(f"{export} exists: this fine-tuning run is finished (delete it to run again).\nNext:\n  "
              + next_command(cfg, export), flush=True)
        return export
    times = {}

    step(1, f"curate {cfg.voice_dir} -> {out / 'corpus'}")
    t = time.perf_counter()
    rows = curate(cfg, out / "corpus")
    times["curate"] = time.perf_counter() - t

    step(2, f"tokenize with {cfg.tokenizer}")
    t = time.perf_counter()
    tokenize(cfg, out / "corpus")
    times["tokenize"] = time.perf_counter() - t

    step(3, f"train ({cfg.mode}) from {cfg.base} -> {cfg.run_dir}")
    t = time.perf_counter()
    merged, rec, preset = train(cfg, base_cfg, out, rows)
    times["train"] = time.perf_counter() - t

    step(4, "export: the best checkpoint, merged into the base's weights")
    t = time.perf_counter()
    best, last = _best_step(Path(cfg.run_dir))
    history = check_stops(cfg, best)
    measured = measure_exports(cfg, {"base": cfg.base, "finetuned": merged}, out / "split" / "preset")
    base_loss, loss = measured["base"]["loss"], measured["finetuned"]["loss"]
    print(f"best checkpoint: step {best} of {last}; held-out loss: base {base_loss:.4f} -> fine-tuned {loss:.4f}",
          flush=True)
    if not loss < base_loss:
        log.warning("fine-tuning did not lower the held-out loss (base %.4f, fine-tuned %.4f): try another "
                    "task.optim.lr, more data, or mode=full", base_loss, loss)
    stops = {k: v["stops"] for k, v in measured.items()}
    if stops["finetuned"]:
        b, f = stops["base"], stops["finetuned"]
        n = len(f["items"])
        print(f"held-out sentences spoken with the preset: stops on {round(f['stop_rate'] * n)}/{n} "
              f"(base {round(b['stop_rate'] * n)}/{n}), duration ratio {f['duration_ratio']:.2f} "
              f"(base {b['duration_ratio']:.2f}; generated / recorded seconds)", flush=True)
    times["export"] = time.perf_counter() - t

    step(5, f"voice preset {cfg.name}")
    shutil.copytree(out / "split" / "preset", merged / "voices" / cfg.name, dirs_exist_ok=True)
    print(f"reference clip: {preset['recording']} at {preset['start']:.2f} s, {preset['duration']:.1f} s, "
          f"DNSMOS OVRL {preset['dnsmos_ovrl']}: {preset['text']!r}", flush=True)
    if export.exists():   # a half-finished earlier export (no preset): replaced
        shutil.rmtree(export)
    os.replace(merged, export)

    summary = {"name": cfg.name, "voice_dir": str(cfg.voice_dir), "base": str(cfg.base),
               "tokenizer": str(cfg.tokenizer), "mode": cfg.mode, "clips": rec["clips"], "seconds": rec["seconds"],
               "best_step": best, "steps": last, "base_val_loss": base_loss, "val_loss": loss, "preset": preset,
               "stop_rate": (stops["finetuned"] or {}).get("stop_rate"),
               "duration_ratio": (stops["finetuned"] or {}).get("duration_ratio"),
               "base_stop_rate": (stops["base"] or {}).get("stop_rate"),
               "base_duration_ratio": (stops["base"] or {}).get("duration_ratio"), "validations": history,
               "wall_seconds": {k: round(v, 1) for k, v in times.items()}, "export": str(export)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    print(f"\nfine-tuned in {time.perf_counter() - t0:.0f} s: {export} (summary: {out / 'summary.json'})\n"
          f"Next:\n  {next_command(cfg, export)}", flush=True)
    return export
