"""The engine's fast decode paths change no output: fp32 greedy frames equal those the engine made
before them (recorded below) and a full recomputation without a cache (the reference path: the
text/audio split in every dual layer, both heads, attention over every position).

Fast paths held to it: decode and prefill attend over the smallest slot bucket that holds the
current length (EngineConfig.attend_step; small here so one generation crosses many buckets),
audio-only steps run only the audio norms/FFN of dual layers and only the audio head, CPU fp32
batches of 4+ multiply by MKL-packed weights."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from inference.engine import Engine, EngineConfig, Request
from inference.packed_gemm import PackedLinears, kernel_available
from inference.sampling import SamplingConfig
from higgs_train.testing.tiny_exports import TINY_LLM, make_tiny_exports

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

GREEDY = SamplingConfig(temperature=0, max_frames=40)
TEXTS = ["Hello there.", "the quick brown fox jumps over a lazy dog, how are you today?"]
# sha256 of the int64 frames and their shape, from the engine before the fast paths (commit b16e6a0)
BEFORE = {"all_dual": [("4f275c9d980f70c5d1dee5ed65989b3d38a58a60e26d37f22f67dc97b18c3216", (8, 40)),
                      ("2104e218ba8b1494e51e8dc3f738a54564244ffec02cc70f91d9cb715710b7c4", (8, 40))],
          "some_dual": [("fb65e3c25401d69b63d91d8db4b8415dcfe9b355a11d3f58889ba480d5a09d35", (8, 40)),
                        ("35daab308f71c380bed57ba2f6906e0a1dc896707620639c1d96e88568440bd1", (8, 36))]}


def _engine(tmp_path, dual_layers, **cfg) -> Engine:
    llm, tok = make_tiny_exports(tmp_path, llm={"dual_layers": dual_layers})
    return Engine.from_pretrained(llm, tok, cfg=EngineConfig(buckets=(256, 1024), attend_step=16, **cfg))


def _rows(engine, texts):
    reqs = [Request(t, sampling=GREEDY) for t in texts]
    return [engine.row(r, engine.plan(r)) for r in reqs]


def _digest(frames: torch.Tensor):
    return hashlib.sha256(frames.numpy().astype(np.int64).tobytes()).hexdigest(), tuple(frames.shape)


@pytest.mark.parametrize("name,dual_layers", [("all_dual", None), ("some_dual", [1, 3])])
def test_fast_paths_keep_the_frames(tmp_path, name, dual_layers):
    engine = _engine(tmp_path, dual_layers)
    batched = engine.generate_codes(_rows(engine, TEXTS))          # left-padded batch of two
    assert [_digest(f) for f in batched] == BEFORE[name]
    for text, frames in zip(TEXTS, batched):
        full = engine.generate_codes(_rows(engine, [text]), use_cache=False)[0]
        assert torch.equal(full, frames)


def test_model_fast_paths_equal_the_plain_call():
    """Decode steps of a tiny model: attend= / audio_only= / text_head=False against the plain
    cached call (whole cache, split, both heads) from the same prefill."""
    torch.manual_seed(0)

    m = DualFFNModel(DualFFNConfig(vocab_size=97, **{**TINY_LLM, "dual_layers": [0, 2]})).eval()
    B, P, K = 2, 21, 8
    ids = torch.randint(0, 97, (B, P))
    codes = torch.randint(0, 1024, (B, P, K))
    amask = torch.rand(B, P) < 0.5
    tmask = torch.ones(B, P, dtype=torch.bool)
    tmask[1, :4] = False                                           # a left-padded row
    fast, plain = m.allocate_cache(B, 64), m.allocate_cache(B, 64)
    with torch.no_grad():
        a = m(ids, codes, amask, cache=fast, positions=torch.arange(P), token_mask=tmask, last_only=True,
              attend=24, text_head=False)
        b = m(ids, codes, amask, cache=plain, positions=torch.arange(P), token_mask=tmask, last_only=True)
        assert a.text_logits is None
        assert (a.audio_logits - b.audio_logits).abs().max() <= 1e-6
        for t in range(P, P + 12):                                  # crosses the 24-slot bucket
            frame = torch.randint(0, 1024, (B, 1, K))
            x = torch.zeros(B, 1, dtype=torch.long)
            a = m(x, frame, None, cache=fast, positions=torch.tensor([t]), attend=-(-(t + 1) // 8) * 8,
                  audio_only=True, text_head=False)
            b = m(x, frame, torch.ones(B, 1, dtype=torch.bool), cache=plain, positions=torch.tensor([t]))
            assert (a.audio_logits - b.audio_logits).abs().max() <= 1e-6, t
            assert torch.equal(a.audio_logits.argmax(-1), b.audio_logits.argmax(-1))


@pytest.mark.parametrize("dtype,max_diff,mean_diff", [(torch.bfloat16, 2e-2, 1e-3), (torch.float32, 1e-6, 1e-7)])
def test_decode_attention_groups_query_heads(dtype, max_diff, mean_diff):
    """A decode step on CPU (query heads of a KV head as query rows) equals grouped-query SDPA."""
    import torch.nn.functional as F

    from higgs_train.llm.model import Attention, KVCache

    torch.manual_seed(0)
    cfg = DualFFNConfig(vocab_size=97, **TINY_LLM)
    att = Attention(cfg, 0).to(dtype)
    cache = KVCache(cfg, 2, 16, dtype, "cpu")
    cache.k.normal_()
    cache.v.normal_()
    x = torch.randn(2, 1, cfg.hidden_size, dtype=dtype)
    one = torch.ones(1, cfg.head_dim, dtype=dtype)
    mask = torch.rand(2, 1, 1, 12) < 0.7
    mask[..., 9] = True                                             # the position written now
    with torch.no_grad():
        got = att(x, one, one * 0, cache, torch.tensor([9]), mask, attend=12)
        q = att.q_proj(x).view(2, 1, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, cache.k[0, :, :, :12], cache.v[0, :, :, :12], attn_mask=mask,
                                           enable_gqa=True)
        want = att.o_proj(y.transpose(1, 2).reshape(2, 1, -1))
    assert (got.float() - want.float()).abs().max() <= max_diff
    assert (got.float() - want.float()).abs().mean() <= mean_diff


class _Recorder:
    """A stand-in for cuda_capture on CPU: keeps the recorded step and runs it at every replay, as a
    graph replays its kernels on whatever the fixed buffers hold then (a step that captured its
    inputs by value would replay stale frames). `spoil` makes replays wrong, `fail` makes capture raise."""

    def __init__(self, spoil=False, fail=False):
        self.spoil, self.fail, self.captured, self.replays = spoil, fail, 0, 0

    def __call__(self, step):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured += 1

        def replay():
            self.replays += 1
            out = step()
            return out + 1.0 if self.spoil else out
        return replay


def _graphed(tmp_path, monkeypatch, recorder):
    engine = _engine(tmp_path, None)
    monkeypatch.setattr(engine, "capture", lambda: recorder)
    return engine


def test_replayed_decode_steps_keep_the_frames(tmp_path, monkeypatch):
    """Decode steps replayed from one recording per attention length (what CUDA graphs do) give the
    recorded frames; one recording per attend multiple of each cache, one replay per step."""
    rec = _Recorder()
    engine = _graphed(tmp_path, monkeypatch, rec)
    batched = engine.generate_codes(_rows(engine, TEXTS))
    assert [_digest(f) for f in batched] == BEFORE["all_dual"]
    [steps] = engine.caches.values()
    lengths = sorted(steps.graphs)
    assert lengths == list(range(lengths[0], lengths[-1] + 1, 16)) and len(lengths) >= 3   # attend_step 16
    assert rec.captured == len(lengths)
    # stream positions 1..48 (40 frames, the EOS frame, its 7-position delay tail): a step after each
    # but the last, each one replay (a recording's check replay is its first step's)
    assert rec.replays == 47
    single = engine.generate_codes(_rows(engine, TEXTS[:1]))[0]   # a second cache (batch 1), its own recordings
    assert _digest(single) == BEFORE["all_dual"][0]
    assert rec.captured > len(lengths)


@pytest.mark.parametrize("fault", ["spoil", "fail"])
def test_a_bad_recording_turns_graphs_off(tmp_path, monkeypatch, caplog, fault):
    """A step that fails to capture, or whose replay differs from the eager step, is caught by the
    check on its first replay: graphs go off for that cache with a warning, and the frames stay."""
    rec = _Recorder(**{fault: True})
    engine = _graphed(tmp_path, monkeypatch, rec)
    with caplog.at_level("WARNING", logger="inference.decode_graphs"):
        batched = engine.generate_codes(_rows(engine, TEXTS))
    assert [_digest(f) for f in batched] == BEFORE["all_dual"]
    [steps] = engine.caches.values()
    assert steps.capture is None and not steps.graphs
    assert rec.replays <= 1
    [msg] = [r.getMessage() for r in caplog.records]
    assert "CUDA graphs off" in msg and ("differs" if fault == "spoil" else "capture failed") in msg


needs_mkl = pytest.mark.skipif(not kernel_available(torch.float32), reason="no MKL packed GEMM in this torch build")
needs_onednn_bf16 = pytest.mark.skipif(not kernel_available(torch.bfloat16),
                                       reason="no oneDNN bf16 on this CPU or in this torch build")


@needs_mkl
@pytest.mark.parametrize("name,dual_layers", [("all_dual", None), ("some_dual", [1, 3])])
def test_packed_decode_keeps_the_frames(tmp_path, monkeypatch, name, dual_layers):
    """A batch of five (padded to eight rows for MKL's packed GEMM) decodes every row to the frames
    recorded before the fast paths; every decode-step linear ran from its pack."""
    calls = []
    real = PackedLinears._mkl_linear
    monkeypatch.setattr(PackedLinears, "_mkl_linear", lambda self, *a, **k: calls.append(self.rows) or real(self, *a, **k))
    engine = _engine(tmp_path, dual_layers)
    order = [0, 1, 1, 0, 1]
    batched = engine.generate_codes(_rows(engine, [TEXTS[i] for i in order]))
    assert [_digest(f) for f in batched] == [BEFORE[name][i] for i in order]
    [steps] = engine.caches.values()
    n_linears = 7 * engine.model.cfg.num_layers + 1
    # a step after each stream position but the last (as in the replay test), its length set by the
    # longer row: 40 frames + EOS + the 7-position delay tail
    assert calls and set(calls) == {8} and len(calls) == n_linears * 47
    assert steps.packs is not None and not any("forward" in vars(m) for m in steps.packs.linears)

    off = _engine(tmp_path / "off", dual_layers, packed_gemm=False)
    calls.clear()
    assert [_digest(f) for f in off.generate_codes(_rows(off, [TEXTS[i] for i in order]))] == \
        [BEFORE[name][i] for i in order]
    assert not calls


@needs_mkl
@needs_onednn_bf16
def test_packed_linears_equal_f_linear_and_follow_the_weights():
    """Packed products equal F.linear's at padded, exact and larger row counts (fp32 within 1e-5,
    bf16 exactly); a weight changed in place is packed again; a model whose dtype changed runs
    F.linear on the old packs, and new ones come in its dtype."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = DualFFNModel(DualFFNConfig(vocab_size=97, **TINY_LLM)).eval()
    assert PackedLinears.for_decode(m, 3) is None                    # fp32: too few rows to gain
    packs = PackedLinears.for_decode(m, 5)
    assert packs.rows == 8
    lin = m.audio_head
    with torch.no_grad():
        for batch in (5, 8, 11):                                    # padded; exact; more rows: F.linear
            x = torch.randn(batch, 1, m.cfg.hidden_size)
            with packs.active():
                got = lin(x)
            assert got.shape == (batch, 1, lin.out_features)
            assert (got - F.linear(x, lin.weight)).abs().max() <= 1e-5
        lin.weight.mul_(2)                                          # changed in place: packed again
        packs.refresh()
        with packs.active():
            got = lin(x[:5])
        assert (got - F.linear(x[:5], lin.weight)).abs().max() <= 1e-5
        m.to(torch.bfloat16)                                        # no longer fp32: plain F.linear
        packs.refresh()
        with packs.active():
            assert "forward" not in vars(lin)
            lin(x[:5].bfloat16())
        bf = PackedLinears.for_decode(m, 3)                         # bf16: any row count, exact
        assert bf.rows == 3 and bf.dtype == torch.bfloat16
        for batch in (1, 3, 7):
            x = torch.randn(batch, 1, m.cfg.hidden_size).bfloat16()
            with bf.active():
                got = lin(x)
            assert "forward" not in vars(lin) and torch.equal(got, F.linear(x, lin.weight))


@needs_onednn_bf16
@pytest.mark.parametrize("order", [[1], [0, 1, 1]])
def test_packed_bf16_decode_makes_the_unpacked_frames(tmp_path, monkeypatch, order):
    """In bf16 every decode-step linear runs from its oneDNN pack, at batch 1 and 3, and the frames
    are those of the same engine without packs."""
    calls = []
    real = PackedLinears._onednn_linear
    monkeypatch.setattr(PackedLinears, "_onednn_linear", lambda self, *a, **k: calls.append(self.rows) or real(self, *a, **k))
    frames = {}
    llm, tok = make_tiny_exports(tmp_path)
    for on in (True, False):
        engine = Engine.from_pretrained(llm, tok, "cpu", torch.bfloat16,
                                        cfg=EngineConfig(buckets=(256, 1024), attend_step=16, packed_gemm=on))
        frames[on] = engine.generate_codes(_rows(engine, [TEXTS[i] for i in order]))
        if on:   # a step after each stream position but the last: the longest row's frames + K - 1
            steps = max(f.shape[1] for f in frames[on]) + engine.K - 1
            assert set(calls) == {len(order)} and len(calls) == (7 * engine.model.cfg.num_layers + 1) * steps
            calls.clear()
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(frames[True], frames[False]))
