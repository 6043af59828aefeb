"""Fine-tuning on one voice: `python -m recipes.finetune` end to end on a tiny random base
(real curation, tokenization, training, merge, preset), LoRA merge parity, best-checkpoint
export, resume and skip, input errors, and the preset found by `python -m inference`."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_pipeline.synth import VOICES, make_voice_folder
from recipes.finetune.corpus import held_out_ids, pick_reference, split
from recipes.finetune.stops import candidate
from higgs_train.finetune.lora import FinetuneModule, merged
from higgs_train.llm.checkpoints import load_llm
from higgs_train.llm.model import DualFFNModel
from higgs_train.shards import iter_shard, list_shards, rewrite_shard
from higgs_train.testing.tiny_exports import make_tiny_exports

MICRO = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)
NAME = "nyc"
# small and quick: few steps, espeak-ng speech passes (its DNSMOS OVRL is ~2.1-2.7), one curation worker
FAST = ["min_seconds=10", 'curate.extra=["filter.min.dnsmos_ovrl=1.5","workers=1"]', "val_every_n_steps=4",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "task.optim.warmup_steps=3",
        "tokenize.batch_size=8", "callbacks.stops.sentences=0"]
# the shared run speaks two held-out sentences per validation
# (a model this small and this fast-trained says its sentences short: any length is accepted here)
STOPS = ["callbacks.stops.sentences=2", "callbacks.best.min_stop_rate=0.5", "callbacks.best.duration_range=[0,100]"]
LORA_TARGETS = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "audio_mlp.gate_proj",
                "audio_mlp.up_proj", "audio_mlp.down_proj"]   # configs/recipes/finetune.yaml's
# + the audio head: a random base's head has tiny weights (logits within ~0.1 of uniform), which
# adapters on the layers below cannot make confident
RUN_TARGETS = LORA_TARGETS + ["audio_head"]


def finetune(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "recipes.finetune", *args], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=600)
    return p


def finished_run(out, *args) -> dict:
    """A recipe run into `out` that must succeed: {"out", "stdout", "summary" (summary.json)}."""
    p = finetune(*args, f"out_dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"out": out, "stdout": p.stdout, "summary": json.loads((out / "summary.json").read_text())}


def val_losses(run_dir) -> list[dict[int, float]]:
    """{logged step: val/loss} of each invocation (logs/version_N), in order."""
    out = []
    for f in sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda f: int(f.parent.name[8:])):
        out.append({int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(open(f)) if r.get("val/loss")})
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    llm, tok = make_tiny_exports(root / "models", llm=MICRO)
    make_voice_folder(root / "voice", voice=VOICES[6], n_clips=6)
    return {"root": root, "llm": llm, "tok": tok, "voice": root / "voice",
            "args": [f"voice_dir={root / 'voice'}", f"base={llm}", f"tokenizer={tok}", f"name={NAME}"]}


@pytest.fixture(scope="module")
def run(inputs):
    """One LoRA fine-tune, shared by the tests below."""
    return finished_run(inputs["root"] / "out", *inputs["args"], *FAST, *STOPS, "trainer.max_steps=24",
                        "task.optim.lr=1e-2", f"lora.targets=[{','.join(RUN_TARGETS)}]")


@pytest.mark.slow
def test_end_to_end_lora(inputs, run):
    out, summary = run["out"], run["summary"]
    for i, what in enumerate(["curate", "tokenize", "train", "export", "voice preset"], 1):
        assert f"{i}/5 {what}" in run["stdout"]
    assert f"python -m inference model={out / 'export'}" in run["stdout"] and f"voice={NAME}" in run["stdout"]
    # the export is the base's format: same config, same tensors, loadable, text tokenizer files
    export = out / "export"
    base_cfg = json.loads((inputs["llm"] / "config.json").read_text())
    assert json.loads((export / "config.json").read_text()) == base_cfg
    assert (export / "tokenizer.json").is_file()
    model = load_llm(export)[0]
    assert model.cfg.hidden_size == MICRO["hidden_size"]
    # held-out clips: 10 % of the kept ones, at least one; the fine-tuned loss on them is lower
    assert summary["clips"]["val"] == max(1, round(0.1 * (summary["clips"]["train"] + summary["clips"]["val"])))
    assert summary["clips"]["train"] >= 4
    assert summary["val_loss"] < summary["base_val_loss"] - 1.0, summary
    # LoRA: the merged export differs from the base only in targeted layers, and in every one of them
    base, tuned = load_file(str(inputs["llm"] / "model.safetensors")), load_file(str(export / "model.safetensors"))
    assert base.keys() == tuned.keys()
    for k in base:
        targeted = any(k.endswith(t + ".weight") for t in RUN_TARGETS)
        delta = (base[k] - tuned[k]).abs().max().item()
        assert (delta > 1e-6) if targeted else (delta == 0.0), (k, delta)
    # checkpoints hold only the adapters (the base is reloaded from init_from)
    ckpt = torch.load(out / "train/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    # the exported weights are the best validation checkpoint's among those that stop
    # (recipes/finetune/stops.py)
    [losses] = val_losses(out / "train")
    history = json.loads((out / "train/stops.json").read_text())
    assert [h["step"] for h in history] == [s + 1 for s in sorted(losses)] == [4, 8, 12, 16, 20, 24]
    assert summary["validations"] == history
    stopping = {h["step"] - 1 for h in history if candidate(h["stop_rate"], h["duration_ratio"], 0.5, (0, 100))}
    best_step = min(stopping, key=losses.get)
    assert summary["best_step"] == best_step + 1   # metrics log step = global_step - 1
    assert abs(summary["val_loss"] - losses[best_step]) < 1e-4, (summary["val_loss"], losses)
    for h in history:
        assert abs(h["val_loss"] - losses[h["step"] - 1]) < 1e-6 and h["duration_ratio"] > 0
    # base and result are measured alike on the export and printed
    for k in ("stop_rate", "base_stop_rate"):
        assert summary[k] in (0.0, 0.5, 1.0), summary
    assert summary["duration_ratio"] > 0 and summary["base_duration_ratio"] > 0
    assert "held-out sentences spoken with the preset: stops on" in run["stdout"]


@pytest.mark.slow
def test_preset_and_inference(inputs, run):
    out = run["out"]
    preset = out / "export/voices" / NAME
    rows = [json.loads(line) for line in (out / "corpus/manifest.jsonl").read_text().splitlines()]
    chosen = next(r for r in rows if r["id"] == run["summary"]["preset"]["id"])
    # the cleanest clip of 3-15 s, with its transcript
    in_range = [r for r in rows if 3.0 <= r["duration"] <= 15.0]
    assert chosen["quality"]["dnsmos_ovrl"] == max(r["quality"]["dnsmos_ovrl"] for r in in_range)
    assert (preset / "reference.txt").read_text().strip() == chosen["text"]
    import soundfile as sf

    info = sf.info(str(preset / "reference.wav"))
    assert info.samplerate == 24000 and abs(info.duration - chosen["duration"]) < 0.05
    # inference finds the preset in MODEL/voices/ (no voices_dir entry for it)
    cmd = [sys.executable, "-m", "inference", f"model={out / 'export'}", f"tokenizer={inputs['tok']}",
           f"voice={NAME}", 'text="Hello there."', f"output={out / 'speech.wav'}", "sampling.max_frames=8",
           "progress=false", f"voices_dir={out / 'no_voices'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "speech.wav").is_file()
    # ... and the base export has no such voice
    cmd[3] = f"model={inputs['llm']}"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0 and f"unknown voice '{NAME}'" in p.stderr


def test_best_checkpoint_is_chosen_among_validations_that_stop(tmp_path):
    """BestThatStops in a real Lightning fit: val/loss falls at every validation; the best
    checkpoint is the lowest loss among those with stop rate >= 0.5 and duration ratio in 0.5-2."""
    import lightning as L

    from recipes.finetune.stops import DURATION_RATIO, STOP_RATE, BestThatStops

    # (stop rate, duration ratio) of the validations after steps 2, 4, ..., 10
    figures = iter([(1.0, 1.0), (0.5, 1.1), (0.0, 1.0), (1.0, 0.3), (1.0, 2.5)])

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, i):
            self.log("val/loss", 10.0 - self.global_step)   # falls: the last validation is the lowest

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SetRate(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                rate, ratio = next(figures)
                trainer.callback_metrics.update({STOP_RATE: torch.tensor(rate), DURATION_RATIO: torch.tensor(ratio)})

    best = BestThatStops(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                         min_stop_rate=0.5, duration_range=[0.5, 2.0])
    data = torch.utils.data.DataLoader(torch.zeros(10, 1), batch_size=1)
    trainer = L.Trainer(max_steps=10, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[SetRate(), best],
                        logger=False, enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(Tiny(), data, data)
    assert torch.load(best.best_model_path, weights_only=False)["global_step"] == 4   # not 6, 8, 10
    assert float(best.best_model_score) == 10.0 - 4


@pytest.mark.slow
def test_a_run_that_never_stops_exports_nothing(inputs, run, tmp_path):
    """No validation reaches the stop rate asked for: an error that says so, and no OUT/export."""
    out = tmp_path / "out"
    shutil.copytree(run["out"] / "corpus", out / "corpus")   # curation and tokenization are done
    p = finetune(*inputs["args"], f"out_dir={out}", *FAST, "callbacks.stops.sentences=2",
                 "callbacks.best.min_stop_rate=1.01", "trainer.max_steps=8", "task.optim.lr=1e-2")
    assert p.returncode != 0 and "no checkpoint stops" in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    assert "step 4:" in p.stderr and "step 8:" in p.stderr    # the stop rate of each validation
    assert not (out / "export").exists() and (out / "train/export/config.json").is_file()


@pytest.mark.slow
def test_rerun_of_a_finished_run_is_skipped(inputs, run):
    out = run["out"]
    before = (out / "export/model.safetensors").stat().st_mtime_ns
    p = finetune(*inputs["args"], f"out_dir={out}", *FAST, "trainer.max_steps=24")
    assert p.returncode == 0 and "is finished" in p.stdout, p.stderr[-2000:]
    assert "1/5 curate" not in p.stdout
    assert (out / "export/model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_best_checkpoint_is_exported_and_training_resumes(inputs, run, tmp_path):
    """Full fine-tune with a held-out set built so that its loss falls, then rises: one held-out clip
    is the voice's, the other's codes are shifted to ids the voice never uses, so the more confident
    the model gets, the worse that clip scores. Trained in two invocations (20 steps, then to 40)."""
    out = tmp_path / "out"
    shutil.copytree(run["out"] / "corpus", out / "corpus")   # curation and tokenization are done
    rec = split(out / "corpus", out / "split", NAME, 0.3)
    assert rec["clips"]["val"] == 2
    [val_shard] = list_shards(out / "split/val")
    samples = list(iter_shard(val_shard))
    samples[1]["codes"] = (samples[1]["codes"].astype(np.int64) + 512) % 1024
    rewrite_shard(val_shard, samples)
    args = [*inputs["args"], f"out_dir={out}", *FAST, "val_fraction=0.3", "mode=full", "task.optim.lr=1e-2",
            "patience=100"]

    p = finetune(*args, "trainer.max_steps=20", "task.optim.decay_steps=40")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # last.ckpt (what the rerun resumes from) knows the validation at its own step, the best so far
    ckpt = torch.load(out / "train/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    [stop] = [v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping")]
    [first] = val_losses(out / "train")
    best_first = min(first, key=first.get)
    assert ckpt["global_step"] == 20 and abs(float(stop["best_score"]) - first[best_first]) < 1e-6, (stop, first)
    assert stop["wait_count"] == sum(s > best_first for s in first) > 0, (stop, first)   # incl. step 20's
    shutil.rmtree(out / "export")   # as if the run had stopped at step 20
    corpus_mtime = list_shards(out / "corpus/shards")[0]
    corpus_mtime = Path(corpus_mtime).stat().st_mtime_ns
    p = finetune(*args, "trainer.max_steps=40")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Restoring states from the checkpoint" in p.stdout + p.stderr
    assert Path(list_shards(out / "corpus/shards")[0]).stat().st_mtime_ns == corpus_mtime   # not re-tokenized
    first, second = val_losses(out / "train")
    assert sorted(first) == [3, 7, 11, 15, 19] and sorted(second) == [23, 27, 31, 35, 39]   # resumed at step 20
    losses = first | second

    best = min(losses, key=losses.get)
    last = max(losses)
    assert losses[best] < losses[3] and losses[last] > losses[best] + 0.1, losses   # falls, then rises
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] == best + 1 and summary["steps"] == 40
    assert abs(summary["val_loss"] - losses[best]) < 1e-4, (summary, losses)
    # full mode: attention and audio weights of every layer changed, the (frozen) text head did not
    base = load_file(str(inputs["llm"] / "model.safetensors"))
    tuned = load_file(str(out / "export/model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert {k for k in base if ".attn." in k or "audio" in k} <= changed and "text_head.weight" not in changed


def test_lora_merge_parity_and_trainable_parameters(inputs):
    lora = dict(rank=4, alpha=8, dropout=0.0, targets=LORA_TARGETS)
    model_cfg = json.loads((inputs["llm"] / "config.json").read_text())
    model_cfg.pop("architecture")
    module = FinetuneModule(model_cfg, tokenizer_dir=str(inputs["llm"]), optim={}, init_from=str(inputs["llm"]),
                            lora=lora)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    n_layers = MICRO["num_layers"]
    assert len(trainable) == 2 * len(LORA_TARGETS) * n_layers
    peft_model = module.model
    g = torch.Generator().manual_seed(0)
    for n, p in peft_model.named_parameters():
        if ".lora_B." in n:   # B starts at zero: give the adapters something to merge
            p.data = torch.randn(p.shape, generator=g) * 0.1
    peft_model.eval()
    T = 24
    ids = torch.randint(0, 300, (2, T), generator=g)
    codes = torch.randint(0, 1024, (2, T, 8), generator=g)
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[:, 10:] = True
    with torch.no_grad():
        a = peft_model(ids, codes, mask)
        plain = merged(peft_model)
        assert type(plain) is DualFFNModel
        b = plain(ids, codes, mask)
        base = load_llm(inputs["llm"])[0](ids, codes, mask)
    assert (a.audio_logits - b.audio_logits).abs().max() < 1e-5
    assert (a.text_logits - b.text_logits).abs().max() < 1e-5
    assert (a.audio_logits - base.audio_logits).abs().max() > 1e-3   # the adapters did change the output


def test_split_and_reference_choice():
    ids = [f"clip_{i:03d}_0000" for i in range(25)]
    val = held_out_ids(ids, 0.1)
    assert len(val) == 2 and val == held_out_ids(list(reversed(ids)), 0.1)   # order-independent
    assert len(held_out_ids(ids[:3], 0.1)) == 1
    rows = [{"id": "a", "duration": 2.0, "quality": {"dnsmos_ovrl": 3.9}},    # too short
            {"id": "b", "duration": 6.0, "quality": {"dnsmos_ovrl": 2.9}},
            {"id": "c", "duration": 9.0, "quality": {"dnsmos_ovrl": 3.1}},
            {"id": "d", "duration": 20.0, "quality": {"dnsmos_ovrl": 3.5}}]  # too long
    assert pick_reference(rows, 3.0, 15.0)["id"] == "c"
    assert pick_reference([rows[0], rows[3]], 3.0, 15.0)["id"] == "a"   # none in range: the nearest


@pytest.mark.slow
def test_errors_are_one_line(inputs, run, tmp_path):
    # a base whose audio vocabulary does not match the tokenizer's
    llm512, _ = make_tiny_exports(tmp_path / "m512", llm={**MICRO, "codebook_size": 512})
    p = finetune(f"voice_dir={inputs['voice']}", f"base={llm512}", f"tokenizer={inputs['tok']}", f"name={NAME}",
                 f"out_dir={tmp_path / 'a'}")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "expects 8 codebooks x 512 codes" in p.stderr and "gives 8 x 1024" in p.stderr, p.stderr
    # a missing path
    p = finetune(f"voice_dir={tmp_path / 'nope'}", f"base={inputs['llm']}", f"tokenizer={inputs['tok']}",
                 f"name={NAME}", f"out_dir={tmp_path / 'b'}")
    assert p.returncode == 1 and f"voice_dir={tmp_path / 'nope'} is not a directory" in p.stderr
    # too little audio after curation (the curated corpus is reused: curation resumes at once)
    out = tmp_path / "c"
    shutil.copytree(run["out"] / "corpus", out / "corpus")
    kept = sum(json.loads(line)["duration"] for line in (out / "corpus/manifest.jsonl").read_text().splitlines())
    p = finetune(*inputs["args"], f"out_dir={out}", *FAST, "min_seconds=1000")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"too little audio: {kept:.1f} s of speech" in p.stderr and "min_seconds=1000" in p.stderr, p.stderr
    assert not (out / "train").exists()


RELEASE_TARGETS = ["self_attn.q_proj", "self_attn.v_proj", "audio_mlp.up_proj", "audio_decoder_proj.audio_lm_head"]


@pytest.fixture(scope="module")
def release_base(inputs, tmp_path_factory):
    """The tiny base in the original release's layout (what the hub folder holds), tokenizer beside it."""
    from higgs_train.llm.checkpoints import save_llm

    d = tmp_path_factory.mktemp("release_base")
    save_llm(load_llm(inputs["llm"])[0], d, "original", tokenizer_dir=inputs["llm"])
    return d


def test_release_base_lora_targets_and_export_layouts(release_base, tmp_path):
    """LoRA on the release's module names; the merged export in the base's layout or the one asked for."""
    from dataclasses import asdict

    from recipes.finetune import FinetuneError
    from recipes.finetune.run import _check_targets
    from higgs_train.llm.layouts import read_config
    from higgs_train.llm.text_tokenizer import load_text_tokenizer, special_token_ids

    cfg, layout = read_config(release_base)
    assert layout == "original"
    with pytest.raises(FinetuneError, match=r"'self_attn\.qq' names no linear layer.*'self_attn\.q_proj'"):
        _check_targets(cfg, layout, ["self_attn.qq"])
    g = torch.Generator().manual_seed(0)
    T = 24
    ids, codes = torch.randint(0, 300, (1, T), generator=g), torch.randint(0, 1024, (1, T, 8), generator=g)
    mask = torch.arange(T)[None] >= 10
    base_logits = load_llm(release_base)[0](ids, codes, mask).audio_logits
    for export_layout, want in ((None, "original"), ("hf", "hf"), ("native", "native")):
        module = FinetuneModule(asdict(cfg), tokenizer_dir=str(release_base), optim={}, init_from=str(release_base),
                                lora=dict(rank=4, alpha=8, dropout=0.0, targets=RELEASE_TARGETS),
                                export_layout=export_layout)
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 * (3 * MICRO["num_layers"] + 1)                 # q, v, up per layer + the head
        assert any("audio_head.lora_A" in n for n in trainable)
        for n, p in module.model.named_parameters():
            if ".lora_B." in n:
                p.data = torch.randn(p.shape, generator=g) * 0.1
        module.eval()
        with torch.no_grad():
            tuned = module.model(ids, codes, mask).audio_logits
        module.export(tmp_path / str(want))
        model, got = load_llm(tmp_path / str(want))
        assert got == want
        with torch.no_grad():
            again = model(ids, codes, mask).audio_logits
        assert (again - tuned).abs().max() < 1e-5 and (again - base_logits).abs().max() > 1e-3
        tok = load_text_tokenizer(tmp_path / str(want))
        assert special_token_ids(tok) == special_token_ids(load_text_tokenizer(release_base))


@pytest.mark.slow
def test_finetune_a_release_layout_base(inputs, run, release_base, tmp_path):
    """python -m recipes.finetune base=<original-layout dir>: the export is in the release's layout."""
    from higgs_train.llm.layouts import read_config

    out = tmp_path / "out"
    shutil.copytree(run["out"] / "corpus", out / "corpus")   # curation and tokenization are done
    p = finetune(f"voice_dir={inputs['voice']}", f"base={release_base}", f"tokenizer={inputs['tok']}", f"name={NAME}",
                 f"out_dir={out}", *FAST, "trainer.max_steps=8", "task.optim.lr=1e-2",
                 f"lora.targets=[{','.join(RELEASE_TARGETS)}]")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    export = out / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "higgs_audio"
    assert read_config(export)[1] == "original" and (export / "voices" / NAME).is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["val_loss"]) and summary["steps"] == 8
    base = load_llm(release_base)[0].state_dict()
    tuned = load_llm(export)[0].state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert "audio_head.weight" in changed and "layers.0.attn.q_proj.weight" in changed
    assert "layers.0.attn.k_proj.weight" not in changed                      # not a target


def test_audio_tokenizer_of_any_layout_is_checked(inputs, release_base):
    from higgs_train.tokenizer.layouts import codebook_shape

    assert codebook_shape(inputs["tok"]) == (8, 1024)
    original = Path(__file__).parent / "fixtures/release/tokenizer_original"   # saved by the release's code
    assert codebook_shape(original) == (8, 1024)
    with pytest.raises(ValueError, match="holds an LLM"):
        codebook_shape(release_base)
