"""The fine-tuning task for train.py's fit(): the LLM task from a base export, LoRA or full.

    task.build = higgs_train.finetune.lora.build   (configs/recipes/finetune.yaml sets it)

LoRA (peft) wraps the linear layers named by `lora.targets` (suffixes of module names, e.g.
`attn.q_proj`, `audio_mlp.up_proj`, or the base layout's names: `self_attn.q_proj`,
`audio_decoder_proj.audio_lm_head` of the release): their weights stay frozen and a low-rank update B·A
(scaled alpha / rank) is trained; B starts at zero, so step 0 is exactly the base. Nothing else
is trained. `mode=full` trains every weight (the text head stays frozen without a text loss,
as in the LLM task).

Checkpoints hold only the trainable tensors (LoRA: a few MB instead of the whole model): the
frozen ones are the base export's, which the module loads again (init_from) when it is rebuilt.

The base is of any model family (higgs_train/families, from its config.json): loaded, adapted and
written by the family. export() writes what inference loads, in the base's layout (DualFFN: native,
the transformers port or the original release, higgs_train.llm.layouts; Higgs TTS 3: native or the
release's, with the audio tokenizer the base bundles copied through) or the one `export_layout`
asks for, and in the base's dtype: the weights of the *best* validation checkpoint
(ModelCheckpoint monitoring val/loss), LoRA merged in, with the base's text tokenizer (and chat
template) files.

Memory (LoRA), lean by construction so the released 5.8 B model trains on a 16 GB card:
- the frozen base stays in the dtype it is stored in (bf16 for the release), never copied to fp32;
  only the adapters are fp32, and only they have gradients and optimizer state;
- `quantize=int8|nf4` (QLoRA) loads the base's decoder-layer linears in 8 or 4 bits
  (higgs_train.llm.quantize) and peft wraps them with its bitsandbytes LoRA layers. The export
  merges the trained adapters into the base's own full-precision weights, read again from disk on
  the CPU (never into the rounded ones): that merge needs CPU memory for the whole base in its
  dtype (2 bytes a parameter in bf16: 11.6 GB for the release) on top of the training model;
- activation checkpointing per layer (configs/recipes/finetune.yaml) and text logits only where a text
  label exists (DualFFNModel.loss) keep activations small.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from higgs_train.families import family_for_model, family_of, size_config
from higgs_train.llm.lit import LLMModule, check_family
from higgs_train.llm.lit import build as build_llm

log = logging.getLogger(__name__)

MONITOR = "val/loss"
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _in_layer(name: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj` (names outside layers unchanged)."""
    parts = name.split(".")
    return ".".join(parts[parts.index("layers") + 2:]) if "layers" in parts else name


def lora_modules(model: torch.nn.Module, targets, layout: str = "native") -> list[str]:
    """The model's linear layers (full names) named by `targets`: suffixes of our module names or
    of their names in `layout` (the base's); None: its family's (higgs_train.families.Family.lora_targets).
    ValueError naming a target that matches none."""
    family = family_for_model(model)
    layout_name = family.layout_name
    if targets is None:
        targets = family.lora_targets

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    names = {n: {n, layout_name(n + ".weight", layout)[:-len(".weight")]} for n in linear}
    found: set[str] = set()
    for t in targets:
        hit = [n for n, alias in names.items() if any(a == t or a.endswith("." + t) for a in alias)]
        if not hit:
            known = sorted({_in_layer(a) for alias in names.values() for a in alias})
            raise ValueError(f"lora.targets: {t!r} names no linear layer of the model; these exist: {known}")
        found.update(hit)
    return sorted(found)


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets,
             layout: str = "native") -> torch.nn.Module:
    """The model wrapped by peft with LoRA adapters on `targets`; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                     target_modules=lora_modules(model, targets, layout), bias="none")
    return get_peft_model(model, cfg)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with LoRA folded into its weights (W + alpha/rank · B·A); a model without
    adapters is returned as it is. Mutates a peft model: call it last."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def export_dtype(export_dir) -> torch.dtype:
    """The dtype the base stores its weights in (the merged export keeps it); any layout, sharded or not."""
    from safetensors import safe_open

    files = sorted(Path(export_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {export_dir}")
    with safe_open(str(files[0]), "pt") as f:
        return SAFETENSORS_DTYPES.get(f.get_slice(next(iter(f.keys()))).get_dtype(), torch.float32)


def resolve_export_layout(export_layout: str | None, base_layout: str, layouts: tuple[str, ...]) -> str:
    """The layout the export is written in: the one asked for, or the base's (null); ValueError for
    one that the base's family (its `layouts`) does not write. The fine-tuning recipe calls it too,
    before any work (recipes/finetune/run.py)."""
    if export_layout not in (None, *layouts):
        raise ValueError(f"export_layout={export_layout!r}: use one of {', '.join(layouts)} (or null: the base's)")
    return export_layout or base_layout


class LastAfterValidation(ModelCheckpoint):
    """Rewrites last.ckpt when a validation ends. train.py's checkpoint is written at the end of
    the training batch, before that step's validation, so a run resumed from it would not know
    the validation's result: early stopping and the best checkpoint would forget it."""

    def __init__(self, dirpath):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class FinetuneModule(LLMModule):
    def __init__(self, *args, lora: dict | None = None, export_layout: str | None = None,
                 quantize: str = "none", **kw):
        from higgs_train.llm import quantize as q

        self.lora, self.quantize = lora, q.check(quantize)   # read by _make_model, below
        if self.quantize != "none" and not lora:
            raise ValueError(f"quantize={quantize}: a quantized base trains LoRA adapters only (mode=lora)")
        super().__init__(*args, **kw)
        self.base_dir = kw["init_from"]
        self.base_layout = self.family.read_config(self.base_dir)[1]
        self.export_layout = resolve_export_layout(export_layout, self.base_layout, self.family.layouts)
        if lora:
            self.model = add_lora(self.model, **lora, layout=self.base_layout)
        # a quantized base is rebuilt from disk; checkpoints hold (and restore) the adapters only
        self.strict_loading = self.quantize == "none"
        # rebuilding this module needs the base (checkpoints hold only the trainable tensors)
        self.hparams.update(init_from=self.base_dir, lora=lora, export_layout=export_layout, quantize=self.quantize)

    def _make_model(self, model_cfg: dict, init_from: str | None):
        """LoRA: the base as stored (its dtype, decoder linears quantized if asked), frozen; full
        fine-tuning: the LLM task's fp32 copy (every weight trains, so it needs fp32 master weights)."""
        if not self.lora:
            return super()._make_model(model_cfg, init_from)
        from higgs_train.llm import quantize as q

        family, cfg = size_config(model_cfg)
        check_family(family, init_from)
        model = family.load(init_from, quantize=self.quantize)[0]
        if self.quantize != "none":
            q.for_training(model)
        if model.cfg != cfg:
            log.warning("init_from=%s: its config %s replaces model config %s", init_from, model.cfg, model_cfg)
        return model

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        if self.quantize != "none":   # loaded with strict=False: every trained tensor must be there
            lost = sorted({n for n, p in self.named_parameters() if p.requires_grad} - set(sd))
            if lost:
                raise KeyError(f"checkpoint lacks {len(lost)} trained tensors, e.g. {lost[:3]}")
            return
        # the frozen tensors left out by on_save_checkpoint: this module's own (the base's)
        for k, v in self.state_dict().items():
            sd.setdefault(k, v)

    def best_checkpoint(self) -> str | None:
        if self._trainer is None:   # exported outside a fit: no validation checkpoints
            return None
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) == MONITOR and cb.best_model_path:
                return cb.best_model_path
        return None

    def load_weights(self, ckpt_path) -> None:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        self.on_load_checkpoint(ckpt)
        self.load_state_dict(ckpt["state_dict"], strict=self.strict_loading)

    def full_precision_model(self) -> torch.nn.Module:
        """The adapted model on the base's own weights: this module's model, or, with a quantized
        base, the base read again on the CPU in its stored dtype with copies of the adapters."""
        if self.quantize == "none":
            return self.model
        base = add_lora(self.family.load(self.base_dir)[0], **self.lora, layout=self.base_layout)
        adapters = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if ".lora_" in k}
        missing, unexpected = base.load_state_dict(adapters, strict=False)
        if unexpected or [k for k in missing if ".lora_" in k]:
            raise RuntimeError(f"adapters do not fit the base: {unexpected[:3]} {missing[:3]}")
        return base.eval()

    def export(self, out_dir) -> None:
        """The best validation checkpoint, merged, in self.export_layout + the text tokenizer."""
        best = self.best_checkpoint()
        if best:
            log.info("exporting the best checkpoint %s", best)
            self.load_weights(best)
        else:
            log.warning("no validation checkpoint (did validation run?): exporting the last weights")
        model = merged(self.full_precision_model())
        dtype = export_dtype(self.base_dir)
        # the base's auxiliary files (chat template, generation config; a v3 release's bundled audio
        # tokenizer) travel; the tokenizer files are then written as loaded (release names at the
        # reserved ids, every special token present)
        self.family.save(model, out_dir, self.export_layout, tokenizer_dir=self.tokenizer_dir,
                         state_dict={k: v.to(dtype) for k, v in model.state_dict().items()})
        self.family.text_tokenizer(self.tokenizer_dir).save_pretrained(str(out_dir))


def build(cfg: DictConfig):
    """task.build for train.py: the LLM task's (module, data module), the module a FinetuneModule."""
    if cfg.mode not in ("lora", "full"):
        raise ValueError(f"mode={cfg.mode!r}: use lora or full")
    lora = None
    if cfg.mode == "lora":
        lora = {k: (list(v) if k == "targets" and v is not None else v) for k, v in cfg.lora.items()}
    return build_llm(cfg, module_cls=FinetuneModule, lora=lora, export_layout=cfg.export_layout,
                     quantize=cfg.quantize)


def load_export(export_dir, quantize: str = "none"):
    """An LLM export for measuring it (eval mode): on the GPU in bf16 when there is one, else on
    the CPU in fp32; quantize as the fine-tuning was (the base and its result measured alike). Any
    model family (from its config.json)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return family_of(export_dir).load(export_dir, dtype=dtype, device=device, quantize=quantize)[0].eval()


@torch.no_grad()
def held_out_loss(model, text_tokenizer, cfg: DictConfig) -> float:
    """The validation loss of a model (load_export) on cfg.data.val_shards: the same batches and the
    same batch-size-weighted mean as the val/loss the training loop logs."""
    from omegaconf import OmegaConf

    from higgs_train.llm.lit import LLMDataModule

    device = model.text_embed.weight.device
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm = LLMDataModule(data.pop("shards"), text_tokenizer, data, seed=cfg.seed,
                       num_codebooks=model.cfg.num_codebooks, codebook_size=model.cfg.codebook_size,
                       val_shards=data.pop("val_shards"),
                       prompts=family_for_model(model).prompts(text_tokenizer, model.cfg))
    total, rows = 0.0, 0
    for batch in dm.val_dataloader():
        b = {k: v.to(device) for k, v in batch.items()}
        out = model.loss(b["input_ids"], b["audio_codes"], b["audio_mask"], b["audio_labels"],
                         b["text_labels"], cfg.task.text_loss_weight, cfg.task.codebook_reduction)
        n = b["input_ids"].shape[0]
        total, rows = total + out["loss"].item() * n, rows + n
    return total / max(rows, 1)
