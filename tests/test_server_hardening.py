"""The speech server against hostile and careless clients, over real HTTP on
loopback: uvicorn servers in threads (inference.server_http.make_server, as `python -m
inference.server` runs), tiny random exports, raw sockets for what httpx will not send, and the
official `openai` client."""
from __future__ import annotations

import base64
import io
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from inference.engine import Engine, EngineConfig
from inference.sampling import SamplingConfig
from inference.server import OPENAI_VOICES, ServerSettings, create_app
from inference.server_http import HttpLimits, RateLimited, check_exposure
from higgs_train.testing.tiny_exports import make_tiny_exports
from inference.voices import VoiceLibrary
from server_common import free_port, serving, wait_up  # tests/ is on sys.path

KEY = "sk-test-0123456789"
MAX_CONN = 16
READ_TIMEOUT = 1.5
UPLOAD_MB = 1.0     # body cap: 4/3 of it + 1 MiB


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hardening")
    llm, tok = make_tiny_exports(root / "models")
    voices = VoiceLibrary(root / "voices")
    t = np.arange(24000) / 24000
    voices.add("alice", 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), 24000, "the quick brown fox")
    yield root, llm, tok, voices
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="module")
def plain(exports):
    """No key, short generations (10 frames), small body cap, short read deadline, few connections,
    voice_aliases."""
    root, llm, tok, voices = exports
    engine = Engine.from_pretrained(llm, tok, cfg=EngineConfig(buckets=(256, 512)),
                                    sampling=SamplingConfig(max_frames=10), voices=voices)
    app = create_app(engine, ServerSettings(max_input_chars=200, max_upload_mb=UPLOAD_MB,
                                            allowed_hosts=("localhost", "127.0.0.1", "::1"),
                                            voice_aliases={"echo": "alice", "narrator": "alice"}))
    with serving(app, HttpLimits(read_timeout_s=READ_TIMEOUT, keep_alive_s=1, max_connections=MAX_CONN)) as url:
        yield url, root


@pytest.fixture(scope="module")
def keyed(exports):
    """api_key, docs on, and generations long enough (up to 2000 frames) to abandon."""
    root, llm, tok, voices = exports
    engine = Engine.from_pretrained(llm, tok, cfg=EngineConfig(buckets=(256, 512, 4096), first_chunk_frames=4),
                                    sampling=SamplingConfig(max_frames=2000), voices=voices)
    app = create_app(engine, ServerSettings(api_key=KEY, docs=True))
    with serving(app, HttpLimits()) as url:
        yield url


def post(url, body, key=None, timeout=60, **kw):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/audio/speech", json={"model": "higgs-audio", **body}, headers=headers,
                      timeout=timeout, **kw)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert err["param"] == param and (code is None or err["code"] == code), err
    return err


def wav_with_rate(rate: int, data: bytes) -> bytes:
    """A 16-bit mono WAV whose header claims `rate` Hz."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt +
            b"data" + struct.pack("<I", len(data)) + data)


class PeakRSS:
    """Peak resident memory of this process (the server runs in it) while the block runs."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.stop = psutil.Process(), psutil.Process().memory_info().rss, 0, False
        self.th = threading.Thread(target=self._poll, daemon=True)
        self.th.start()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.th.join()

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- 8: the 1 Hz WAV bomb ---------------------------------------------------------------------------
def test_item8_one_hz_wav_is_refused_from_its_header(plain):
    url, _ = plain
    bomb = wav_with_rate(1, np.random.default_rng(0).integers(-3000, 3000, 1500).astype("<i2").tobytes())
    assert len(bomb) < 3200   # 1500 s at 1 Hz: 36 M samples (144 MB) once resampled to 24 kHz
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        r = post(url, {"input": "hi", "reference_audio": b64(bomb), "reference_text": "x"})
        took = time.perf_counter() - t0
    err = assert_error(r, 400, "reference_audio")
    assert "declares 1500.0 s" in err["message"], err
    assert took < 2.0 and mem.grew_mb < 40, (took, mem.grew_mb)

    # a plausible header that is too long is refused before decoding too
    long = wav_with_rate(8000, np.zeros(31 * 8000, "<i2").tobytes())
    r = post(url, {"input": "hi", "reference_audio": b64(long), "reference_text": "x"})
    assert "more than the 30 s allowed" in assert_error(r, 400, "reference_audio")["message"]
    # 16 bombs at once: the event loop stays free (decoding is off it) and memory stays flat
    with PeakRSS() as mem, httpx.Client(timeout=30) as c:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(16) as pool:
            futs = [pool.submit(post, url, {"input": "hi", "reference_audio": b64(bomb), "reference_text": "x"})
                    for _ in range(16)]
            t0 = time.perf_counter()
            assert c.get(url + "/health").status_code == 200
            health_s = time.perf_counter() - t0
            codes = [f.result().status_code for f in futs]
    assert codes == [400] * 16 and health_s < 1.0 and mem.grew_mb < 60, (codes, health_s, mem.grew_mb)


# ---- 9: uploads never reach ffmpeg's demuxers -----------------------------------------------------------
def test_item9_playlists_cannot_read_server_files(plain):
    url, root = plain
    secret = root / "secret.flac"   # ffmpeg's hls demuxer reads segments whose extension fits their format
    sf.write(secret, 0.3 * np.sin(np.arange(24000) / 5).astype(np.float32), 24000)
    for evil in (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n",
                 f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n",
                 f"ffconcat version 1.0\nfile '{secret}'\n",
                 f"ID3\x03\x00\x00\x00\x00\x00\x00#EXTM3U\n#EXTINF:1.0,\n{secret}\n"):
        r = post(url, {"input": "hi", "reference_audio": b64(evil.encode()), "reference_text": "x"})
        assert_error(r, 400, "reference_audio")
    # the formats that are accepted still clone
    for fmt in ("WAV", "FLAC", "OGG", "MP3"):
        buf = io.BytesIO()
        sf.write(buf, 0.2 * np.sin(np.arange(16000) / 9).astype(np.float32), 16000, format=fmt)
        r = post(url, {"input": "Hello.", "reference_audio": b64(buf.getvalue()), "reference_text": "a ref",
                       "response_format": "pcm"})
        assert r.status_code == 200 and len(r.content) > 0, (fmt, r.text)


# ---- 10: api_key ---------------------------------------------------------------------------------
def test_item10_api_key(keyed):
    import openai

    url = keyed
    assert httpx.get(url + "/health").status_code == 200                      # open
    assert httpx.get(url + "/").status_code == 200                            # the page itself holds nothing
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
        r = httpx.get(url + "/v1/models", headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
    assert_error(post(url, {"input": "hi"}), 401, code="invalid_api_key")
    assert_error(httpx.get(url + "/openapi.json"), 401, code="invalid_api_key")
    ok = {"authorization": f"Bearer {KEY}"}
    assert httpx.get(url + "/v1/models", headers=ok).json()["data"][0]["id"] == "higgs-audio"
    assert httpx.get(url + "/openapi.json", headers=ok).status_code == 200  # docs=True here
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_item10_open_host_needs_a_key(caplog):
    check_exposure("127.0.0.1", None, False)
    check_exposure("::1", None, False)
    check_exposure("0.0.0.0", "k", False)
    with pytest.raises(SystemExit, match="allow_insecure=true"):
        check_exposure("0.0.0.0", None, False)
    with caplog.at_level(logging.WARNING):
        check_exposure("192.168.1.5", None, True)
    assert "no api_key" in caplog.text
    # the CLI refuses before loading anything (the model paths do not exist)
    env = {**os.environ, "HIGGS_API_KEY": ""}
    p = subprocess.run([sys.executable, "-m", "inference.server", "model=/nonexistent", "tokenizer=/nonexistent",
                        "host=0.0.0.0"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0 and "refusing host=0.0.0.0 without api_key" in p.stderr, p.stderr[-2000:]
    assert "does not exist" not in p.stderr


@pytest.mark.slow
def test_item10_cli_takes_the_key_from_the_environment(exports):
    root, llm, tok, _ = exports
    port = free_port()
    env = {**os.environ, "HIGGS_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "inference.server", f"model={llm}", f"tokenizer={tok}",
                          f"port={port}", f"voices_dir={root / 'voices'}", "threads=1"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):   # bounded: 60 s for imports and the tiny model
            if p.poll() is not None:
                break
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert p.poll() is None, p.stderr.read()[-3000:]
        assert httpx.get(url + "/health").status_code == 200
        assert_error(httpx.get(url + "/v1/voices"), 401, code="invalid_api_key")
        ok = httpx.get(url + "/v1/voices", headers={"authorization": f"Bearer {KEY}"})
        assert ok.json()["voices"] == ["alice"] and ok.json()["aliases"]["nova"] == "default"
        assert_error(httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {KEY}",
                                                            "host": "attacker.example"}), 400, code="invalid_host")
        assert_error(httpx.get(url + "/docs", headers={"authorization": f"Bearer {KEY}"}), 404)
    finally:
        p.terminate()
        p.wait(timeout=20)


# ---- 11: an abandoned non-streaming request stops generating ---------------------------------------------
def test_item11_disconnect_cancels_generation(keyed):
    url = keyed
    port = int(url.rsplit(":", 1)[1])
    body = (b'{"model": "higgs-audio", "input": "Hello there, this is a long one.", "temperature": 0, '
            b'"response_format": "pcm"}')   # greedy on the tiny model: ~500 frames, seconds of CPU
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"authorization: Bearer " + KEY.encode() + b"\r\ncontent-length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    time.sleep(0.6)        # generating now
    s.close()              # the client goes away
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/audio/speech", timeout=60, headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "higgs-audio", "input": "Next.", "response_format": "pcm", "stream": True,
                            "seed": 1}) as r:
        assert r.status_code == 200
        first = next(c for c in r.iter_bytes() if c)
    waited = time.perf_counter() - t0
    assert len(first) > 0 and waited < 2.5, waited   # not behind the abandoned generation


# ---- 12: bodies capped while read, slow clients cut off, connections capped ------------------------------
def read_response(s: socket.socket) -> bytes:
    """One HTTP response (head + content-length body), or what came before the peer closed."""
    got = b""
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < int(
            (got.lower().split(b"content-length: ", 1)[1:] or [b"0"])[0].split(b"\r")[0]):
        part = s.recv(65536)
        if not part:
            break
        got += part
    return got


def raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return read_response(s)
    finally:
        s.close()


def test_item12_body_cap_while_reading(plain):
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    # a 400 MB Content-Length is refused before a byte of the body is read
    t0 = time.perf_counter()
    got = raw(port, head + b"content-length: 400000000\r\n\r\n" + b'{"model": ')
    assert got.startswith(b"HTTP/1.1 413") and b'"error"' in got and time.perf_counter() - t0 < 1.0, got[:200]
    # a chunked body is counted as it arrives: 413 once the cap is passed, without the rest of it
    cap = ServerSettings(max_upload_mb=UPLOAD_MB).max_body_bytes
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(head + b"transfer-encoding: chunked\r\n\r\n")
        piece = b'{"model": "higgs-audio", "input": "hi", "reference_audio": "' + b"A" * 65536
        sent = 0
        while sent < cap + 256 * 1024:      # never the terminating chunk: the old server waits for it
            s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sent += len(piece)
            piece = b"A" * 65536
        got = read_response(s)
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 413") and b"larger than" in got, got[:200]


def test_item12_uploads_held_at_once_are_bounded(plain):
    """Each large body costs ~3 copies of itself until decoded: 2 x decode_workers (2) are held at
    once; the next one is not read until one of them is done, while small requests go on."""
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    buf = io.BytesIO()
    sf.write(buf, 0.2 * np.sin(np.arange(5 * 16000) / 9).astype(np.float32), 16000, format="WAV")
    body = ('{"model": "higgs-audio", "input": "Hello.", "reference_text": "a ref", "response_format": "pcm", '
            '"reference_audio": "' + b64(buf.getvalue()) + '"}').encode()
    assert len(body) > 2 ** 17
    head = (b"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body))
    upload = lambda: httpx.post(url + "/v1/audio/speech", content=body, timeout=30,   # noqa: E731
                                headers={"content-type": "application/json"})
    holders = []
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        try:
            for _ in range(4):   # four uploads in the middle of their bodies
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(head + body[:1000])
                holders.append(s)
            time.sleep(0.3)
            fifth = pool.submit(upload)
            time.sleep(0.5)
            assert not fifth.done()    # waiting for a slot, its body not read
            assert httpx.post(url + "/v1/audio/speech", json={"model": "higgs-audio", "input": "Small.",
                                                              "response_format": "pcm"}).status_code == 200
        finally:
            for s in holders:
                s.close()
        r = fifth.result(timeout=20)
    assert r.status_code == 200 and len(r.content) > 0, r.text


def test_item12_stalled_clients_are_cut_off_and_cannot_lock_out_health(plain):
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    stalled = []
    for i in range(MAX_CONN + 8):    # more half-sent requests than the server takes connections
        s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT + 3)
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n"
                  + (b"\r\n{" if i % 2 else b""))
        stalled.append(s)
    t0 = time.perf_counter()
    assert httpx.get(url + "/health", timeout=2).status_code == 200
    assert time.perf_counter() - t0 < 1.0
    t0 = time.perf_counter()
    for s in stalled:   # each is closed by the server: evicted, or at the read deadline
        try:
            got = s.recv(1024)
        except ConnectionResetError:
            got = b""
        assert got == b"", got[:200]
        s.close()
    assert time.perf_counter() - t0 < READ_TIMEOUT + 2


STALL_SERVER = """
import sys, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from inference.server_http import HttpLimits, make_server
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
make_server(app, "127.0.0.1", int(sys.argv[1]), HttpLimits(read_timeout_s=30), log_level="info").run()
"""


def test_item12_descriptor_exhaustion_in_a_64_fd_process():
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", STALL_SERVER, str(port)], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL)
    socks = []
    try:
        wait_up(f"http://127.0.0.1:{port}")
        for _ in range(80):   # more than the process may open (the listen queue is 4 deep here: pace them)
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
            socks.append(s)
            time.sleep(0.005)
        time.sleep(0.5)
        t0 = time.perf_counter()
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).text == "ok"
        assert time.perf_counter() - t0 < 1.0
    finally:
        for s in socks:
            s.close()
        p.terminate()
        err = p.communicate(timeout=10)[1].decode(errors="replace")
    assert err.count("Too many open files") <= 1 and len(err) < 20000, err[-3000:]


def test_item12_accept_errors_logged_at_most_once_per_window():
    logger = logging.getLogger("test_rate_limited")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    logger.addFilter(RateLimited("out of system resource", every=0.2))
    try:
        err = OSError(24, "Too many open files")
        for _ in range(1000):
            logger.error("socket.accept() out of system resource", exc_info=(OSError, err, None))
        logger.error("an unrelated error")
        time.sleep(0.25)
        logger.error("socket.accept() out of system resource", exc_info=(OSError, err, None))
    finally:
        logger.removeHandler(handler)
    msgs = [r.getMessage() for r in seen]
    assert len(msgs) == 3 and msgs[1] == "an unrelated error", msgs
    assert "999 more like it" in msgs[2] and seen[2].exc_info is None


# ---- 13: validation, one error shape, docs off, Host check --------------------------------------------
def test_item13_validation_and_error_shape(plain):
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    assert_error(post(url, {"input": "hi", "seed": 2 ** 70}), 400, "seed")
    assert_error(post(url, {"input": "hi", "seed": -1}), 400, "seed")
    assert_error(post(url, {"input": "hi", "temperature": 5}), 400, "temperature")
    assert_error(post(url, {"input": "hi", "reference_audio": b64(b"RIFF"), "reference_text": "x" * 201}), 400,
                 "reference_text")
    for content in (b'{"model": "higgs-audio", "input": "h\xff\xfei"}', b'{"model": "higgs-audio", "input": "hi", '
                    b'"speed": NaN}', b'{"model": "higgs-audio", "input": "hi", "speed": Infinity}', b"\xef\xbb"):
        r = httpx.post(url + "/v1/audio/speech", content=content, headers={"content-type": "application/json"})
        assert_error(r, 400)
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert_error(httpx.get(url + path), 404)
    r = httpx.get(url + "/v1/models", headers={"host": "evil.example:8000"})   # DNS rebinding
    assert_error(r, 400, code="invalid_host")
    assert httpx.get(url + "/v1/models", headers={"host": f"localhost:{port}"}).status_code == 200
    got = raw(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400") and b'"error"' in got, got
    assert post(url, {"input": "Still here.", "response_format": "pcm"}).status_code == 200


# ---- 14: OpenAI's voice names and the real openai client ---------------------------------------------------
def test_item14_openai_client_plain_and_streamed(plain, keyed, tmp_path):
    import openai

    url, _ = plain
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)   # a server without api_key
    listed = httpx.get(url + "/v1/voices").json()
    assert listed["voices"] == ["alice"] and set(OPENAI_VOICES) <= set(listed["aliases"])
    assert listed["aliases"]["alloy"] == "default" and listed["aliases"]["echo"] == "alice"
    assert listed["aliases"]["narrator"] == "alice"

    def speak(voice, **kw):
        return client.audio.speech.create(model="tts-1", voice=voice, input="Hello there.", response_format="pcm",
                                          extra_body={"seed": 5}, **kw).content

    plain = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")   # as documented
    p = tmp_path / "a.wav"
    p.write_bytes(plain.content)
    wav, sr = sf.read(p)
    assert sr == 24000 and len(wav) > 0
    alloy, default = speak("alloy"), speak("default")
    assert alloy == default and len(alloy) > 0                 # a built-in name is the default voice
    assert speak("echo") == speak("alice") != default            # an alias speaks as its preset
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="shimmer", input="Hello there.",
                                                            response_format="pcm", extra_body={"seed": 5}) as r:
        streamed = b"".join(r.iter_bytes())
    assert streamed == default
    with pytest.raises(openai.BadRequestError, match="unknown voice"):
        speak("carol")
    keyed_client = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)   # and one with it
    got = keyed_client.audio.speech.create(model="tts-1", voice="nova", input="Hi.", response_format="pcm",
                                           extra_body={"seed": 2})
    assert len(got.content) > 0
