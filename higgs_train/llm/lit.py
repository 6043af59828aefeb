"""Lightning wrappers for `python -m higgs_train.train task=llm`: module, data module, builder.

The model stays a plain nn.Module of its family (higgs_train/families: the size YAML's `family`
key, configs/model/llm/*.yaml; DualFFN's in higgs_train.llm.model); this file adds the optimiser
and schedule, logging, freezing / checkpointing options, the data position for exact resume, and
export (config.json + model.safetensors + text tokenizer files, written by the family).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from higgs_train.families import family_for_model, family_of, get, size_config
from higgs_train.llm.data import LLMStream

log = logging.getLogger(__name__)


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def gather_zero3_state_dict(model: torch.nn.Module, keep: bool) -> dict | None:
    """Whole CPU state dict of a ZeRO-3 partitioned model (call on every rank; `keep` on the one
    that writes it), or None when parameters are not partitioned (state_dict() is whole then)."""
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if keep else None


def check_family(family, model_dir) -> None:
    """ValueError when the LLM directory `model_dir` is not of `family` (the model size's)."""
    theirs = family_of(model_dir)
    if theirs.name != family.name:
        raise ValueError(f"task.init_from={model_dir} is a {theirs.name} model, but the model size is a {family.name} "
                         f"one: choose a {theirs.name} size (model=llm/...: its `family` key)")


class LLMModule(L.LightningModule):
    def __init__(self, model_cfg: dict, tokenizer_dir: str, optim: dict, text_loss_weight: float = 0.0,
                 freeze_text: bool = False, gradient_checkpointing: bool = False, init_from: str | None = None,
                 codebook_reduction: str = "mean"):
        super().__init__()
        self.model = self._make_model(model_cfg, init_from)
        self.family = family_for_model(self.model)
        # the model config travels in every checkpoint (weights too, so init_from is not needed again)
        self.save_hyperparameters({"model_cfg": {"family": self.family.name, **asdict(self.model.cfg)}, "tokenizer_dir": tokenizer_dir,
                                   "optim": optim, "text_loss_weight": text_loss_weight,
                                   "freeze_text": freeze_text, "gradient_checkpointing": gradient_checkpointing,
                                   "init_from": None, "codebook_reduction": codebook_reduction})
        self.optim = optim
        self.text_loss_weight = text_loss_weight
        self.codebook_reduction = codebook_reduction
        self.tokenizer_dir = tokenizer_dir
        self.model.gradient_checkpointing = gradient_checkpointing
        if freeze_text:   # train only what audio positions own (their norms, FFNs, embedding, head)
            audio = set(self.model.audio_parameter_names())
            for n, p in self.model.named_parameters():
                p.requires_grad_(n in audio)
        if not text_loss_weight and self.model.text_head.weight is not self.model.text_embed.weight:
            # no loss reaches the text head: freeze it, or weight decay alone would shrink it and
            # DDP would stop on a parameter without gradient (a head tied to the text embedding,
            # as Higgs TTS 3's, is that embedding: it trains through the inputs)
            self.model.text_head.weight.requires_grad_(False)
        self._t_last: float | None = None

    @staticmethod
    def _make_model(model_cfg: dict, init_from: str | None):
        family, cfg = size_config(model_cfg)
        if not init_from:
            return family.model_class(cfg)
        src = Path(init_from)
        cfg_file = src / "config.json"
        if family.name == "higgs_v2" and cfg_file.is_file() and json.loads(cfg_file.read_text()).get("model_type") == "llama":
            from higgs_train.llm.checkpoints import from_hf_llama

            # a plain Llama: text weights, audio FFNs as copies, fresh audio embedding and head
            model = from_hf_llama(src, dual_layers=cfg.dual_layers, num_codebooks=cfg.num_codebooks,
                                  codebook_size=cfg.codebook_size, vocab_size=cfg.vocab_size)
        else:   # a model of the size's family in any layout it reads (v2: ours, the port's, the release's)
            check_family(family, src)
            model = family.load(src)[0]
        if model.cfg != cfg:
            log.warning("init_from=%s: its config %s replaces model config %s", src, model.cfg, cfg)
        return model.float()

    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch["input_ids"], batch["audio_codes"], batch["audio_mask"],
                              batch["audio_labels"], batch["text_labels"], self.text_loss_weight,
                              self.codebook_reduction)
        now = time.perf_counter()
        B = batch["input_ids"].shape[0]
        kw = dict(on_step=True, on_epoch=False, batch_size=B)
        self.log("train/loss", out["loss"], prog_bar=True, **kw)
        self.log("train/audio_loss", out["audio_loss"], **kw)
        self.log("train/code_acc", out["code_acc"], prog_bar=True, **kw)
        if "text_loss" in out:
            self.log("train/text_loss", out["text_loss"], **kw)
        for k, v in enumerate(out["codebook_loss"]):
            self.log(f"train/cb{k}_loss", v, **kw)
        self.log("train/padding", 1 - batch["num_tokens"].float() / batch["num_positions"].float(), **kw)
        if self._t_last is not None:   # wall time since the previous step: data + forward + backward
            self.log("train/tokens_per_s", batch["num_tokens"].float() / (now - self._t_last), **kw)
        self._t_last = now
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        # runs only when the data module has val_shards and the trainer validates (limit_val_batches > 0)
        out = self.model.loss(batch["input_ids"], batch["audio_codes"], batch["audio_mask"],
                              batch["audio_labels"], batch["text_labels"], self.text_loss_weight,
                              self.codebook_reduction)
        kw = dict(on_step=False, on_epoch=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        self.log("val/loss", out["loss"], prog_bar=True, **kw)
        self.log("val/code_acc", out["code_acc"], **kw)
        return out["loss"]

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # no weight decay on norms (1-D); embeddings and matrices decay
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o["weight_decay"]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = o["decay_steps"]
        if total is None or total <= 0:
            raise ValueError("task.optim.decay_steps (default: trainer.max_steps) must be > 0")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, o["warmup_steps"], total, o["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self) -> None:
        # ZeRO-3 shards parameters over ranks: gather them on every rank (a collective) so that
        # export(), which train.py calls on rank 0 only, writes whole tensors.
        self._export_state = gather_zero3_state_dict(self.model, self.trainer.is_global_zero)

    def export(self, out_dir) -> None:
        """What inference loads: config.json, model.safetensors, text tokenizer files."""
        out = Path(out_dir)
        # one model.safetensors whatever the size (the export contract: docs/design.md)
        self.family.save(self.model, out, "native", state_dict=getattr(self, "_export_state", None),
                         max_shard_bytes=None)
        self.family.text_tokenizer(self.tokenizer_dir).save_pretrained(str(out))


class LLMDataModule(L.LightningDataModule):
    """Owns the data position: batches the training loop consumed, saved in every checkpoint.
    With `val_shards`, validation is one deterministic pass over them (the same batches every time)."""

    def __init__(self, shards, tokenizer, data: dict, seed: int, num_codebooks: int, codebook_size: int,
                 val_shards=None, prompts=None):
        super().__init__()
        self.shards, self.tokenizer, self.data, self.seed = shards, tokenizer, data, seed
        self.val_shards = val_shards
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.prompts = prompts   # the model family's PromptEncoder (None: DualFFN's chat format)
        self.consumed = 0

    def train_dataloader(self):
        d = self.data
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        ds = LLMStream(self.shards, self.tokenizer, kinds=d["kinds"], max_tokens=d["max_tokens"],
                       max_len=d["max_len"], buffer=d["buffer"], max_group=d["max_group"],
                       max_dialogue_turns=d["max_dialogue_turns"], seed=self.seed,
                       num_codebooks=self.num_codebooks, codebook_size=self.codebook_size,
                       rank=rank, world_size=world, skip_batches=self.consumed,
                       limit_segments=d["limit_segments"], prompts=self.prompts)
        return DataLoader(ds, batch_size=None, num_workers=d["num_workers"],
                          persistent_workers=False, prefetch_factor=4 if d["num_workers"] else None)

    def val_dataloader(self):
        if not self.val_shards:   # train.py's trainers keep limit_val_batches=0: never asked then
            return []
        d = self.data
        # every rank reads all of it (rank 0 of 1): a small held-out set, identical on each rank
        ds = LLMStream(self.val_shards, self.tokenizer, kinds=d["kinds"], max_tokens=d["max_tokens"],
                       max_len=d["max_len"], buffer=d["buffer"], max_group=d["max_group"],
                       max_dialogue_turns=d["max_dialogue_turns"], seed=self.seed,
                       num_codebooks=self.num_codebooks, codebook_size=self.codebook_size, epochs=1,
                       prompts=self.prompts)
        return DataLoader(ds, batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer is not None and self.trainer.training:
            self.consumed += 1   # called once per batch the training loop takes, not per prefetch
        return batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])


def build(cfg: DictConfig, module_cls=LLMModule, **module_kw):
    """task.build for train.py: (LLMModule, LLMDataModule) from the whole config. A task built on
    this one (fine-tuning) passes its LLMModule subclass and that class's extra arguments."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    family = get(model_cfg.get("family") or "higgs_v2")
    tok = family.text_tokenizer(cfg.text_tokenizer)
    n_tok = len(tok)
    if model_cfg.get("vocab_size") is None:
        model_cfg["vocab_size"] = 64 * math.ceil(n_tok / 64)   # rounded for matmul-friendly shapes
    elif model_cfg["vocab_size"] < n_tok:
        raise ValueError(f"model.vocab_size={model_cfg['vocab_size']} < {n_tok} tokens in {cfg.text_tokenizer}")
    t = cfg.task
    module = module_cls(model_cfg, tokenizer_dir=str(Path(cfg.text_tokenizer).resolve()),
                        optim=OmegaConf.to_container(t.optim, resolve=True), text_loss_weight=t.text_loss_weight,
                        freeze_text=t.freeze_text, gradient_checkpointing=t.gradient_checkpointing,
                        init_from=t.init_from, codebook_reduction=t.codebook_reduction, **module_kw)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    mc = module.model.cfg   # the model's (init_from may replace the size's)
    dm = LLMDataModule(data.pop("shards"), tok, data, seed=cfg.seed, num_codebooks=mc.num_codebooks,
                       codebook_size=mc.codebook_size, val_shards=data.pop("val_shards", None),
                       prompts=family.prompts(tok, mc))
    return module, dm
