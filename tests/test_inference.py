"""Inference engine on tiny random exports: KV cache == recomputation, delay pattern, batching,
streaming, sampling, voices, text chunking and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir

from higgs_train.config import package_configs
from higgs_train.llm.stops import StopRules
from inference.engine import Engine, EngineConfig, Request, RequestError
from inference.sampling import SamplingConfig, filter_logits, sample_frame
from inference.text import split_text
from higgs_train.testing.tiny_exports import make_tiny_exports
from inference.voices import VoiceError, VoiceLibrary
from stream_common import assert_streamed_equals_whole  # tests/ is on sys.path

GREEDY = SamplingConfig(temperature=0, max_frames=24)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_tiny_exports(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(exports, tmp_path_factory):
    voices = VoiceLibrary(tmp_path_factory.mktemp("voices"))
    t = np.arange(24000 * 2) / 24000
    voices.add("alice", 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), 24000, "the quick brown fox")
    voices.add("bob", 0.3 * np.sin(2 * np.pi * 140 * t).astype(np.float32), 24000, "a lazy dog")
    cfg = EngineConfig(buckets=(256, 1024), chunk_words=6, first_chunk_frames=5, stream_chunk_frames=7)
    return Engine.from_pretrained(*exports, cfg=cfg, voices=voices)


def rows(engine, texts, sampling=GREEDY, **kw):
    reqs = [Request(t, sampling=sampling, **kw) for t in texts]
    return [engine.row(r, engine.plan(r)) for r in reqs]


@pytest.mark.slow
def test_kv_cache_equals_full_recomputation(engine):
    for text, voice in (("Hello there.", None), ("the quick brown fox", "alice")):
        cached = engine.generate_codes(rows(engine, [text], voice=voice))[0]
        full = engine.generate_codes(rows(engine, [text], voice=voice), use_cache=False)[0]
        assert cached.shape == (8, 24)
        assert torch.equal(cached, full)
    # a prefill cut into slices fills the cache the same way
    engine.cfg.prefill_chunk = 7
    try:
        sliced = engine.generate_codes(rows(engine, ["Hello there."]))[0]
    finally:
        engine.cfg.prefill_chunk = 1024
    assert torch.equal(sliced, engine.generate_codes(rows(engine, ["Hello there."]))[0])


def test_delay_pattern_eos_propagation(engine):
    """EOS drawn by codebook 3 at position 12 ends the stream at frame 9 in every codebook (the delay
    state the engine's family gives; tests/test_delay_state.py holds the rule alone)."""
    K, bos, eos = engine.K, engine.bos, engine.eos
    assert engine.family.delay_state(engine.model.cfg, 100).allowed()[5].sum() == 1   # frame <= 0: BOS only
    state = engine.family.delay_state(engine.model.cfg, 100)
    for j in range(1, 12):
        state.push(torch.full((K,), 7))
    assert state.frames().shape == (K, 11 - K + 1)                           # partial: frames fully known
    state.push(torch.tensor([7, 7, 7, eos, 7, 7, 7, 7]))
    # codebook 0 is at frame 13 >= EOS frame 9: EOS only; codebook 7 is at frame 6: any code or EOS
    allowed = state.allowed()
    assert allowed[0].sum() == 1 and allowed[0, eos]
    assert allowed[7].sum() == 1025 and not allowed[7, bos]
    while not state.done:
        state.push(torch.full((K,), 7))
    assert state.j == 9 + K - 1
    codes = state.frames()
    assert codes.shape == (K, 9 - 1) and (codes == 7).all()


def test_generation_ends_on_eos_and_max_frames(engine):
    """A model whose audio head always prefers EOS ends after one frame; max_frames bounds the rest."""
    head = engine.model.audio_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.view(8, -1, head.shape[1])[:, engine.eos] += 5.0    # every codebook prefers EOS
        codes = engine.generate_codes(rows(engine, ["Hello there."]))[0]
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert codes.shape == (8, 1)      # EOS is allowed from frame 2 on: exactly one real frame
    assert (codes < 1024).all()
    codes = engine.generate_codes(rows(engine, ["Hello there."], SamplingConfig(temperature=1.0, max_frames=9,
                                                                               seed=1)))[0]
    assert codes.shape[1] <= 9 and (codes < 1024).all()


def test_batch_equals_each_alone(engine):
    texts = ["Hello there.", "the quick brown fox jumps over a lazy dog", "How are you today?"]
    alone = [engine.generate_codes(rows(engine, [t]))[0] for t in texts]
    batched = engine.generate_codes(rows(engine, texts))
    for a, b in zip(alone, batched):
        assert torch.equal(a, b)
    # seeded sampling: a row's codes do not depend on its neighbours either
    s = SamplingConfig(temperature=1.0, max_frames=16, seed=5)
    alone = engine.generate_codes(rows(engine, texts[1:2], s))[0]
    assert torch.equal(engine.generate_codes(rows(engine, texts, s))[1], alone)


def test_rows_that_finish_early_keep_their_own_length(engine):
    # a row done before its batch-mates must not grow EOS frames while the others decode
    short, long = SamplingConfig(temperature=0, max_frames=4), SamplingConfig(temperature=0, max_frames=20)
    text = "the quick brown fox jumps over a lazy dog"
    [alone] = engine.generate_codes(rows(engine, [text], short))
    mixed = engine.generate_codes(rows(engine, [text], short) + rows(engine, [text], long))
    assert torch.equal(mixed[0], alone) and alone.shape[1] <= 4
    assert max(int(c.max()) for c in mixed) < engine.codec.codebook_size   # no BOS/EOS leaks out


def test_streaming_equals_whole_within_crossfade(engine):
    s = SamplingConfig(temperature=0.9, max_frames=30, seed=3)
    req = Request("Hello there, my friend. How are you today?", sampling=s)
    [whole] = engine.generate([req])
    chunks = list(engine.stream(req))
    hop, c = engine.codec.hop, engine.cfg
    assert len(whole.chunks) == 2                                 # two text chunks, context fed back
    assert len(chunks) >= 3 and len(chunks[0]) == c.first_chunk_frames * hop
    assert_streamed_equals_whole(chunks, whole.audio, hop, c.crossfade_frames)


def test_voice_cloning_and_dialogue_prompts(engine):
    alice = engine.refs.voice("alice")
    assert alice.codes.shape == (8, 50)                           # 2 s at 25 frames/s
    plain = engine.prompts.generation("Hi.", [], [])
    cloned = engine.prompts.generation("Hi.", [alice], [])
    assert len(cloned[0]) - len(plain[0]) >= 50 + 8               # reference turn with its audio frames
    assert int(cloned[2].sum()) == 50 + 2 + 7 + 1                 # ref stream + the BOS frame to continue
    refs = engine.refs.for_request(Request("[SPEAKER0] hi [SPEAKER1] yo", voice="alice,bob"))
    assert [r.text for r in refs] == ["[SPEAKER0] the quick brown fox", "[SPEAKER1] a lazy dog"]
    with pytest.raises(RequestError, match="unknown voice"):
        engine.generate([Request("hi", voice="carol")])
    with pytest.raises(RequestError, match="empty"):
        engine.generate([Request("  ")])
    [res] = engine.generate([Request("the lazy dog", voice="alice", sampling=GREEDY)])
    assert res.codes.shape == (8, 24) and len(res.audio) == 24 * 960


def test_too_long_request_is_refused(engine):
    with pytest.raises(RequestError, match="bucket"):
        engine.generate([Request("hello", sampling=SamplingConfig(max_frames=2000),
                                 stops=StopRules(budget_factor=0))])   # budget off: max_frames decides


def test_voice_names_never_leave_the_folder(engine, tmp_path):
    lib = engine.voices
    (lib.root.parent / "secret").mkdir(exist_ok=True)
    (lib.root.parent / "secret" / "reference.txt").write_text("x")
    (lib.root / "link").symlink_to(lib.root.parent / "secret")
    for bad in ("../secret", "/etc", "..", ".", "a/b", "alice/../bob", "link", "", "x" * 200, ".hidden"):
        with pytest.raises(VoiceError):
            lib.get(bad)
    assert lib.names() == ["alice", "bob"]
    assert VoiceLibrary(None).names() == []


def test_sampling_filters_and_repetition_aware_resampling():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).sum() == 3
    p = logits.softmax(-1)[0]                                       # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, 0, 0.8))
    assert kept.tolist() == [[True, True, False, False, False]]   # 0.64 < 0.8 <= 0.64 + 0.24
    assert p[0] < 0.8 < p[0] + p[1]
    allowed = torch.ones(1, 5, dtype=torch.bool)
    cfg = SamplingConfig(temperature=0.01, top_k=0, top_p=1.0, ras_window=4, ras_max_repeats=2)
    g = torch.Generator().manual_seed(0)
    # code 0 seen twice in the window: redrawn from the untempered distribution (~36 % not 0)
    draws = [int(sample_frame(logits, cfg, torch.tensor([[0, 0, 3, 3]]), g, allowed)) for _ in range(400)]
    assert 0.25 < np.mean([d != 0 for d in draws]) < 0.47
    draws = [int(sample_frame(logits, cfg, torch.tensor([[1, 2, 3, 4]]), g, allowed)) for _ in range(50)]
    assert draws == [0] * 50                                       # no repeats: near-greedy
    with pytest.raises(ValueError):
        SamplingConfig().replace(temprature=1)


def test_split_text_keeps_sentences_and_speakers():
    assert split_text("One two. Three four five. Six.", 5) == ["One two. Three four five.", "Six."]
    chunks = split_text("[SPEAKER0] a b c. d e f. [SPEAKER1] g h.", 4)
    assert chunks == ["[SPEAKER0] a b c.", "[SPEAKER0] d e f.", "[SPEAKER1] g h."]
    assert split_text(" ".join(["w"] * 9), 4) == ["w w w w", "w w w w", "w"]


def test_cli_writes_audio_by_extension(exports, tmp_path):
    from inference.__main__ import synthesize

    for ext in ("wav", "flac", "mp3"):
        out = tmp_path / f"o.{ext}"
        with initialize_config_dir(str(package_configs("inference") / "inference"), version_base="1.3"):
            cfg = compose("infer", overrides=[f"model={exports[0]}", f"tokenizer={exports[1]}", "text=Hello there.",
                                              f"output={out}", "sampling.max_frames=12", "sampling.seed=0",
                                              "engine.buckets=[256]", "progress=false"])
        assert synthesize(cfg) > 0
        if ext != "mp3":
            wav, sr = sf.read(out)
            assert sr == 24000 and 0 < len(wav) <= 12 * 960
        else:
            assert out.stat().st_size > 500
