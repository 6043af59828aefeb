"""Data sharding under distribution: W ranks x K DataLoader workers ("readers").

Every sample is read by exactly one reader per epoch, for the LLM stream and the tokenizer's
crop stream, driven through their real split code with explicit rank/world arguments and the
DataLoader's worker identity (get_worker_info) set as a worker process would see it.
"""
import random
from types import SimpleNamespace

import pytest

import higgs_train.llm.data as llm_data
import higgs_train.tokenizer.data as tok_data
from higgs_train.testing.synthetic_llm import write_synthetic_shards
from higgs_train.llm.text_tokenizer import train_bpe
from higgs_train.shards import list_shards

# (W ranks, K workers): fewer, equal and more readers (W*K) than the 5 shards
GRID = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (3, 2), (2, 4), (4, 3)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    # 24 segments (12 sources of 2) in 5 shards of <= 5: some sources straddle two shards
    rows = write_synthetic_shards(d / "shards", n_sources=12, segments_per_source=2, words=(2, 3),
                                  samples_per_shard=5)
    tok = train_bpe([r["text"] for r in rows], d / "tok", vocab_size=300)
    return SimpleNamespace(shards=list_shards(d / "shards"), keys=sorted(r["id"] for r in rows), tok=tok)


def as_worker(monkeypatch, module, w, k):
    monkeypatch.setattr(module, "get_worker_info", lambda: SimpleNamespace(id=w, num_workers=k))


def llm_keys(corpus, monkeypatch, rank, world, w, k, epoch, skip_batches=0):
    """Segment keys the reader (rank, worker w of k) turns into samples in `epoch`."""
    as_worker(monkeypatch, llm_data, w, k)
    ds = llm_data.LLMStream(corpus.shards, corpus.tok, kinds={"tts": 1.0}, max_tokens=4096, max_len=2048,
                            buffer=8, max_group=8, max_dialogue_turns=2, seed=7, rank=rank, world_size=world,
                            skip_batches=skip_batches)
    seen = []
    ds.maker = lambda group, rng: seen.extend(s.key for s in group) or []   # record, make nothing
    list(ds.epoch_batches(epoch))
    return seen


def tok_keys(corpus, monkeypatch, rank, world, w, k):
    """Sample keys the tokenizer stream of (rank, worker w of k) reads in one epoch."""
    ds = tok_data.CropStream(corpus.shards, crop=240, batch_size=2, seed=7, rank=rank, world_size=world)
    stream = rank * k + w            # CropStream.__iter__'s stream index at start_batch=0
    return [key for key, _ in ds._samples(stream, world * k, random.Random(0))]


def check_partition(per_reader: dict, keys: list):
    every = [key for ks in per_reader.values() for key in ks]
    assert sorted(every) == keys, (len(every), len(keys))          # union = dataset, no duplicates
    assert all(per_reader.values()), {r: len(v) for r, v in per_reader.items()}   # nobody idle


@pytest.mark.parametrize("world,k", GRID)
def test_llm_readers_partition_the_data(corpus, monkeypatch, world, k):
    for epoch in (0, 1):
        per = {(r, w): llm_keys(corpus, monkeypatch, r, world, w, k, epoch) for r in range(world) for w in range(k)}
        check_partition(per, corpus.keys)
    if world * k <= len(corpus.shards):  # whole shards per reader, reshuffled between epochs
        e0 = {r: llm_keys(corpus, monkeypatch, r, world, 0, k, 0) for r in range(world)}
        e1 = {r: llm_keys(corpus, monkeypatch, r, world, 0, k, 1) for r in range(world)}
        assert e0 != e1


@pytest.mark.parametrize("world,k", GRID)
def test_tokenizer_readers_partition_the_data(corpus, monkeypatch, world, k):
    per = {(r, w): tok_keys(corpus, monkeypatch, r, world, w, k) for r in range(world) for w in range(k)}
    check_partition(per, corpus.keys)


def test_resumed_loader_keeps_the_partition(corpus, monkeypatch):
    """A loader resumed after N batches rotates worker roles; the readers still cover the data once."""
    world, k = 2, 3
    per = {(r, w): llm_keys(corpus, monkeypatch, r, world, w, k, 0, skip_batches=4)
           for r in range(world) for w in range(k)}
    check_partition(per, corpus.keys)


def test_more_readers_than_groups_fails_clearly(corpus, monkeypatch):
    # 24 segments, 32 readers: reader 31 gets nothing -> a clear error, not a silent skip or a hang
    as_worker(monkeypatch, llm_data, 15, 16)
    ds = llm_data.LLMStream(corpus.shards, corpus.tok, kinds={"tts": 1.0}, max_tokens=4096, max_len=2048,
                            buffer=8, max_group=8, max_dialogue_turns=2, seed=7, rank=1, world_size=2)
    with pytest.raises(RuntimeError, match="too few shards/groups for ranks x workers"):
        next(iter(ds))
    # one shard of 5 samples for 16 streams: a stream whose key-hash slice is empty fails the same way
    ds = tok_data.CropStream(corpus.shards[:1], crop=240, batch_size=1, seed=7, rank=0, world_size=16)
    empty = [s for s in range(16) if not list(ds._samples(s, 16, random.Random(0)))]
    assert len(empty) >= 11
    with pytest.raises(RuntimeError, match="has no samples"):
        next(ds._plans(empty[0], 16))
