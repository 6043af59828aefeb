"""Tokenize stage: codes for every sample, atomic rewrite, resumable, broken samples reported."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.tokenize import tokenize_shards, tokenizer_fingerprint
from higgs_train.shards import ShardWriter, decode_flac, encode_flac, iter_shard, list_shards
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

MICRO_HUBERT = dict(model_type="hubert", hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                    intermediate_size=32, conv_dim=[8] * 7, num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2, mask_time_prob=0.0)
MICRO = dict(channels=2, decoder_channels=64, latent_dim=16, codebook_dim=8, teacher_config=MICRO_HUBERT)
RELEASE = Path(__file__).parent / "fixtures" / "release"
LENGTHS = [0.5, 1.3, 0.97, 2.2, 0.04]  # seconds; 0.04 s is shorter than one frame


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    tok = AudioTokenizer(TokenizerConfig(**MICRO))
    tok.train()
    tok(torch.randn(4, 1, 24000) * 0.1)  # k-means init: codebooks spread over real latents
    tok.eval().save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "shards") as w:
        for i, sec in enumerate(LENGTHS):
            if i == 3:
                w.close_shard()
            wav = (0.1 * rng.standard_normal(int(sec * 24000))).astype(np.float32)
            w.write(f"k{i}", encode_flac(wav), {"id": f"k{i}", "duration": sec})
        w.write("broken", b"not a flac file", {"id": "broken"})
    return tmp_path, AudioTokenizer.from_pretrained(tmp_path / "tok")


def test_codes_added_to_every_sample_and_rerun_skips(setup):
    root, tok = setup
    shards = list_shards(root / "shards")
    assert len(shards) == 2
    before = {p: {s["key"]: s for s in iter_shard(p)} for p in shards}

    stats = tokenize_shards(root / "shards", root / "tok", batch_size=2, progress=False)
    assert (stats["shards"], stats["samples"], stats["encoded"], stats["failed"]) == (2, 6, 5, 1)
    assert stats["audio_seconds"] == pytest.approx(sum(LENGTHS), abs=1e-3)

    for p in shards:
        for s in iter_shard(p):
            old = before[p][s["key"]]
            assert s["flac"] == old["flac"] and s["row"] == old["row"]  # the rest is untouched
            if s["key"] == "broken":
                assert s["codes"] is None
                continue
            wav, _ = decode_flac(s["flac"])
            assert s["codes"].dtype == np.int16
            assert s["codes"].shape == (8, tok.n_frames(len(wav)))
            # batched codes are the codes of the clip alone, exactly
            alone = tok.encode(torch.from_numpy(wav)[None], 24000)[0].numpy()
            assert np.array_equal(s["codes"], alone)
    assert not list((root / "shards").glob(".*tmp"))  # no temp files left

    # rerun: the complete shard is skipped untouched, the other retries only its broken sample
    mtime = os.stat(shards[0]).st_mtime_ns
    stats = tokenize_shards(root / "shards", root / "tok", progress=False)
    assert (stats["shards_skipped"], stats["encoded"], stats["failed"]) == (1, 0, 1)
    assert os.stat(shards[0]).st_mtime_ns == mtime


@pytest.mark.slow
def test_cli_resumes_after_a_partial_run(setup):
    root, _ = setup
    shards = list_shards(root / "shards")
    first = tokenize_shards([shards[0]], root / "tok", progress=False)  # "killed" after one shard
    assert first["encoded"] == 3
    proc = subprocess.run([sys.executable, "-m", "data_pipeline.tokenize", f"shards={root / 'shards'}",
                           f"tokenizer={root / 'tok'}", "batch_size=4"], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert (stats["shards_skipped"], stats["encoded"], stats["failed"]) == (1, 2, 1)
    assert sorted(p.name for p in root.iterdir()) == ["shards", "tok"]  # no hydra outputs beside


def test_codes_of_another_tokenizer_are_replaced(setup, tmp_path):
    """A retrained tokenizer makes the shards' codes stale: every sample is encoded again, and
    the result equals a run that only ever saw the new tokenizer."""
    root, _ = setup
    fresh = tmp_path / "fresh"
    shutil.copytree(root / "shards", fresh)
    tokenize_shards(root / "shards", root / "tok", progress=False)
    torch.manual_seed(1)
    other = AudioTokenizer(TokenizerConfig(**MICRO))
    other.train()
    other(torch.randn(4, 1, 24000) * 0.1)
    other.eval().save_pretrained(tmp_path / "other")

    stats = tokenize_shards(root / "shards", tmp_path / "other", progress=False)
    assert (stats["stale_shards"], stats["encoded"], stats["failed"]) == (2, 5, 1)
    tokenize_shards(fresh, tmp_path / "other", progress=False)
    for a, b in zip(list_shards(root / "shards"), list_shards(fresh)):
        for x, y in zip(iter_shard(a), iter_shard(b)):
            assert x["key"] == y["key"]
            assert (x["codes"] is None and y["codes"] is None) or np.array_equal(x["codes"], y["codes"])
    again = tokenize_shards(root / "shards", tmp_path / "other", progress=False)
    assert (again["stale_shards"], again["encoded"], again["shards_skipped"]) == (0, 0, 1)


def test_the_original_release_layout_tokenizes_shards(tmp_path):
    """tokenizer= a directory as the release holds it (config.json + model.pth): the shards get
    the original code's codes (fixtures written by boson-multimodal itself), and the record of
    the tokenizer hashes model.pth."""
    shutil.copytree(RELEASE / "tokenizer_original", tmp_path / "orig")
    cases_dir = RELEASE / "tokenizer_original_cases"
    cases = [c for c in json.loads((cases_dir / "cases.json").read_text())["cases"] if c["sample_rate"] == 24000]
    with ShardWriter(tmp_path / "shards") as w:
        for c in cases:
            w.write(c["name"], encode_flac(np.load(cases_dir / c["files"]["input"])), {"id": c["name"]})
    stats = tokenize_shards(tmp_path / "shards", tmp_path / "orig", progress=False)
    assert stats["encoded"] == len(cases) == 3
    want = {c["name"]: np.load(cases_dir / c["files"]["codes"]) for c in cases}
    for s in iter_shard(list_shards(tmp_path / "shards")[0]):
        # the shard holds 16-bit FLAC, the fixture float32: these codes survive that rounding
        # (deterministic: the same inputs every run)
        assert np.array_equal(s["codes"], want[s["key"]]), s["key"]
    # the weights changed -> the record changes -> the shards are stale
    before = tokenizer_fingerprint(tmp_path / "orig")
    sd = torch.load(tmp_path / "orig" / "model.pth", weights_only=True)
    sd["fc_prior.bias"] += 1.0
    torch.save(sd, tmp_path / "orig" / "model.pth")
    assert tokenizer_fingerprint(tmp_path / "orig") != before
