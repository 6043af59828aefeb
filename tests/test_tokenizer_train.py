"""Tokenizer training through the shared entry point: it learns, codebooks stay alive,
quantizer dropout orders the codebooks, and a resumed run equals an uninterrupted one."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from data_pipeline.synth import VOICES, tts
from higgs_train.config import CONFIG_DIR
from higgs_train.shards import ShardWriter, encode_flac, list_shards
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.tokenizer.data import fixed_clips
from higgs_train.tokenizer.losses import MelLoss
from higgs_train.train import fit

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
             "How much wood would a woodchuck chuck?", "A stitch in time saves nine, they said.",
             "Training a codec takes patience and data.", "Every frame carries eight codes of ten bits."]


def speech_shards(out_dir, n: int, n_shards: int, seed: int) -> Path:
    """n espeak-ng utterances over n_shards shards, with a faint noise floor like real recordings."""
    rng = np.random.default_rng(seed)
    per = math.ceil(n / n_shards)
    with ShardWriter(out_dir) as w:
        for i in range(n):
            if i and i % per == 0:
                w.close_shard()
            wav = 0.8 * tts(SENTENCES[(i + seed) % len(SENTENCES)], VOICES[i % len(VOICES)])
            wav = (wav + 0.003 * rng.standard_normal(len(wav))).astype(np.float32)
            key = f"s{seed}_{i:03d}"
            w.write(key, encode_flac(wav), {"id": key, "duration": len(wav) / 24000})
    return Path(out_dir)


def tiny_hubert(path):
    """A randomly initialised HuBERT saved like a real one: the same loading path as HuBERT-base."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok_corpus")
    speech_shards(d / "train", 24, 3, seed=0)
    speech_shards(d / "heldout", 6, 1, seed=1)
    return d


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def config(corpus, run_dir, *extra):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[
            "task=tokenizer", "model=tokenizer/tiny", "trainer=cpu", f"data.shards={corpus / 'train'}",
            f"run_dir={run_dir}", "task.data.crop_seconds=0.3", "task.data.batch_size=4",
            "task.data.num_workers=0", "task.data.shuffle_buffer=8", "task.optim.lr=1e-3",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", *extra])


def metric(run_dir, name) -> dict[int, float]:
    out = {}
    for f in sorted(Path(run_dir).glob("logs/**/metrics.csv")):
        for row in csv.DictReader(open(f)):
            if row.get(name):
                out[int(row["step"])] = float(row[name])
    return out


def mel_distance(tok: AudioTokenizer, clips: torch.Tensor, n_codebooks: int = 8) -> float:
    codes = tok.encode(clips, 24000)
    recon = tok.decode(codes[:, :n_codebooks])[..., :clips.shape[-1]]
    return MelLoss(24000)(recon, clips).item()


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """80 steps (the last 3 with the GAN), validation at 40 and 80: (run_dir, export, held-out clips)."""
    steps, run = 80, tmp_path_factory.mktemp("learns") / "run"
    export = fit(config(corpus, run, f"trainer.max_steps={steps}", f"checkpoint_every_n_steps={steps}",
                        f"task.loss.gan_start_step={steps - 3}", "trainer.val_check_interval=40",
                        "trainer.limit_val_batches=1", "task.data.val_clips=2", "task.data.val_seconds=1.0"))
    return run, AudioTokenizer.from_pretrained(export), fixed_clips(list_shards(corpus / "heldout"), 6, 2.0)


@pytest.mark.slow
def test_training_learns_without_collapse(trained_run):
    run, trained, held = trained_run
    torch.manual_seed(0)
    untrained = AudioTokenizer(TokenizerConfig.from_dict({**trained.cfg.to_dict()})).eval()
    d_trained, d_untrained = mel_distance(trained, held), mel_distance(untrained, held)
    assert d_trained < 0.8 * d_untrained, (d_trained, d_untrained)

    codes = trained.encode(held, 24000)  # [6, 8, 50]
    used = [len(torch.unique(codes[:, i])) for i in range(8)]
    assert sum(used) >= 64 and min(used) >= 3, used  # no collapse onto a handful of codes

    # every codebook removes part of the latent's residual (k-means on pooled frames, stages
    # initialised as the residual's principal directions; before, error grew from 0.12 to 0.22)
    w = held[:, :, :48000]  # a multiple of the hop: both paths give 50 frames
    with torch.no_grad():
        z, _ = trained._fused(w, w)
    codes = trained.quantizer.encode(z)
    err_k = [(trained.quantizer.decode(codes[:, :k]) - z).pow(2).mean().item() for k in range(1, 9)]
    assert all(b < a for a, b in zip(err_k, err_k[1:])), err_k
    assert err_k[-1] < 0.5 * err_k[0], err_k

    # the GAN phase ran, and validation wrote examples
    assert len(metric(run, "train/d_loss")) == 3
    assert metric(run, "val/mel_distance")
    for name in ("val/recon_cross_corr", "val/periodic_share", "val/random_codes_corr"):  # the collapse monitors
        assert all(0 <= v <= 1 for v in metric(run, name).values()) and metric(run, name)
    dirs = sorted((run / "samples").glob("step-*"))
    assert [d.name for d in dirs] == ["step-0000040", "step-0000080"]
    assert sorted(p.name for p in dirs[-1].iterdir()) == ["0_orig.wav", "0_recon.wav", "1_orig.wav", "1_recon.wav",
                                                          "mel.png"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="after 80 CPU steps the release-topology decoder does not "
                                       "use the finer codes yet (mel 0.525 -> 0.533 from 1 to 8 codebooks)")
def test_quantizer_dropout_orders_the_decoded_audio(trained_run):
    # decoding with the first k codebooks never gets worse as k grows (the old 0.3 M-parameter
    # topology met this at 80 steps; strict: the day it passes, the marker goes)
    _, trained, held = trained_run
    d_k = [mel_distance(trained, held, k) for k in range(1, 9)]
    assert all(b <= a + 1e-3 for a, b in zip(d_k, d_k[1:])), d_k


@pytest.mark.slow
def test_resume_is_exact_with_teacher_and_gan(corpus, tmp_path):
    teacher = tiny_hubert(tmp_path / "hubert")
    # the teacher loaded from a local HuBERT directory, as for hubert-base at full size
    common = [f"model.teacher={teacher}", "model.teacher_config=null", "task.loss.gan_start_step=2",
              "checkpoint_every_n_steps=2"]
    fit(config(corpus, tmp_path / "a", "trainer.max_steps=4", *common))
    fit(config(corpus, tmp_path / "b", "trainer.max_steps=2", *common))
    assert (tmp_path / "b/checkpoints/last.ckpt").exists()
    fit(config(corpus, tmp_path / "b", "trainer.max_steps=4", *common))
    for name in ("train/loss", "train/d_loss", "train/semantic"):
        a, b = metric(tmp_path / "a", name), metric(tmp_path / "b", name)
        assert sorted(a) == sorted(b) and max(a) == 3, (name, a, b)
        for step in a:
            assert abs(a[step] - b[step]) <= 1e-5 * max(1.0, abs(a[step])), (name, step, a[step], b[step])
    wa = AudioTokenizer.from_pretrained(tmp_path / "a/export").state_dict()
    wb = AudioTokenizer.from_pretrained(tmp_path / "b/export").state_dict()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert "semantic_model.encoder.layers.0.attention.q_proj.weight" in wa  # the export embeds the teacher


@pytest.mark.slow
def test_init_from_continues_an_export(corpus, tmp_path):
    """task.init_from=EXPORT trains further from the export's weights and codebooks (no k-means)."""
    src = fit(config(corpus, tmp_path / "src", "trainer.max_steps=3", "checkpoint_every_n_steps=3",
                     "task.loss.gan_start_step=100"))
    out = fit(config(corpus, tmp_path / "cont", "trainer.max_steps=2", "checkpoint_every_n_steps=2",
                     "task.loss.gan_start_step=100", f"task.init_from={src}", "model.latent_dim=32"))
    a, b = AudioTokenizer.from_pretrained(src), AudioTokenizer.from_pretrained(out)
    assert b.cfg.latent_dim == a.cfg.latent_dim  # the export's config wins over model.*
    fresh = AudioTokenizer(TokenizerConfig.from_dict(a.cfg.to_dict()))
    wa, wb, wf = a.state_dict(), b.state_dict(), fresh.state_dict()
    k = "acoustic_encoder.conv1.parametrizations.weight.original1"
    moved, apart = (wb[k] - wa[k]).norm() / wa[k].norm(), (wf[k] - wa[k]).norm() / wa[k].norm()
    assert moved < 0.1 * apart, (moved, apart)  # two Adam steps from the export, not a new init
    for i, (qa, qb) in enumerate(zip(a.quantizer.quantizers, b.quantizer.quantizers)):
        ca, cb = qa.codebook, qb.codebook
        alive = ca.cluster_size >= 5 * ca.dead_threshold * ca.cluster_size.mean()  # safely above restart
        err = (cb.embed[alive] - ca.embed[alive]).norm(dim=1) / ca.embed[alive].norm(dim=1)
        assert alive.sum() >= 8 and err.median() < 0.05, (i, int(alive.sum()), err.median())
