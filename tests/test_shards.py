"""The shard format: what the pipeline writes is what training reads, byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from higgs_train.shards import (ShardWriter, decode_flac, encode_flac, iter_shard, list_shards,
                                rewrite_shard)


def _sample(i: int, seconds: float = 0.5):
    rng = np.random.default_rng(i)
    wav = (0.1 * rng.standard_normal(int(24_000 * seconds))).astype(np.float32)
    row = {"id": f"src_{i:04d}", "text": f"utterance {i}", "duration": seconds}
    return row["id"], wav, row


def test_flac_round_trip_is_exact_at_16_bit():
    _, wav, _ = _sample(0)
    out, sr = decode_flac(encode_flac(wav))
    assert sr == 24_000 and len(out) == len(wav)
    assert np.max(np.abs(out - wav)) <= 1 / 32768 + 1e-7  # 16-bit quantisation only


def test_writer_splits_by_size_and_reader_sees_every_sample_once(tmp_path):
    with ShardWriter(tmp_path, max_bytes=60_000) as w:
        names = [w.write(k, encode_flac(wav), row, codes=np.full((8, 13), i, np.int16))
                 for i, (k, wav, row) in enumerate(map(_sample, range(10)))]
    shards = list_shards(tmp_path)
    assert len(shards) >= 3 and sorted(set(names)) == [s.rsplit("/", 1)[1] for s in shards]
    keys = [s["key"] for p in shards for s in iter_shard(p)]
    assert keys == [f"src_{i:04d}" for i in range(10)]
    first = next(iter_shard(shards[0]))
    assert first["row"]["text"] == "utterance 0" and first["codes"].shape == (8, 13)
    assert first["codes"].dtype == np.int16
    # no temporary files are left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_webdataset_reads_the_shards(tmp_path):
    with ShardWriter(tmp_path) as w:
        for k, wav, row in map(_sample, range(3)):
            w.write(k, encode_flac(wav), row)
    ds = wds.WebDataset(list_shards(tmp_path), shardshuffle=False).decode()
    got = list(ds)
    assert [s["__key__"] for s in got] == ["src_0000", "src_0001", "src_0002"]
    assert got[1]["json"]["text"] == "utterance 1"


def test_failed_writer_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path) as w:
            k, wav, row = _sample(0)
            w.write(k, encode_flac(wav), row)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_adds_codes_atomically(tmp_path):
    with ShardWriter(tmp_path) as w:
        for k, wav, row in map(_sample, range(2)):
            w.write(k, encode_flac(wav), row)
    path = list_shards(tmp_path)[0]
    before = list(iter_shard(path))
    rewrite_shard(path, [{**s, "codes": np.arange(16, dtype=np.int16).reshape(8, 2)} for s in before])
    after = list(iter_shard(path))
    assert [s["flac"] for s in after] == [s["flac"] for s in before]
    assert all(np.array_equal(s["codes"], np.arange(16).reshape(8, 2)) for s in after)


def test_keys_with_dots_are_refused(tmp_path):
    with ShardWriter(tmp_path) as w, pytest.raises(ValueError):
        w.write("a.b", b"", {})


def test_a_non_utf8_source_name_survives_the_shard(tmp_path):
    # os.walk gives undecodable name bytes as lone surrogates (PEP 383): the row is written with
    # \udcXX escapes instead of failing the export, and reads back as the same str
    _, wav, row = _sample(0)
    row["source"] = b"caf\xe9.wav".decode("utf-8", "surrogateescape")
    with ShardWriter(tmp_path) as w:
        w.write(row["id"], encode_flac(wav), row)
    [s] = list(iter_shard(list_shards(tmp_path)[0]))
    assert s["row"]["source"] == row["source"]
    assert __import__("os").fsencode(s["row"]["source"]) == b"caf\xe9.wav"


def test_rows_stamped_with_their_shard_name_across_rollovers(tmp_path):
    """shard_key: each KEY.json names the shard that holds it, also for the sample that rolls over."""
    flac = encode_flac(np.zeros(24000, np.float32))
    names = []
    with ShardWriter(tmp_path, max_bytes=3 * (len(flac) + 3000)) as w:
        for i in range(10):
            names.append(w.write(f"k{i}", flac, {"id": f"k{i}", "text": "x" * (i * 50)}, shard_key="shard",
                                 shard_prefix="shards/"))
    shards = list_shards(tmp_path)
    assert len(shards) >= 3 and len(set(names)) == len(shards)
    for p in shards:
        for s in iter_shard(p):
            assert s["row"]["shard"] == "shards/" + p.rsplit("/", 1)[-1], (s["key"], s["row"]["shard"], p)
