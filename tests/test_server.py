"""The speech server over real HTTP on loopback (a uvicorn server in a thread, tiny random exports),
and its page at / driven by a real click in headless Chromium."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from higgs_train.audio import load_audio
from inference.engine import Engine, EngineConfig
from inference.sampling import SamplingConfig
from inference.server import ServerSettings, create_app
from inference.server_http import HttpLimits
from higgs_train.testing.tiny_exports import make_tiny_exports
from inference.voices import VoiceLibrary
from server_common import serving  # tests/ is on sys.path

MAX_FRAMES = 10


def tiny_app(root, **settings):
    """The server app on tiny random exports under root, one preset voice (alice)."""
    llm, tok = make_tiny_exports(root / "models")
    voices = VoiceLibrary(root / "voices")
    t = np.arange(24000) / 24000
    voices.add("alice", 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), 24000, "the quick brown fox")
    engine = Engine.from_pretrained(llm, tok, cfg=EngineConfig(buckets=(256, 512), first_chunk_frames=4,
                                                               stream_chunk_frames=4),
                                    sampling=SamplingConfig(max_frames=MAX_FRAMES), voices=voices)
    return create_app(engine, ServerSettings(max_input_chars=200, max_batch=8, batch_wait_ms=30, **settings))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("server")
    (root / "secret.txt").write_text("do not read")
    with serving(tiny_app(root), HttpLimits()) as url:   # as the CLI serves
        yield url, root
    torch.set_num_threads(n_threads)


def speech(url, timeout=60, **body):
    return httpx.post(url + "/v1/audio/speech", json={"model": "higgs-audio", **body}, timeout=timeout)


def decoded(data: bytes, fmt: str, tmp_path) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767
    p = tmp_path / f"r.{fmt}"
    p.write_bytes(data)
    wav, sr = load_audio(p)
    assert sr == 24000
    return wav


def test_happy_path_every_format(server, tmp_path):
    url, _ = server
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "higgs-audio"
    listed = httpx.get(url + "/v1/voices").json()
    assert listed["voices"] == ["alice"] and listed["aliases"]["alloy"] == "default"
    for fmt, media in (("wav", "audio/wav"), ("flac", "audio/flac"), ("mp3", "audio/mpeg"), ("pcm", "audio/pcm")):
        r = speech(url, input="Hello there.", voice="alice", response_format=fmt, seed=1)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
        wav = decoded(r.content, fmt, tmp_path)
        n = MAX_FRAMES * 960
        assert (n * 0.1 if fmt == "mp3" else 960) <= len(wav) <= n * 1.2, (fmt, len(wav))   # mp3 adds padding
        assert np.abs(wav).max() > 1e-3


def test_same_seed_same_audio_and_speed(server):
    url, _ = server
    a = speech(url, input="Hello there.", response_format="pcm", seed=7).content
    b = speech(url, input="Hello there.", response_format="pcm", seed=7).content
    assert a == b and len(a) > 0
    fast = speech(url, input="Hello there.", response_format="pcm", seed=7, speed=2.0).content
    assert abs(len(fast) / len(a) - 0.5) < 0.05


def test_streaming_wav_and_pcm(server, tmp_path):
    url, _ = server
    whole = speech(url, input="Hello there.", response_format="pcm", seed=3).content
    with httpx.stream("POST", url + "/v1/audio/speech", timeout=60,
                      json={"model": "higgs-audio", "input": "Hello there.", "response_format": "pcm",
                            "seed": 3, "stream": True}) as r:
        assert r.status_code == 200
        parts = [c for c in r.iter_bytes() if c]
    streamed = b"".join(parts)
    assert len(streamed) == len(whole)
    r = speech(url, input="Hello there.", response_format="wav", seed=3, stream=True)
    assert r.content[:4] == b"RIFF" and struct.unpack("<I", r.content[40:44])[0] == 0xFFFFFFFF
    assert len(r.content) == 44 + len(whole)


def test_reference_upload_clones(server):
    url, _ = server
    buf = io.BytesIO()
    sf.write(buf, 0.2 * np.sin(np.arange(16000) / 10).astype(np.float32), 16000, format="FLAC")
    b64 = base64.b64encode(buf.getvalue()).decode()
    r = speech(url, input="Hello.", reference_audio=b64, reference_text="a reference", response_format="pcm")
    assert r.status_code == 200 and len(r.content) > 0
    r = speech(url, input="Hello.", reference_audio="data:audio/flac;base64," + b64, reference_text="ref",
               response_format="pcm")
    assert r.status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"),
    ({"input": "   "}, "input"),
    ({"input": "x" * 201}, "input"),
    ({"input": "hi", "voice": "carol"}, "voice"),
    ({"input": "hi", "voice": "../secret.txt"}, "voice"),
    ({"input": "hi", "voice": "../../etc/passwd"}, "voice"),
    ({"input": "hi", "voice": "/etc/passwd"}, "voice"),
    ({"input": "hi", "voice": "alice/../alice"}, "voice"),
    ({"input": "hi", "response_format": "ogg"}, "response_format"),
    ({"input": "hi", "response_format": "mp3", "stream": True}, "response_format"),
    ({"input": "hi", "speed": 9}, "speed"),
    ({"input": "hi", "model": "gpt-4"}, "model"),
    ({"input": "hi", "reference_audio": "not base64!", "reference_text": "x"}, "reference_audio"),
    ({"input": "hi", "reference_audio": base64.b64encode(b"not audio at all").decode(), "reference_text": "x"},
     "reference_audio"),
    ({"input": "hi", "reference_audio": base64.b64encode(b"x").decode()}, "reference_text"),   # before decoding
    ({"voice": "alice"}, "input"),
    ({"input": 5}, "input"),
])
def test_bad_requests_get_4xx_json(server, body, param):
    url, _ = server
    r = httpx.post(url + "/v1/audio/speech", json={"model": "higgs-audio", **body}, timeout=30)
    assert 400 <= r.status_code < 500, (body, r.status_code)
    err = r.json()["error"]
    assert err["message"] and err["param"] == param, err
    assert "do not read" not in r.text


def test_malformed_requests_and_server_keeps_serving(server):
    url, _ = server
    for raw in (b"{not json", b"", b"[1, 2]", json.dumps({"input": "hi"}).encode()):
        r = httpx.post(url + "/v1/audio/speech", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.status_code, r.text)
        assert "error" in r.json()
    assert httpx.get(url + "/nope").status_code == 404 and "error" in httpx.get(url + "/nope").json()
    assert httpx.get(url + "/v1/audio/speech").status_code == 405
    # a 20 s reference (500 frames) + text overflows the largest KV-cache bucket (512): found by the
    # engine in its worker thread, still a 400
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(20 * 16000) / 7).astype(np.float32), 16000, format="FLAC")
    r = speech(url, input="hi", reference_audio=base64.b64encode(buf.getvalue()).decode(), reference_text="ref")
    assert r.status_code == 400 and "bucket" in r.json()["error"]["message"]
    assert speech(url, input="Still here.", response_format="pcm").status_code == 200


def test_eight_concurrent_requests_all_succeed(server, tmp_path):
    url, _ = server
    texts = [f"Request number {i}." for i in range(8)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda t: speech(url, input=t, response_format="wav", seed=1, timeout=120), texts))
    took = time.perf_counter() - t0
    assert [r.status_code for r in rs] == [200] * 8
    for r in rs:
        assert len(decoded(r.content, "wav", tmp_path)) > 0
    assert took < 90


def test_index_page(server):
    url, _ = server
    r = httpx.get(url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for needle in ('id="text"', 'id="voice"', 'id="ref_audio"', 'id="speak"', "/v1/audio/speech", "<audio"):
        assert needle in r.text


# ---- the page at / in headless Chromium: type text, click Speak, get playable audio ---------------
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser(test):
    """Slow, and skipped without Debian's chromium + chromium-driver or selenium."""
    marks = [pytest.mark.slow,
             pytest.mark.skipif(not CHROMIUM.exists() or not Path(DRIVER).exists(),
                                reason="Debian chromium + chromium-driver not installed "
                                       "(apt-get install -y chromium chromium-driver)"),
             pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                                reason="selenium not installed (pip install selenium)")]
    for mark in marks:
        test = mark(test)
    return test


def click_speak(url: str, key: str | None = None) -> None:
    """Open the page, (type the key,) pick the preset, click Speak: playable audio comes back."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(url + "/")
        if key:
            driver.find_element(By.ID, "key").send_keys(key)
            driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#voice option")) == 2)
        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys("Hello from the browser.")
        driver.find_element(By.ID, "voice").find_elements(By.TAG_NAME, "option")[1].click()   # alice
        driver.find_element(By.ID, "speak").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
        status = driver.find_element(By.ID, "status").text
        assert status.startswith("done"), status
        assert int(status.split()[1]) > 1000                                   # bytes of wav
        assert driver.find_element(By.ID, "player").get_attribute("src").startswith("blob:")
        link = driver.find_element(By.ID, "download")
        assert link.is_displayed() and link.get_attribute("download") == "speech.wav"
        duration = driver.execute_async_script(
            "const done = arguments[0], p = document.getElementById('player');"
            "if (p.readyState >= 1) done(p.duration); else p.onloadedmetadata = () => done(p.duration);")
        assert 0.03 < duration < 1.0, duration                                 # <= 10 frames at 25/s
    finally:
        driver.quit()


@browser
def test_page_click_in_headless_chromium(server):
    click_speak(server[0])


@browser
def test_page_sends_the_api_key(tmp_path):
    with serving(tiny_app(tmp_path, api_key="sk-page-test"), HttpLimits()) as url:
        assert httpx.get(url + "/v1/voices").status_code == 401
        click_speak(url, key="sk-page-test")
