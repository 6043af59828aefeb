"""Training data: random fixed-length crops of the shards' 24 kHz FLAC, as an endless stream.

Every (rank, worker) stream reads its own disjoint set of shards (or, with fewer shards
than streams, its own disjoint set of samples chosen by key hash), reshuffles shards and
samples each epoch with an RNG seeded by (seed, stream, epoch), and batches inside the
worker. The stream is a pure function of those seeds, which is what lets a resumed run
continue with exactly the batches the uninterrupted run would have seen: the DataLoader
hands out batches round-robin over workers, so batch b comes from stream b % W, and a
run resuming at batch S fast-forwards each stream past its first (S + w) // W batches
(reading only FLAC headers while skipping).
"""
from __future__ import annotations

import io
import logging
import random
import zlib
from typing import Iterator

import lightning as L
import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from higgs_train.shards import SAMPLE_RATE, list_shards

log = logging.getLogger(__name__)


def read_crop(flac: bytes, start: int, n: int) -> np.ndarray:
    """n samples from `start` (zero-padded past the end), float32 mono."""
    with sf.SoundFile(io.BytesIO(flac)) as f:
        f.seek(min(start, f.frames))
        wav = f.read(n, dtype="float32", always_2d=True).mean(1)
    return np.pad(wav, (0, n - len(wav)))


class CropStream(IterableDataset):
    def __init__(self, shards: list[str], crop: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, shuffle_buffer: int = 256):
        super().__init__()
        if not shards:
            raise ValueError("no training shards")
        self.shards, self.crop, self.batch_size, self.seed = shards, crop, batch_size, seed
        self.rank, self.world_size, self.start_batch, self.shuffle_buffer = rank, world_size, start_batch, shuffle_buffer

    def _samples(self, stream: int, n_streams: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
        if len(self.shards) >= n_streams:
            shards, mine = self.shards[stream::n_streams], lambda key: True
        else:
            shards, mine = list(self.shards), lambda key: zlib.crc32(key.encode()) % n_streams == stream
        rng.shuffle(shards)
        ds = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                            empty_check=False, handler=wds.warn_and_continue)
        for s in ds:
            if "flac" in s and mine(s["__key__"]):
                yield s["__key__"], s["flac"]

    def _plans(self, stream: int, n_streams: int) -> Iterator[list[tuple[bytes, int]]]:
        """Endless batches of (flac, crop start); decoding is left to the caller."""
        epoch = 0
        batch: list[tuple[bytes, int]] = []  # an epoch's last partial batch continues into the next
        while True:
            rng = random.Random(f"{self.seed}/{stream}/{n_streams}/{epoch}")
            buf: list[bytes] = []
            seen = 0

            def plan(flac):
                try:
                    frames = sf.info(io.BytesIO(flac)).frames
                except Exception as e:  # a broken sample is skipped, never fatal
                    log.warning("skipping unreadable sample: %s", e)
                    return None
                return flac, rng.randint(0, max(0, frames - self.crop))

            def drain(final: bool):
                while buf and (final or len(buf) >= self.shuffle_buffer):
                    p = plan(buf.pop(rng.randrange(len(buf))))
                    if p is not None:
                        batch.append(p)
                    if len(batch) == self.batch_size:
                        yield list(batch)
                        batch.clear()

            for _, flac in self._samples(stream, n_streams, rng):
                buf.append(flac)
                seen += 1
                yield from drain(False)
            yield from drain(True)
            if seen == 0:
                raise RuntimeError(f"data stream {stream}/{n_streams} has no samples: "
                                   f"{len(self.shards)} shards for {n_streams} rank x worker streams")
            epoch += 1

    def __iter__(self):
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # this worker plays the stream whose turn comes first after `start_batch` batches
        virtual = (self.start_batch + worker) % n_workers
        skip = (self.start_batch + worker) // n_workers
        stream = self.rank * n_workers + virtual
        for i, plan in enumerate(self._plans(stream, self.world_size * n_workers)):
            if i < skip:
                continue
            wav = np.stack([read_crop(flac, start, self.crop) for flac, start in plan])
            yield torch.from_numpy(wav)[:, None]  # [B, 1, crop]


def fixed_clips(shards: list[str], n: int, seconds: float) -> torch.Tensor:
    """The first n samples of `shards`, centre crops of `seconds` -> [n, 1, T] (validation)."""
    T = int(seconds * SAMPLE_RATE)
    clips = []
    ds = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        empty_check=False, handler=wds.warn_and_continue)
    for s in ds:
        if "flac" not in s:
            continue
        frames = sf.info(io.BytesIO(s["flac"])).frames
        clips.append(read_crop(s["flac"], max(0, (frames - T) // 2), T))
        if len(clips) == n:
            break
    if not clips:
        raise ValueError(f"no validation audio in {shards}")
    return torch.from_numpy(np.stack(clips))[:, None]


class ShardAudioData(L.LightningDataModule):
    def __init__(self, shards, batch_size: int, crop_seconds: float, num_workers: int, shuffle_buffer: int,
                 seed: int, val_shards=None, val_clips: int = 4, val_seconds: float = 4.0):
        super().__init__()
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shard-*.tar found for data.shards={shards}")
        self.val_shards = list_shards(val_shards) if val_shards else self.shards
        self.batch_size, self.crop = batch_size, int(crop_seconds * SAMPLE_RATE)
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.val_clips, self.val_seconds = val_clips, val_seconds

    def train_dataloader(self):
        t = self.trainer
        ds = CropStream(self.shards, self.crop, self.batch_size, self.seed,
                        rank=t.global_rank if t else 0, world_size=t.world_size if t else 1,
                        start_batch=t.global_step if t else 0, shuffle_buffer=self.shuffle_buffer)
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        clips = fixed_clips(self.val_shards, self.val_clips, self.val_seconds)
        return DataLoader(list(clips), batch_size=len(clips))
