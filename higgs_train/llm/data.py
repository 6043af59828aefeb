"""LLM training data: pipeline shards -> chat samples -> token-budget batches, deterministically.

Stream (per epoch e, forever; the trainer stops at max_steps):
    shards, shuffled by (seed, e), split over ranks x workers ("readers")
    -> samples with codes, via webdataset (bad samples are skipped and counted)
    -> groups of consecutive segments of one source (the pipeline writes a source's segments
       together), so voice cloning and dialogue find their partners without an index
    -> one sample per segment: plain TTS, voice cloning or dialogue, drawn by `kinds` ratios, laid
       out by the model family's prompt encoder (higgs_train/families; the release's chat format by default)
    -> length bucketing: `buffer` samples sorted by length, cut into batches of at most
       `max_tokens` padded positions (rows x longest row), batch order shuffled
Everything random is seeded by (seed, epoch, ...), so the batch sequence is a pure function of
the config: resuming at batch N replays the stream's cheap part (no model work) and skips N.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from higgs_train.llm.delay import IGNORE
from higgs_train.llm.prompt import Sample
from higgs_train.shards import decode_codes, list_shards

log = logging.getLogger(__name__)


@dataclass
class Segment:
    key: str
    source: str
    speaker: str
    start: float
    text: str
    codes: np.ndarray  # [K, F]


def read_segments(shards: list[str]):
    """Segments of `shards` in order; samples without text or codes, or unreadable, are skipped."""
    import webdataset as wds

    if not shards:
        return
    ds = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        handler=wds.warn_and_continue, empty_check=False)
    for s in ds:
        try:
            row = json.loads(s["json"])
            codes = decode_codes(s["codes.npy"])
            text = (row.get("text") or "").strip()
        except (KeyError, ValueError, TypeError) as e:
            log.warning("skipping sample %s: %s", s.get("__key__"), e)
            continue
        if not text or codes.ndim != 2 or codes.shape[1] == 0:
            continue
        yield Segment(s["__key__"], str(row.get("source", "")), str(row.get("speaker", "")),
                      float(row.get("start", 0.0)), text, codes.astype(np.int64))


def source_groups(segments, max_group: int):
    """Runs of consecutive segments of one source (at most max_group), in time order."""
    group: list[Segment] = []
    for seg in segments:
        if group and (seg.source != group[0].source or len(group) >= max_group):
            yield sorted(group, key=lambda s: s.start)
            group = []
        group.append(seg)
    if group:
        yield sorted(group, key=lambda s: s.start)


def _seed(*parts) -> int:
    """A seed from parts, stable across processes and runs (unlike hash())."""
    return zlib.crc32("|".join(map(str, parts)).encode())


class SampleMaker:
    """Turns a source group into samples of the configured kinds, laid out by a model family's prompt
    encoder (higgs_train.families.PromptEncoder; None: the release's chat format, higgs_v2's)."""

    def __init__(self, tok, kinds: dict, max_len: int, max_dialogue_turns: int, num_codebooks: int,
                 codebook_size: int, prompts=None):
        if prompts is None:
            from higgs_train.families.higgs_v2 import ChatPrompts

            prompts = ChatPrompts(tok, num_codebooks, codebook_size)
        self.prompts = prompts
        self.kinds = {k: float(v) for k, v in kinds.items() if float(v) > 0}
        unknown = set(self.kinds) - {"tts", "clone", "dialogue"}
        if unknown or not self.kinds:
            raise ValueError(f"data.kinds must weigh tts/clone/dialogue, got {dict(kinds)}")
        lacking = sorted(set(self.kinds) - set(prompts.kinds))
        if lacking:   # asked of a family whose prompt layout has no such sample (Higgs TTS 3: no dialogue)
            raise ValueError(f"data.kinds asks for {', '.join(lacking)} samples, which this model family's prompts "
                             f"({type(prompts).__name__}) do not lay out: set "
                             + " ".join(f"data.kinds.{k}=0" for k in lacking))
        self.max_len = max_len
        self.max_turns = max_dialogue_turns

    def __call__(self, group: list[Segment], rng: random.Random):
        names, weights = zip(*self.kinds.items())
        for i, seg in enumerate(group):
            kind = rng.choices(names, weights)[0]
            sample = None
            if kind == "clone":
                refs = [s for s in group if s.speaker == seg.speaker and s is not seg]
                if refs:
                    ref = rng.choice(refs)
                    sample = self.prompts.clone(ref.text, ref.codes, seg.text, seg.codes)
            elif kind == "dialogue":
                turns = group[i:i + rng.randint(2, max(2, self.max_turns))]
                if len({s.speaker for s in turns}) >= 2:
                    sample = self.prompts.dialogue([(s.speaker, s.text, s.codes) for s in turns])
            if sample is None or len(sample) > self.max_len:   # no partner, or too long: plain TTS
                sample = self.prompts.tts(seg.text, seg.codes)
            if len(sample) <= self.max_len:
                yield sample


def bucket(samples: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Sort by length and cut greedily into batches with rows x longest <= max_tokens."""
    batches, cur = [], []
    for s in sorted(samples, key=len):
        if cur and (len(cur) + 1) * len(s) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(s)
    if cur:
        batches.append(cur)
    return batches


def collate(samples: list[Sample]) -> dict:
    """Right-padded tensors (causal attention needs no mask for right padding; pads carry no labels)."""
    B, T = len(samples), max(len(s) for s in samples)
    K = samples[0].audio_codes.shape[1]
    out = {"input_ids": torch.zeros(B, T, dtype=torch.long),
           "audio_codes": torch.zeros(B, T, K, dtype=torch.long),
           "audio_mask": torch.zeros(B, T, dtype=torch.bool),
           "audio_labels": torch.full((B, T, K), IGNORE, dtype=torch.long),
           "text_labels": torch.full((B, T), IGNORE, dtype=torch.long)}
    for i, s in enumerate(samples):
        n = len(s)
        out["input_ids"][i, :n] = torch.from_numpy(s.input_ids)
        out["audio_codes"][i, :n] = torch.from_numpy(s.audio_codes)
        out["audio_mask"][i, :n] = torch.from_numpy(s.audio_mask)
        out["audio_labels"][i, :n] = torch.from_numpy(s.audio_labels)
        out["text_labels"][i, :n] = torch.from_numpy(s.text_labels)
    out["num_tokens"] = torch.tensor(sum(len(s) for s in samples))   # real positions
    out["num_positions"] = torch.tensor(B * T)                       # padded positions
    return out


class LLMStream(IterableDataset):
    """Endless (or `epochs` long), deterministic stream of collated batches (a DataLoader with
    batch_size=None)."""

    def __init__(self, shards, tokenizer, kinds: dict, max_tokens: int, max_len: int, buffer: int,
                 max_group: int, max_dialogue_turns: int, seed: int, num_codebooks: int = 8,
                 codebook_size: int = 1024, rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                 limit_segments: int | None = None, epochs: int | None = None, prompts=None):
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shard-*.tar found for data.shards={shards}")
        if max_len > max_tokens:
            raise ValueError(f"max_len {max_len} > max_tokens {max_tokens}: a long sample could never fit")
        self.maker = SampleMaker(tokenizer, kinds, max_len, max_dialogue_turns, num_codebooks, codebook_size,
                                 prompts)
        self.max_tokens, self.buffer, self.max_group, self.seed = max_tokens, buffer, max_group, seed
        self.rank, self.world_size = rank, world_size
        self.skip_batches = skip_batches   # batches the trainer already consumed (resume)
        self.limit_segments = limit_segments
        self.epochs = epochs               # None: endless (training); 1: one pass (validation)

    def _worker(self) -> tuple[int, int]:
        """(logical worker, workers). The DataLoader reads workers round-robin from worker 0, so
        global batch j comes from logical worker j % nw; a loader resumed at batch N gives its
        worker w the role of worker (w + N) % nw, so the round-robin continues where it stopped."""
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        return (w + self.skip_batches) % nw, nw

    def _reader(self) -> tuple[int, int]:
        """(reader index, readers) over ranks x DataLoader workers."""
        w, nw = self._worker()
        return self.rank * nw + w, self.world_size * nw

    def my_shards(self, epoch: int) -> tuple[list[str], bool]:
        """This reader's shards for `epoch`, and whether they are its own (else groups are split)."""
        idx, readers = self._reader()
        order = list(self.shards)
        if not self.limit_segments:   # a limited run keeps the same first segments every epoch
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(order)
        by_shard = len(order) >= readers      # enough shards: split shards, else split groups
        return (order[idx::readers] if by_shard else order), by_shard

    def epoch_batches(self, epoch: int):
        """Batches (lists of samples, not yet collated) of this reader for `epoch`."""
        idx, readers = self._reader()
        mine, by_shard = self.my_shards(epoch)
        pending: list[Sample] = []
        n_flush = 0

        def flush():
            nonlocal n_flush
            batches = bucket(pending, self.max_tokens)
            random.Random(_seed(self.seed, epoch, idx, "batches", n_flush)).shuffle(batches)
            n_flush += 1
            pending.clear()
            return batches

        segments = itertools.islice(read_segments(mine), self.limit_segments)
        for gi, group in enumerate(source_groups(segments, self.max_group)):
            if not by_shard and gi % readers != idx:
                continue
            pending.extend(self.maker(group, random.Random(_seed(self.seed, epoch, group[0].key))))
            if len(pending) >= self.buffer:
                yield from flush()
        if pending:
            yield from flush()

    def __iter__(self):
        w, nw = self._worker()
        skip = max(0, (self.skip_batches - w + nw - 1) // nw)   # this worker's share of batches 0..N-1
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            produced = 0
            for samples in self.epoch_batches(epoch):
                produced += 1
                if skip:   # replayed, not collated
                    skip -= 1
                    continue
                batch = collate(samples)
                batch["epoch"] = torch.tensor(epoch)
                yield batch
            if produced == 0:
                raise RuntimeError(f"reader got no usable samples from {len(self.shards)} shard(s): "
                                   "too few shards/groups for ranks x workers, or no codes in them")
            epoch += 1
