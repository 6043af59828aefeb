"""8-bit and 4-bit weights for the decoder layers' linears (bitsandbytes), made at load time.

Why: the released model is 5.8 B parameters, 11.6 GB in bf16, and its decoder layers hold 5.0 B of
them (attention and the two FFNs of each of the 28 layers). Storing those linears in int8
(LLM.int8() row-wise absmax, `bnb.nn.Linear8bitLt`, ~1 byte a weight) or NF4 with double
quantization (`bnb.nn.Linear4bit`, ~0.52 byte a weight) is what lets the model, and QLoRA
fine-tuning of it, fit a 16 GB card. The embeddings, both heads and every norm stay in the dtype
asked for: they are a small share of the memory and the most sensitive to rounding.

    quantize: none | int8 | nf4        # every entry point that loads a model takes this key

The weights on disk stay as they are (bf16 for the release): a quantized linear is made from each
tensor as it is read (higgs_train.llm.checkpoints.load_llm), so loading never holds more than one
full-precision matrix beyond the quantized model. On CUDA the quantization runs on the GPU; on the
CPU bitsandbytes' CPU kernels do it.

`none` builds nothing here: the model is exactly the one loaded before this module existed.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

QUANTIZE = ("none", "int8", "nf4")
NF4_BLOCK = 64     # weights per NF4 absmax (bitsandbytes' default, what QLoRA uses)


def check(mode: str | None) -> str:
    """The quantize mode, or ValueError naming the choices (None means none)."""
    mode = "none" if mode is None else str(mode)
    if mode not in QUANTIZE:
        raise ValueError(f"quantize={mode!r}: use one of {', '.join(QUANTIZE)}")
    return mode


def is_target(name: str) -> bool:
    """Whether the parameter `name` (our layout's, e.g. `layers.3.attn.q_proj.weight`) is the weight
    of a decoder-layer linear: what int8 / nf4 quantize."""
    return name.startswith("layers.") and name.endswith("_proj.weight")


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes linear (int8 or 4-bit): its weight is not a plain float matrix."""
    import sys

    bnb = sys.modules.get("bitsandbytes")   # never imported by a model that was not quantized
    return bnb is not None and isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))


class _QuietCast(logging.Filter):
    """bitsandbytes logs a warning at every int8 matmul whose input is not fp16 (it casts it, as
    LLM.int8() does): expected here, and at one line per linear per step it would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def quantized_linear(weight: Tensor, mode: str, device) -> nn.Module:
    """A bias-free bitsandbytes linear holding `weight` [out, in] quantized on `device`; it computes
    in weight.dtype (inputs are cast to it and outputs back to the input's dtype)."""
    import bitsandbytes as bnb

    cast_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _QuietCast) for f in cast_log.filters):
        cast_log.addFilter(_QuietCast())
    out_f, in_f = weight.shape
    device = torch.device(device or "cpu")
    if mode == "int8":
        # threshold 0: every column in int8 (no fp16 outlier path); has_fp16_weights False: the
        # int8 matrix and its row scales are all that is kept
        m = bnb.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False, threshold=0.0, device="meta")
        m.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
    elif mode == "nf4":
        m = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=weight.dtype, compress_statistics=True,
                              quant_type="nf4", device="meta")
        m.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, blocksize=NF4_BLOCK,
                                     compress_statistics=True, quant_type="nf4", module=m).to(device)
        # bitsandbytes repacks a 4-bit weight for its CPU kernel at the first inference forward;
        # its layout needs whole blocks per row and rows in groups of 32 (tiny test models lack them)
        m.support_avx512bf16_for_cpu &= in_f % NF4_BLOCK == 0 and out_f % 32 == 0
    else:
        raise ValueError(f"quantized_linear: mode {mode!r} is not int8 or nf4")
    return m


def replace(model: nn.Module, weight_name: str, module: nn.Module) -> None:
    """Put `module` where the linear owning `weight_name` (`layers.3.attn.q_proj.weight`) is."""
    path = weight_name.removesuffix(".weight")
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def for_training(model: nn.Module) -> nn.Module:
    """Keep every 4-bit weight in the layout autograd goes through: bitsandbytes' CPU repack (made
    at an inference forward, e.g. a validation's) runs a kernel with no backward, and gradients
    would silently stop at it."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
    return model


def mark(model: nn.Module, mode: str) -> None:
    """Say what peft reads to pick its bitsandbytes LoRA layers (transformers' attribute names)."""
    model.quantize = mode
    model.is_loaded_in_8bit = mode == "int8"
    model.is_loaded_in_4bit = mode == "nf4"


def dequantized_weight(module: nn.Module) -> Tensor:
    """The float weight [out, in] a linear multiplies by: its own, or a bitsandbytes one's dequantized."""
    if not is_quantized(module):
        return module.weight.detach()
    import bitsandbytes as bnb

    w = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        data, state = w.data, w.quant_state
        if getattr(state, "packing_format_for_cpu", False):   # repacked for the CPU kernel (above)
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return bnb.functional.dequantize_4bit(data, state)
    scb = w.SCB if w.SCB is not None else module.state.SCB   # a forward moves the scales to the state
    return w.data.float() * scb.float()[:, None] / 127.0


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take (quantized weights and their statistics included)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, Tensor))
