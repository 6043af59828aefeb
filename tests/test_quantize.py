"""8-bit and 4-bit decoder linears (higgs_train.llm.quantize) at load time, in the engine, and QLoRA
fine-tuning whose export is the base's bf16 weights with the adapters merged.

Tolerances: an int8 linear quantizes its input rows too (LLM.int8(), absmax per row), so its output
is within ~1 % of the product with its dequantized weight; an NF4 linear multiplies by its
dequantized weight, on a CPU with AVX512-BF16 in bitsandbytes' bf16 kernel (~0.3 %)."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from higgs_train.finetune.lora import FinetuneModule
from higgs_train.llm import quantize as q
from higgs_train.llm.checkpoints import load_llm, save_llm
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.delay import IGNORE
from higgs_train.llm.model import DualFFNModel
from inference.engine import Engine, EngineConfig
from inference.packed_gemm import PackedLinears, kernel_available
from test_inference_speed_paths import BEFORE, TEXTS, _digest, _rows
from higgs_train.testing.tiny_exports import TINY_LLM, make_tiny_exports

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

LINEARS_PER_LAYER = 4 + 3 + 3      # attention, text FFN, audio FFN (every tiny layer is dual)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_tiny_exports(tmp_path_factory.mktemp("quant"))


def _batch(vocab: int, T: int = 40, seed: int = 0, K: int = 8, codes_below: int = 1024):
    """One row: 8 text positions then audio; audio labels = the next frame's codes (shifted)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, T), generator=g)
    codes = torch.randint(0, codes_below, (1, T, K), generator=g)
    mask = torch.arange(T)[None] >= 8
    labels = torch.full((1, T, K), IGNORE)
    labels[:, 8:-1] = codes[:, 9:]
    return ids, codes, mask, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode,linear_tol,logits_tol,size", [("int8", 2e-2, 3e-2, 0.30), ("nf4", 1e-2, 0.25, 0.20)])
def test_quantized_linears_multiply_by_their_dequantized_weights(exports, mode, linear_tol, logits_tol, size):
    llm, _ = exports
    base = load_llm(llm)[0].eval()
    m = load_llm(llm, quantize=mode)[0].eval()
    quantized = [n for n, mod in m.named_modules() if q.is_quantized(mod)]
    assert len(quantized) == LINEARS_PER_LAYER * TINY_LLM["num_layers"]
    assert all(n.startswith("layers.") for n in quantized) and m.is_loaded_in_8bit == (mode == "int8")
    # embeddings, heads and norms: the base's tensors, unchanged
    kept = {k: v for k, v in m.state_dict().items() if not k.startswith(tuple(n + "." for n in quantized))}
    assert set(kept) == {k for k in base.state_dict() if not k.startswith(tuple(n + "." for n in quantized))}
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in kept.items())
    g = torch.Generator().manual_seed(0)
    for name in quantized:
        lin, ref = m.get_submodule(name), base.get_submodule(name)
        x = torch.randn(5, ref.in_features, generator=g)
        with torch.no_grad():
            assert _rel(lin(x), x @ q.dequantized_weight(lin).float().t()) < linear_tol
        assert _rel(q.dequantized_weight(lin), ref.weight) < (0.01 if mode == "int8" else 0.12)
    ids, codes, mask, _ = _batch(base.cfg.vocab_size)
    with torch.no_grad():
        assert _rel(m(ids, codes, mask).audio_logits, base(ids, codes, mask).audio_logits) < logits_tol
        # a slice with no text rows (an all-audio prefill slice): the text FFN gets none, and runs on none
        every = torch.ones_like(mask)
        assert _rel(m(ids, codes, every).audio_logits, base(ids, codes, every).audio_logits) < logits_tol
    layer_bytes = lambda model: sum(t.numel() * t.element_size() for k, t in model.state_dict().items()  # noqa: E731
                                    if k.startswith("layers.") and "norm" not in k)
    assert layer_bytes(m) < size * layer_bytes(base)       # fp32 base: int8 ~1/4, NF4 ~1/7


def test_quantize_none_is_todays_model(tmp_path):
    """Default none: plain nn.Linear everywhere, logits equal a model built from the file by hand,
    and the engine's greedy frames are those recorded before quantization existed."""
    llm, tok = make_tiny_exports(tmp_path, llm={"dual_layers": None})
    m = load_llm(llm, quantize="none")[0].eval()
    assert all(type(mod) is nn.Linear for mod in m.modules() if isinstance(mod, nn.Linear))
    by_hand = DualFFNModel(m.cfg).eval()
    by_hand.load_state_dict(load_file(str(llm / "model.safetensors")))
    ids, codes, mask, _ = _batch(m.cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(m(ids, codes, mask).audio_logits, by_hand(ids, codes, mask).audio_logits)
    engine = Engine.from_pretrained(llm, tok, quantize="none", cfg=EngineConfig(buckets=(256, 1024), attend_step=16))
    assert [_digest(f) for f in engine.generate_codes(_rows(engine, TEXTS))] == BEFORE["all_dual"]
    with pytest.raises(ValueError, match="quantize='int4': use one of none, int8, nf4"):
        load_llm(llm, quantize="int4")[0]


@pytest.mark.skipif(not kernel_available(torch.bfloat16), reason="no oneDNN bf16 packed GEMM on this CPU")
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_packed_gemms_step_aside_for_quantized_layers(exports, mode):
    """bf16 engine on a quantized model: only the audio head is packed, and the frames are those of
    the same engine without packs."""
    llm, tok = exports
    frames = {}
    for packed in (True, False):
        engine = Engine.from_pretrained(llm, tok, "cpu", torch.bfloat16, quantize=mode,
                                        cfg=EngineConfig(buckets=(256, 1024), attend_step=16, packed_gemm=packed))
        if packed:
            packs = PackedLinears.for_decode(engine.model, 1)
            assert packs.linears == [engine.model.audio_head]
        frames[packed] = engine.generate_codes(_rows(engine, TEXTS[:1]))[0]
    assert frames[True].shape[0] == 8 and frames[True].shape[1] > 0
    assert torch.equal(frames[True], frames[False])


def test_every_entry_point_takes_quantize(exports):
    """python -m inference / inference.server (their shared config), recipes.evaluate's synthesizer,
    Engine.from_pretrained: the key reaches the model."""
    from hydra import compose, initialize_config_dir

    from higgs_train.config import package_configs
    from inference.engine import engine_from_config
    from inference.evaluation import from_exports

    llm, tok = exports
    for name, extra in (("infer", ["text=Hi."]), ("serve", [])):
        with initialize_config_dir(str(package_configs("inference") / "inference"), version_base="1.3"):
            cfg = compose(name, overrides=[f"model={llm}", f"tokenizer={tok}", "quantize=nf4", *extra])
        assert isinstance(engine_from_config(cfg).model.layers[0].attn.q_proj, bnb_class("nf4"))
    with initialize_config_dir(str(package_configs("recipes") / "recipes/evaluate"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"model={llm}", f"tokenizer={tok}", "eval_set=x.jsonl", "quantize=int8"])
    assert cfg.synthesizer.quantize == "int8"
    synth = from_exports(llm, tok, quantize="int8")
    assert isinstance(synth.engine.model.layers[0].mlp.up_proj, bnb_class("int8"))


def bnb_class(mode: str):
    import bitsandbytes as bnb

    return bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit


class _Shapes(TorchDispatchMode):
    """Records (shape, dtype) of every tensor an op returns (views of a weight, which allocate
    nothing, left out)."""

    VIEWS = {"t", "transpose", "permute", "view", "_unsafe_view", "expand", "detach"}

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in self.VIEWS:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.seen.append((tuple(t.shape), t.dtype))
        return out


def test_no_full_vocabulary_logits_for_an_audio_only_batch():
    """The release's text vocabulary (128,256): a training step whose labels are all audio never
    makes a [positions, vocab] tensor; one text label makes exactly [1, vocab] (the recorder works)."""
    V = 128256
    cfg = DualFFNConfig.preset("full", vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                        num_kv_heads=1, head_dim=8, rope_scaling=None)
    model = DualFFNModel(cfg).train()
    model.text_head.weight.requires_grad_(False)        # as the LLM task freezes it without a text loss
    ids, codes, mask, labels = _batch(1000)
    text_labels = torch.full(ids.shape, IGNORE)
    for with_text in (False, True):
        if with_text:
            text_labels[0, 3] = 17
        with _Shapes() as rec:
            model.loss(ids, codes, mask, labels, text_labels, text_loss_weight=0.5)["loss"].backward()
        wide = [s for s, _ in rec.seen if s and s[-1] == V]
        assert wide == ([(1, V)] * len(wide) if with_text else []), wide[:4]
        assert bool(wide) == with_text


LORA = dict(rank=4, alpha=8, dropout=0.0, targets=["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                                   "audio_mlp.gate_proj", "audio_mlp.up_proj", "audio_mlp.down_proj",
                                                   "audio_head"])
MICRO = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32)


@pytest.fixture(scope="module")
def bf16_release_base(tmp_path_factory):
    """A tiny base as the release ships: bf16, in the original layout, text tokenizer beside it."""
    root = tmp_path_factory.mktemp("qlora")
    llm, _ = make_tiny_exports(root / "native", llm=MICRO)
    m = load_llm(llm, dtype=torch.bfloat16)[0]
    save_llm(m, root / "original", "original", tokenizer_dir=llm)
    return root / "original"


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_qlora_trains_and_exports_the_merged_bf16_base(bf16_release_base, tmp_path, mode):
    from transformers import HiggsAudioV2ForConditionalGeneration

    base_dir = bf16_release_base
    cfg = load_llm(base_dir)[0].cfg
    with pytest.raises(ValueError, match="a quantized base trains LoRA adapters only"):
        FinetuneModule(asdict(cfg), tokenizer_dir=str(base_dir), optim={}, init_from=str(base_dir), quantize=mode)
    module = FinetuneModule(asdict(cfg), tokenizer_dir=str(base_dir), optim={}, init_from=str(base_dir),
                            gradient_checkpointing=True, lora=LORA, quantize=mode)
    named = dict(module.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all(".lora_" in n and named[n].dtype == torch.float32 for n in trainable)
    # the frozen base is never copied to fp32: every float tensor that is not an adapter stays bf16
    assert {p.dtype for n, p in named.items() if ".lora_" not in n and p.is_floating_point()} == {torch.bfloat16}
    peft_layer = module.model.base_model.model.layers[0].attn.q_proj
    assert "bnb" in type(peft_layer).__module__ and q.is_quantized(peft_layer.base_layer)

    # codes drawn from 16 of the 1024: the adapters learn that, which held-out rows share
    train = [_batch(cfg.vocab_size, seed=s, codes_below=16) for s in range(4)]
    held_out = _batch(cfg.vocab_size, seed=99, codes_below=16)

    def loss(b):
        return module.model.loss(*b, codebook_reduction="mean")["loss"]

    def grads(m):
        """Gradients of the first layer's adapters, from the same adapter weights in any module."""
        p = dict(m.named_parameters())
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n in p:
                if ".lora_" in n:
                    p[n].copy_(torch.randn(p[n].shape, generator=g) * 0.05)
        m.zero_grad()
        m.train()
        m.model.loss(*train[0])["loss"].backward()
        return [p[n].grad.clone() for n in p if "layers.0." in n and ".lora_A." in n]

    fresh = FinetuneModule(asdict(cfg), tokenizer_dir=str(base_dir), optim={}, init_from=str(base_dir),
                           gradient_checkpointing=True, lora=LORA, quantize=mode)
    want_grads = grads(fresh)
    module.eval()
    with torch.no_grad():                      # as a validation does before training goes on
        before = loss(held_out).item()
    # an inference forward changes no gradient (bitsandbytes' CPU 4-bit repack has no backward)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(grads(module), want_grads))
    module.zero_grad()
    with torch.no_grad():                      # training starts from the base again
        for n, p in named.items():
            if ".lora_B." in n:
                p.zero_()
    opt = torch.optim.AdamW([named[n] for n in trainable], lr=2e-2)
    module.train()
    for step in range(30):
        opt.zero_grad()
        loss(train[step % 4]).backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        after = loss(held_out).item()
        quantized_logits = module.model(*held_out[:3]).audio_logits
        adapted = module.full_precision_model()      # the base's own weights + these adapters
        want = adapted(*held_out[:3]).audio_logits
        base_logits = load_llm(base_dir)[0](*held_out[:3]).audio_logits
    assert after < before - 1.0, (before, after)

    module.export(tmp_path / "original")                  # the base's layout
    module.export_layout = "hf"
    module.export(tmp_path / "hf")
    for layout in ("original", "hf"):
        d = tmp_path / layout
        sd = {}
        for f in d.glob("*.safetensors"):
            sd.update(load_file(str(f)))
        assert {t.dtype for t in sd.values()} == {torch.bfloat16} and not any("lora" in k for k in sd)
        export, got = load_llm(d)
        assert got == layout
        with torch.no_grad():
            logits = export(*held_out[:3]).audio_logits
        assert _rel(logits, want) < 1e-2                       # merged = adapted, to bf16 rounding
        assert _rel(logits, base_logits) > 5 * _rel(logits, want)  # and not the base
        assert _rel(logits, quantized_logits) < (0.05 if mode == "int8" else 0.3)
    # the port loads the hf export and computes what ours computes from it
    port = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), use_text_head=True,
                                                                torch_dtype=torch.float32).eval()
    ours = load_llm(tmp_path / "hf", dtype=torch.float32)[0].eval()
    ids, codes, mask, _ = held_out
    ids = ids.masked_fill(mask, port.config.audio_token_id)
    with torch.no_grad():
        h = port.model(input_ids=ids, attention_mask=torch.ones_like(ids), audio_input_ids=codes[mask][None],
                       audio_input_ids_mask=torch.ones(1, int(mask.sum()), dtype=torch.bool)).last_hidden_state
        theirs = port.audio_lm_head(h).unflatten(-1, (cfg.num_codebooks, -1))
        assert (theirs - ours(ids, codes, mask).audio_logits).abs().max() < 1e-4
    assert json.loads((tmp_path / "original" / "config.json").read_text())["model_type"] == "higgs_audio"
