"""Generating with a Higgs TTS 3 release directory (the tiny reference checkpoint of
tests/fixtures/release_v3/, its audio tokenizer bundled): the engine's prompts and greedy frames
against the reference's (sglang-omni, cases.json / cases.safetensors), the family's stop rule
(higgs_train/families/higgs_tts3/delay_state.py), cloning from a clip, batching, streaming, the
converter both ways and the OpenAI route through the real openai client."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from higgs_train.families import Reference, family_of
from higgs_train.families.higgs_tts3.delay_state import ReleaseDelayState
from higgs_train.llm.delay import revert_delay
from higgs_train.llm.stops import StopRules
from inference.engine import Engine, EngineConfig, Row
from inference.request import Request
from inference.sampling import SamplingConfig
from stream_common import assert_streamed_equals_whole  # tests/ is on sys.path

FIX = Path(__file__).parent / "fixtures" / "release_v3"
TINY = FIX / "tiny"
BOC, EOC, K = 1024, 1025, 8
GREEDY = SamplingConfig(temperature=0, ras_window=0, max_frames=40, seed=0)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pretrained(TINY, TINY, cfg=EngineConfig(buckets=(256,), first_chunk_frames=4,
                                                               stream_chunk_frames=5))


@pytest.fixture(scope="module")
def ref():
    return json.loads((FIX / "cases.json").read_text())["cases"], load_file(str(FIX / "cases.safetensors"))


def prompt(engine, ref, name):
    cases, t = ref
    refs = [Reference(cases["clone"]["ref_text"], t["clone.ref_codes"].T)] if name == "clone" else []
    return engine.prompts.generation(cases[name]["text"], refs, [])


def test_prompt_ids_equal_the_reference(engine, ref):
    cases, t = ref
    for name in ("zero_shot", "clone"):
        ids, codes, amask = prompt(engine, ref, name)
        assert ids.tolist() == cases[name]["prompt_ids"], name
        assert int(amask.sum()) == cases[name]["n_placeholders"]
    ids, codes, amask = prompt(engine, ref, "clone")
    assert torch.equal(codes[amask], t["clone.ref_delayed"])      # the reference's delayed codes, 13 rows


def greedy(engine, ids, codes, amask, max_frames=40):
    row = Row(ids, codes, amask, GREEDY.replace(max_frames=max_frames), torch.Generator().manual_seed(0))
    [frames] = engine.generate_codes([row])
    return frames, row.watch.reason


def reference_frames(rows: torch.Tensor) -> torch.Tensor:
    """The reference's delayed rows [n, K] -> frames [K, n - K + 1] as its vocoder decodes them
    (codes >= 1024 read as 0)."""
    f = revert_delay(rows.T)[:, :rows.shape[0] - K + 1]
    return torch.where(f >= BOC, 0, f)


@pytest.mark.parametrize("name,stop_row,agree_to_row", [("zero_shot", 27, 27 + 1), ("clone", None, 39)])
def test_greedy_frames_equal_the_reference_up_to_the_stop(engine, ref, name, stop_row, agree_to_row):
    """zero_shot: codebook 0 draws EOS at rows 0-2 (ignored in the delay window, as the reference
    does) and at row 27 (the end); every code drawn up to the row after that is the reference's,
    later ones of the last codebook may differ (ours feeds EOS there, the reference a dropped code:
    the next test shows the logits agree). clone: no stop in 40 rows; our 40-frame limit forces the
    end after them, so all 40 rows agree."""
    _, t = ref
    rows = t[f"{name}.greedy_frames"]
    frames, reason = greedy(engine, *prompt(engine, ref, name))
    want = reference_frames(rows)
    if stop_row is not None:
        assert rows.shape[0] == stop_row + K - 1 and reason == "eos"
        assert frames.shape == want.shape == (K, stop_row)         # 27 frames, as the reference's
    else:
        assert reason == "max_frames" and frames.shape[1] == 40
    n = want.shape[1]
    f_idx, c_idx = torch.meshgrid(torch.arange(n), torch.arange(K), indexing="ij")
    drawn_before = (f_idx + c_idx <= agree_to_row).T                # the row each code was drawn at
    assert torch.equal(frames[:, :n][drawn_before], want[drawn_before])
    if name == "zero_shot":
        assert frames[0, :3].tolist() == [0, 0, 0]                 # the ignored EOS decodes as code 0
        assert int((frames[:, :n] != want).sum()) == 3              # 213 of 216 codes equal (codebook 7, rows 31-33)


def test_kv_cache_equals_recomputation(engine, ref):
    """The cached decode (prefill slices, attend windows, packed CPU linears) against recomputing
    every position without a cache: the same greedy frames, to the stop."""
    engine.cfg.prefill_chunk = 16      # the 39-position clone prompt in three slices
    try:
        for name in ("zero_shot", "clone"):
            rows = [Row(*prompt(engine, ref, name), GREEDY.replace(max_frames=30), torch.Generator()) for _ in range(2)]
            cached = engine.generate_codes(rows[:1])[0]
            assert torch.equal(cached, engine.generate_codes(rows[1:], use_cache=False)[0]) and cached.shape[1] >= 27
    finally:
        engine.cfg.prefill_chunk = EngineConfig().prefill_chunk


@pytest.mark.parametrize("name", ["zero_shot", "clone"])
def test_teacher_forced_on_the_reference_rows_our_argmax_is_every_reference_code(engine, ref, name):
    """Fed the reference's greedy rows, our model's argmax at each row is the reference's code
    (where the reference did not overwrite a codebook with BOS): where our greedy frames differ
    from the reference's it is the fed EOS, not the model."""
    _, t = ref
    rows = t[f"{name}.greedy_frames"]
    ids, codes, amask = prompt(engine, ref, name)
    n = rows.shape[0]
    ids = torch.cat([ids, torch.full((n,), -100)])
    codes = torch.cat([codes, rows])
    amask = torch.cat([amask, torch.ones(n, dtype=torch.bool)])
    with torch.no_grad():
        logits = engine.model(ids[None], codes[None], amask[None]).audio_logits[0]
    P = len(ids) - n
    pred = logits[P - 1:P - 1 + n].argmax(-1)                        # [n, K]: row r predicted at P-1+r
    sampled = torch.arange(n)[:, None] >= torch.arange(K)[None]      # not overwritten with BOS
    assert torch.equal(pred[sampled], rows[sampled])


def test_release_rule_in_the_delay_window_and_at_the_end():
    st = ReleaseDelayState(num_codebooks=K, bos=BOC, eos=EOC, audio_vocab=1026, max_frames=100)
    allowed = st.allowed()
    assert allowed[0, EOC] and not allowed[0, BOC] and allowed[1:, BOC].all() and allowed[1:].sum() == K - 1
    fed = st.push(torch.tensor([EOC] + [BOC] * 7))                  # row 0: codebook 0's EOS is ignored
    assert fed[0] == EOC and not st.done and st.stream[0, 1] == 0
    for r in range(1, 12):
        st.push(torch.tensor([5] * r + [BOC] * (K - r))[:K])
    assert not st.allowed()[1:, EOC].any()                          # only codebook 0 ends a stream
    st.push(torch.full((K,), EOC))                                 # row 12: codebook 0 ends it
    steps = 1
    while not st.done:
        fed = st.push(torch.full((K,), 7))
        steps += 1
    assert steps == K - 1 and fed[-1] == 7 and fed[:-1].eq(EOC).all()  # rows 12..18: the reference's 7 rows
    assert st.frames().shape == (K, 12)


def test_clone_from_a_clip_batched_equals_unbatched(engine, tmp_path):
    wav = load_file(str(FIX / "cases.safetensors"))["codec.wav"].float().numpy()   # 0.8 s
    sf.write(tmp_path / "ref.wav", wav, 24000)
    s = SamplingConfig(temperature=0.8, top_p=0.8, top_k=30, max_frames=20, seed=11)
    clone = Request("The quick fox.", reference_audio=tmp_path / "ref.wav", reference_text="A short reference clip.",
                    sampling=s, stops=StopRules.off())
    plain = Request("Hello there, how are you?", sampling=s.replace(seed=4), stops=StopRules.off())
    [refd] = engine.plan(clone).refs
    assert refd.codes.shape == (K, 20)                               # 0.8 s at 25 frames/s
    ids, codes, amask = engine.prompts.generation("The quick fox.", [refd], [])
    assert int(amask.sum()) == 20 + K - 1 and (ids == -100).sum() == 27
    both = engine.generate([clone, plain])
    alone = [engine.generate([r])[0] for r in (clone, plain)]
    for b, a in zip(both, alone):
        assert torch.equal(b.codes, a.codes) and b.codes.shape[1] >= 1
        assert np.abs(b.audio - a.audio).max() < 1e-4


def test_streaming_equals_one_shot(engine):
    req = Request("Hello there, how are you?", sampling=SamplingConfig(temperature=0.8, max_frames=30, seed=0),
                  stops=StopRules.off())
    [whole] = engine.generate([req])
    chunks = list(engine.stream(req))
    hop, c = engine.codec.hop, engine.cfg
    assert len(chunks) >= 3 and len(chunks[0]) == c.first_chunk_frames * hop
    assert len(whole.audio) == 30 * hop
    assert_streamed_equals_whole(chunks, whole.audio, hop, c.crossfade_frames)


def test_convert_both_ways_is_lossless_and_the_codec_travels(tmp_path, engine, ref):
    from higgs_train.convert import convert
    from higgs_train.tokenizer import AudioTokenizer

    assert convert(TINY, tmp_path / "native", "native") == ("llm", "original")
    assert convert(tmp_path / "native", tmp_path / "back", "original") == ("llm", "native")
    a, n, b = (load_file(str(d / "model.safetensors")) for d in (TINY, tmp_path / "native", tmp_path / "back"))
    assert set(a) == set(b) and len(a) == len(n) == 376
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert "layers.1.attn.q_norm.weight" in n and "body.norm.weight" not in n
    for f in ("codec_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "native" / f).read_bytes() == (TINY / f).read_bytes()
    assert family_of(tmp_path / "native").read_config(tmp_path / "native") == (engine.model.cfg, "native")
    wav = torch.from_numpy(load_file(str(FIX / "cases.safetensors"))["codec.wav"].float().numpy())[None]
    assert torch.equal(AudioTokenizer.from_pretrained(tmp_path / "native").encode(wav, 24000),
                       engine.codec.encode(wav, 24000))
    with pytest.raises(ValueError, match="layouts native, original"):
        convert(TINY, tmp_path / "hf", "hf")
    from higgs_train.llm.checkpoints import load_llm

    for d in (TINY, tmp_path / "native"):   # DualFFN's loader names the family instead of misreading it
        with pytest.raises(ValueError, match="a higgs_tts3 model, not DualFFN"):
            load_llm(d)
    # the native directory generates the same greedy frames
    native = Engine.from_pretrained(tmp_path / "native", tmp_path / "native", cfg=EngineConfig(buckets=(256,)))
    assert torch.equal(greedy(native, *prompt(native, ref, "clone"), max_frames=12)[0],
                       greedy(engine, *prompt(engine, ref, "clone"), max_frames=12)[0])


def test_openai_client_speaks_with_a_v3_release_directory(tmp_path):
    import httpx
    import openai

    from inference.server import ServerSettings, create_app
    from inference.server_http import HttpLimits
    from server_common import serving  # tests/ is on sys.path

    v3 = Engine.from_pretrained(TINY, TINY, cfg=EngineConfig(buckets=(256,), first_chunk_frames=4, stream_chunk_frames=4),
                                sampling=SamplingConfig(max_frames=10))
    app = create_app(v3, ServerSettings(max_input_chars=200, max_batch=4, batch_wait_ms=20))
    buf = io.BytesIO()
    sf.write(buf, load_file(str(FIX / "cases.safetensors"))["codec.wav"].float().numpy(), 24000, format="WAV")
    with serving(app, HttpLimits()) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        kw = dict(model="higgs-audio", voice="alloy", input="Hello there.", response_format="pcm",
                  extra_body={"seed": 5})
        plain = client.audio.speech.create(**kw).content
        assert 960 <= len(plain) // 2 <= 10 * 960                          # 16-bit PCM, 1 to 10 frames
        with client.audio.speech.with_streaming_response.create(**kw) as r:
            assert b"".join(r.iter_bytes()) == plain                       # streamed equals whole
        wav = client.audio.speech.create(**{**kw, "response_format": "wav"}).content
        audio, sr = sf.read(io.BytesIO(wav))
        assert sr == 24000 and len(audio) == len(plain) // 2
        cloned = httpx.post(url + "/v1/audio/speech", timeout=60, json={
            "model": "higgs-audio", "input": "Hello there.", "response_format": "pcm", "seed": 5,
            "reference_audio": base64.b64encode(buf.getvalue()).decode(), "reference_text": "A short reference clip."})
        assert cloned.status_code == 200, cloned.text
        assert 960 <= len(cloned.content) // 2 <= 10 * 960 and cloned.content != plain
