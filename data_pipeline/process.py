"""One source through the configured stages (the per-source half of a curation run, in a worker
process or inline): build the stage list, run it on a Source, write the source's part and record.
See data_pipeline/run.py for the whole run and data_pipeline/source.py for the stage protocol."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from data_pipeline import cores
from data_pipeline.config import build_stage
from data_pipeline.records import PARTS, SHA1_DIR, identity, load_record, new_record, save_record, write_json
from data_pipeline.source import Source
from data_pipeline.stages.ingest import source_key
from higgs_train.files import remove_stale_temps

log = logging.getLogger("data_pipeline")

# Keys that say how a stage runs, not what it computes (up to float rounding): changing them
# (a bigger batch on a GPU machine, more threads) keeps finished sources.
EXECUTION_KEYS = ("batch_size", "threads", "device")
# The stage whose settings (shard size) act only when finalize packs the shards: changing them
# keeps finished sources. filter is no stage at all: it acts at finalize, on the stored records.
PACKING_STAGE = "export"
DEFAULT_COST = 0.05   # a stage's share of a source's time when its class does not say (`cost`)


def _without_execution_keys(node):
    if isinstance(node, dict):
        return {k: _without_execution_keys(v) for k, v in node.items() if k not in EXECUTION_KEYS}
    if isinstance(node, list):
        return [_without_execution_keys(v) for v in node]
    return node


def processing_fingerprint(cfg: DictConfig) -> str:
    """What a source's record depends on: the stage list and each stage's settings (execution keys,
    at any depth, and the packing settings aside). A change redoes the sources; a rerun with the
    same keeps them."""
    groups = {"stages": list(cfg.stages)}
    for g in cfg.stages:
        if g == PACKING_STAGE:
            continue
        node = OmegaConf.to_container(cfg[g], resolve=True) if cfg.get(g) is not None else None
        groups[g] = _without_execution_keys(node)
    return hashlib.sha1(json.dumps(groups, sort_keys=True).encode()).hexdigest()[:16]


Stages = list  # [(name, stage)]: cfg.stages in order, each with run(src) (data_pipeline/source.py)


def build_stages(cfg: DictConfig) -> Stages:
    """cfg.stages, built in order; a stage whose config has no _target_ (transcribe=none) is left out."""
    out = []
    for name in cfg.stages:
        if name not in cfg:
            raise ValueError(f"stages lists {name!r}, but the config has no {name!r} key: add its config group "
                             f"(configs/pipeline/{name}/X.yaml, then +{name}=X) or +{name}._target_=module.Class")
        stage = build_stage(cfg[name])
        if stage is not None:
            if not callable(getattr(stage, "run", None)):
                raise TypeError(f"stage {name!r} ({type(stage).__name__}) has no run(src) method "
                                "(the stage protocol: data_pipeline/source.py)")
            out.append((name, stage))
    return out


@dataclass
class Context:
    input_dir: Path
    out_dir: Path
    fingerprint: str
    # progress(rel, fraction) inside one source, so a multi-hour file moves the bar while it runs:
    # Progress.partial inline, a queue's put in worker processes (None: not reported)
    progress: Callable | None = None

    def report(self, rel: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress((rel, fraction))


def _claim_sha1(ctx: Context, sha1: str, key: str, rel: str) -> str | None:
    """Register this source's audio hash; return an earlier-sorting input with the same audio,
    if one has registered it (then this source is a duplicate and need not be processed).
    Finalize makes the same decision from the records, so a race here only costs time."""
    d = ctx.out_dir / SHA1_DIR / sha1
    d.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(d / key)   # from a run killed while writing this claim
    write_json(d / key, rel)
    others = []
    for p in d.iterdir():
        if p.name != key and not p.name.startswith("."):
            try:
                others.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
    earlier = sorted(o for o in others if o < rel and (ctx.input_dir / o).is_file())
    return earlier[0] if earlier else None


def process_source(rel: str, stages: Stages, ctx: Context) -> dict:
    """Run every stage on one source, in order, until one ends it; write its part and record.
    Never raises for bad input: whatever goes wrong becomes a rejection with a reason. Returns a
    small summary."""
    key = source_key(rel)
    parts = ctx.out_dir / PARTS
    old = load_record(ctx.out_dir, rel)
    transcribed = any(getattr(stage, "produces_text", False) for _, stage in stages)
    rec = new_record(rel, ctx.fingerprint, identity(ctx.input_dir / rel), transcribed=transcribed)

    def claim(sha1: str) -> str | None:
        if old and old.get("sha1") not in (None, sha1):  # a replaced input: drop its old audio's claim
            (ctx.out_dir / SHA1_DIR / old["sha1"] / key).unlink(missing_ok=True)
        return _claim_sha1(ctx, sha1, key, rel)

    src = Source(rel, ctx.input_dir / rel, rec, parts, claim)
    costs = [float(getattr(stage, "cost", DEFAULT_COST)) for _, stage in stages]
    total = sum(costs) or 1.0
    done = 0.0   # share of the source done before the running stage
    # wall and CPU seconds per stage (CPU: every thread of this process; their ratio is the cores it kept busy)
    t, cpu = time.perf_counter(), time.process_time()

    def clock(name: str) -> None:
        nonlocal t, cpu
        now, now_cpu = time.perf_counter(), time.process_time()
        rec["timings"][name] = rec["timings"].get(name, 0.0) + now - t
        rec["cpu_timings"][name] = rec["cpu_timings"].get(name, 0.0) + now_cpu - cpu
        t, cpu = now, now_cpu

    try:
        for (name, stage), cost in zip(stages, costs):
            src.stage = name
            src.progress = lambda f, lo=done, w=cost / total: ctx.report(rel, lo + w * min(max(f, 0.0), 1.0))
            cores.follow()  # torch's threads: this worker's share of the cores now
            stage.run(src)
            clock(name)
            done += cost / total
            ctx.report(rel, done)
            if src.ended:
                break
    except Exception as e:  # a bug or a model failure on this input: reject the source, keep going
        # Disk full, out of memory, ...: not this file's fault; the next run processes it again.
        transient = isinstance(e, (OSError, MemoryError))
        log.warning("%s failed in stage %s%s:\n%s", rel, src.stage, " (retried on the next run)" if transient else "",
                    traceback.format_exc())
        clock(src.stage)
        rec["segments"] = []
        first = stages[0][0] if stages else "ingest"
        rec["rejected"] = [r for r in rec["rejected"] if r["stage"] == first]
        detail = f"{type(e).__name__}: {e}"[:500]
        if transient:
            rec["retry"] = True
        src.end("transient_error" if transient else "error",
                f"{detail} (retried on the next run)" if transient else detail)
    finally:
        if src.audio is not None:
            src.audio.cleanup()
    return save_record(rec, parts)
