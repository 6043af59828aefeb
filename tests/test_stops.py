"""Generation that ends when the speech ends: the text budget, the silence and loop stops, and the
stop reason of every result, through the engine, the CLI, the server, the evaluation harness and
the fine-tuning stop check, with scripted stand-ins for the model and codec (scripted_models.py)."""
from __future__ import annotations

import base64
import json
import logging

import httpx
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from higgs_train.config import package_configs
from higgs_train.evaluate.evalset import EvalItem
from higgs_train.evaluate.harness import evaluate
from higgs_train.llm.stops import RATES, StopRules, expected_seconds, text_units
from inference.engine import Engine, Request
from inference.evaluation import EngineSynthesizer
from inference.sampling import SamplingConfig
from inference.server import ServerSettings, create_app
from inference.server_http import HttpLimits
from scripted_models import FPS, HOP, SCRIPTS, scripted_engine, text_tokenizer_dir
from server_common import serving

TEXT = "Hello there, how are you today?"          # expected 2.29 s: a budget of 143 frames
BUDGET = StopRules().budget(TEXT, FPS, 1500)[0]
OFF = StopRules.off()
SPEECH_FRAMES = 25                                # loops and goes_silent: 1 s of speech first


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return text_tokenizer_dir(tmp_path_factory.mktemp("stops"))


def frame_levels(audio: np.ndarray) -> np.ndarray:
    return np.sqrt((audio[:len(audio) // HOP * HOP].reshape(-1, HOP) ** 2).mean(1))


def test_expected_duration_counts_what_is_spoken():
    assert BUDGET == 143 and abs(expected_seconds(TEXT) - (24 * RATES["letter"] + RATES["pause"])) < 1e-9
    assert expected_seconds("[SPEAKER0] Hello [laugh] there <|scene_desc_start|>") == expected_seconds("Hello there")
    assert text_units("你好，世界。Room 42?! ...") == {"letter": 4, "cjk": 4, "digit": 2, "pause": 3}
    assert abs(expected_seconds("你好世界") - 4 * RATES["cjk"]) < 1e-9
    rules = StopRules()
    assert rules.budget("Hi.", FPS, 1500) == (75, "budget")                       # the 3 s floor
    assert rules.budget("word " * 400, FPS, 1500) == (1500, "max_frames")         # the hard cap
    assert rules.replace(budget_factor=0).budget(TEXT, FPS, 1500) == (1500, "max_frames")
    with pytest.raises(ValueError):
        rules.replace(loop_match=2)


def test_engine_ends_each_script_for_its_reason(tok):
    """Each stand-in ends within its budget for the right reason; the normal one is untouched."""
    want = {"normal": ("eos", 50), "never_ends": ("budget", BUDGET), "loops": ("loop", 40),
            "goes_silent": ("silence", SPEECH_FRAMES + 5)}
    engine = scripted_engine(tok, "normal")
    for script in SCRIPTS:
        engine.model.use(script)
        [res] = engine.generate([Request(TEXT)])
        reason, frames = want[script]
        assert res.stop_reasons == [reason] and res.stop_reason == reason, script
        assert res.codes.shape[1] == frames <= BUDGET and len(res.audio) == frames * HOP, script
        loud = frame_levels(res.audio) > 0.01
        if script == "goes_silent":   # speech kept, the silent tail trimmed to keep_silence_s (0.2 s)
            assert loud[:SPEECH_FRAMES].all() and not loud[SPEECH_FRAMES:].any()
        if script == "loops":         # at most one pass of the 20-frame loop kept (90 % match: 5 frames early)
            assert 20 - 5 <= frames - SPEECH_FRAMES <= 20
    # the normal model: bit-identical frames and audio with every guard on or off
    engine.model.use("normal")
    on = engine.generate([Request(TEXT, sampling=SamplingConfig(seed=1))])[0]
    off = engine.generate([Request(TEXT, sampling=SamplingConfig(seed=1), stops=OFF)])[0]
    assert torch.equal(on.codes, off.codes) and np.array_equal(on.audio, off.audio) and off.stop_reasons == ["eos"]


def test_budget_per_row_in_a_batch_per_chunk_and_overridable(tok):
    engine = scripted_engine(tok, "never_ends")
    short, long = "Hi.", "The quick brown fox jumps over the lazy dog, twice."
    a, b = engine.generate([Request(short), Request(long)])                  # one batch, two budgets
    assert a.codes.shape[1] == 75 and b.codes.shape[1] == StopRules().budget(long, FPS, 1500)[0] > 75
    engine.cfg.chunk_words = 3
    try:
        [two] = engine.generate([Request("One two three. Four five six.")])
    finally:
        engine.cfg.chunk_words = 40
    assert two.stop_reasons == ["budget", "budget"] and two.chunks == ["One two three.", "Four five six."]
    [cap] = engine.generate([Request(short, sampling=SamplingConfig(max_frames=40))])
    assert cap.stop_reasons == ["max_frames"] and cap.codes.shape[1] == 40
    [wide] = engine.generate([Request(short, stops=StopRules(budget_factor=10, budget_floor_s=4))])
    assert wide.codes.shape[1] == 100 and wide.stop_reasons == ["budget"]


def test_stream_reports_reasons_and_trims_what_it_holds(tok):
    engine = scripted_engine(tok, "goes_silent")
    reasons: list[str] = []
    audio = np.concatenate(list(engine.stream(Request(TEXT), reasons)))
    assert reasons == ["silence"]
    # what was streamed before the stop was heard stays sent; nothing after the stop is
    assert (SPEECH_FRAMES + 5) * HOP <= len(audio) <= (SPEECH_FRAMES + 50) * HOP
    engine.model.use("normal")
    reasons.clear()
    streamed = np.concatenate(list(engine.stream(Request(TEXT), reasons)))
    assert reasons == ["eos"] and len(streamed) == 50 * HOP


def test_cli_prints_the_stop_reason(tok, tmp_path, monkeypatch, caplog):
    from inference.__main__ import synthesize

    def load(script):
        monkeypatch.setattr(Engine, "from_pretrained",
                            classmethod(lambda cls, *a, quantize="none", **kw: scripted_engine(tok, script, **kw)))

    def run(*overrides):
        with initialize_config_dir(str(package_configs("inference") / "inference"), version_base="1.3"):
            cfg = compose("infer", overrides=["model=m", "tokenizer=t", f"text='{TEXT}'",
                                              f"output={tmp_path / 'o.wav'}", "progress=false", *overrides])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="inference"):
            synthesize(cfg)
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    load("never_ends")
    assert run() == ["stopped before the model ended: chunk 1/1 by budget"]
    assert run("stops.budget_factor=0", "sampling.max_frames=60") == \
        ["stopped before the model ended: chunk 1/1 by max_frames"]
    load("normal")
    assert run() == []


@pytest.fixture(scope="module")
def server(tok):
    engine = scripted_engine(tok, "normal")
    with serving(create_app(engine, ServerSettings()), HttpLimits()) as url:
        yield url, engine.model


def test_server_says_why_plain_and_streamed(server):
    url, model = server

    def post(**body):
        return httpx.post(url + "/v1/audio/speech", timeout=60,
                          json={"model": "higgs-audio", "input": TEXT, "response_format": "pcm", **body})

    for script, reason, frames in (("normal", "eos", 50), ("never_ends", "budget", BUDGET),
                                   ("goes_silent", "silence", SPEECH_FRAMES + 5), ("loops", "loop", 40)):
        model.use(script)
        r = post()
        assert r.status_code == 200 and r.headers["x-stop-reason"] == reason and len(r.content) == frames * HOP * 2
    model.use("never_ends")
    r = post(stops={"budget_factor": 1.0, "budget_floor_s": 0})                 # per request
    assert r.headers["x-stop-reason"] == "budget" and len(r.content) == 58 * HOP * 2
    bad = post(stops={"budget_factor": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stops"
    plain = post(stream=True).content                                          # a plain stream: the audio
    assert len(plain) == BUDGET * HOP * 2
    r = post(stream_format="sse", response_format="wav")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "speech.audio.done", "stop_reasons": ["budget"]}
    data = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert data[:4] == b"RIFF" and data[44:] == plain                          # the same bytes as the plain stream


@pytest.mark.slow
def test_harness_counts_stop_reasons_and_duration_ratio(tok, tmp_path):
    engine = scripted_engine(tok, "normal")
    synth = EngineSynthesizer(engine)

    def scripted(text, **kw):   # item text -> script
        engine.model.use(text.split()[0])
        return synth(text, **kw)

    items = [EvalItem(s, f"{s} says hello there, how are you today?") for s in SCRIPTS]
    res = evaluate(scripted, {}, items, tmp_path / "eval", progress=False)
    assert res.summary["stop_reasons"] == {"eos": 0.25, "budget": 0.25, "silence": 0.25, "loop": 0.25,
                                           "max_frames": 0.0}
    rows = {r["id"]: r for r in res.rows}
    assert [rows[s]["stop_reason"] for s in SCRIPTS] == ["eos", "budget", "loop", "silence"]
    for r in res.rows:
        assert abs(r["duration_ratio"] - r["seconds"] / expected_seconds(r["text"])) < 1e-3
    assert "duration_ratio" in res.summary["means"]


@pytest.mark.slow   # importing recipes.finetune loads lightning (~5 s)
def test_finetune_stop_check_counts_only_what_the_model_ended(tok):
    from recipes.finetune.stops import Sentence, speak

    engine = scripted_engine(tok, "normal")
    ref = (0.1 * np.ones(24000, np.float32), 24000, "a reference")
    sentences = [Sentence(TEXT, 2.0)]
    ok = speak(engine.model, engine.codec, engine.tok, sentences, ref, max_ratio=3.0)
    assert ok["stop_rate"] == 1.0 and ok["items"][0]["stop_reason"] == "eos" and ok["duration_ratio"] == 1.0
    bad = speak(engine.model.use("never_ends"), engine.codec, engine.tok, sentences, ref, max_ratio=3.0)
    # the engine's budget (143 frames) ends it before the stop check's cap (3 x 2 s = 150 frames)
    assert bad["stop_rate"] == 0.0 and bad["items"][0]["stop_reason"] == "budget"
    assert bad["items"][0]["generated_seconds"] == BUDGET / FPS


@pytest.mark.slow
def test_frames_before_a_stop_are_todays(tmp_path):
    """A real (tiny, random) model: the budget only ends the stream (and takes a smaller KV-cache
    bucket); what was drawn before the end of stream was fed equals a run with every rule off."""
    from inference.engine import EngineConfig
    from higgs_train.testing.tiny_exports import make_tiny_exports

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine.from_pretrained(*make_tiny_exports(tmp_path), cfg=EngineConfig(buckets=(128, 256)))
        req = dict(sampling=SamplingConfig(seed=3, max_frames=60))
        [off] = engine.generate([Request("Hi.", stops=OFF, **req)])                     # 65 + 60 + 9 slots: 256
        [on] = engine.generate([Request("Hi.", stops=StopRules(budget_floor_s=1), **req)])   # 65 + 25 + 9: 128
    finally:
        torch.set_num_threads(torch_threads)
    assert sorted(k[1] for k in engine.caches) == [128, 256]          # two buckets were used
    assert off.stop_reasons == ["max_frames"] and off.codes.shape[1] == 60
    assert on.stop_reasons == ["budget"] and on.codes.shape[1] == 25
    # codebook 0 of every kept frame, and every codebook of the frames drawn before the end of stream
    # was fed back (as at a natural end, the finer codebooks of the last K - 2 frames are drawn after it)
    drawn_before = 25 - engine.K + 2
    assert torch.equal(on.codes[0], off.codes[0, :25])
    assert torch.equal(on.codes[:, :drawn_before], off.codes[:, :drawn_before])
    assert not torch.equal(on.codes, off.codes[:, :25])   # (so the line above is the boundary)
