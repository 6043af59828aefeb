"""The Higgs TTS 3 REFERENCE code (PyPI sglang-omni 0.1.9, and mlx-audio 0.6.2 as a cross-check),
imported in its throwaway venv (setup_venv.sh here) with the fewest stubs that let it run on CPU.
Used only by the fixture scripts in this folder; never a dependency of the project.

What is stubbed, and why (nothing of the Higgs code itself is re-implemented):
  * `sglang` (the serving engine; CUDA-only, not installed). sglang_omni's Higgs `model.py`
    imports four names from it at import time:
      - `sglang.srt.models.qwen3.Qwen3ForCausalLM`: the backbone. Stood in by transformers'
        `Qwen3ForCausalLM` (same parameter tree `model.embed_tokens / model.layers.{i}... /
        model.norm / lm_head`, un-fused q/k/v and gate/up). sglang's own `load_weights` stacks
        q/k/v and gate/up and skips `lm_head.weight` when the embeddings are tied; the stand-in's
        `load_weights` (below) loads the same names unfused, strictly: a missing or unknown
        backbone tensor raises.
      - `sglang.srt.layers.logits_processor.LogitsProcessorOutput`, `sglang.srt.runtime_context.
        get_schedule` (only `.max_running_requests`, the sampler-pool size: 1 here) and
        `sglang.srt.layers.sampler.multinomial_with_seed` (seeded sampling; the fixtures are
        greedy, which the reference short-circuits to argmax before any draw).
  * `sglang_omni.platforms` (imports sglang's platform registry): a namespace whose
    `current_platform.device_type` is "cpu", the one attribute the sampler reads (it then takes
    the pure-torch top-k/top-p renorm of npu_fallback.py); its submodules (device_graph, which
    the codec facade imports) still load from the installed files.
  * `sglang_omni.models.higgs_tts` is registered as a bare package (its `__init__.py` imports the
    pipeline config, which needs msgspec/pydantic/... of the serving stack); its modules then
    import normally from the installed files, except `utils.py`, which imports the codec facade
    and media I/O at module level: its four torch-only names (BOC_ID, EOC_ID, apply_delay_pattern,
    delay_pattern_action_mask) are executed from its own source text and registered as the module.
The model's forward needs sglang's ForwardBatch (paged KV cache); the fixtures call the
reference's own pieces instead: `HiggsTTSModel.load_weights`, its fused embedding
(`multimodal_embedding.modality_embedding_0`) and head (`modality_head.generate`), the prompt
builder (`text_tokenizer.HiggsTokenizerAdapter`), the delay pattern (`utils.apply_delay_pattern`),
the prefill embedding paste (`model_runner.HiggsTTSModelRunner.build_prefill_input_embeds` logic,
re-stated in `prompt_embeds` below because the runner class needs sglang's scheduler) and the
per-row sampler oracle (`sampler.step`). The codec facade (`audio_codec.HiggsAudioCodec`) is
real; only its packaged codec-config path is pointed at the tiny config (load_reference_codec).
mlx-audio's higgs_audio_v3 needs no stub (mlx_model and below).
"""
from __future__ import annotations

import json
import os
import random
import sys
import types

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "release_v3")
SEED = 1234
AUDIO_PLACEHOLDER_ID = -100


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log(msg: str) -> None:
    print(f"[release_fixtures/v3] {msg}", file=sys.stderr, flush=True)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(_module(parent), child, mod)
    return mod


def _stub_sglang() -> None:
    """The four sglang names sglang_omni's Higgs model/sampler import (module docstring)."""
    if "sglang.srt.models.qwen3" in sys.modules:
        return
    import sglang_omni  # noqa: F401  (the real package: its __init__ is lazy)
    from transformers import Qwen3ForCausalLM as HFQwen3ForCausalLM

    class Qwen3ForCausalLM(HFQwen3ForCausalLM):
        """STAND-IN for sglang's Qwen3ForCausalLM: transformers' module tree, sglang's ctor."""

        def __init__(self, config, quant_config=None, prefix: str = ""):
            assert quant_config is None
            super().__init__(config)

        def load_weights(self, weights):
            state = dict(weights)
            tied = bool(self.config.tie_word_embeddings)
            if tied:  # sglang's Qwen3ForCausalLM.load_weights skips lm_head when tied
                state.pop("lm_head.weight", None)
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (tied and k == "lm_head.weight")]
            if missing or unexpected:
                raise KeyError(f"backbone load: missing {missing[:5]}, unexpected {unexpected[:5]}")
            if tied:
                self.lm_head.weight = self.model.embed_tokens.weight

    class LogitsProcessorOutput:  # noqa: D401 - a record
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def multinomial_with_seed(*args, **kwargs):
        raise NotImplementedError("sglang stub: seeded sampling is not used by the greedy fixtures")

    _module("sglang.srt.models.qwen3", Qwen3ForCausalLM=Qwen3ForCausalLM)
    _module("sglang.srt.layers.logits_processor", LogitsProcessorOutput=LogitsProcessorOutput)
    _module("sglang.srt.layers.sampler", multinomial_with_seed=multinomial_with_seed)
    _module("sglang.srt.runtime_context",
            get_schedule=lambda: types.SimpleNamespace(max_running_requests=1))
    plat = _module("sglang_omni.platforms", current_platform=types.SimpleNamespace(device_type="cpu"))
    plat.__path__ = [os.path.join(os.path.dirname(sglang_omni.__file__), "platforms")]
    import importlib.util

    root = os.path.dirname(sglang_omni.__file__)
    for name in ("sglang_omni.models", "sglang_omni.models.higgs_tts"):
        pkg = _module(name)
        pkg.__path__ = [os.path.join(root, *name.split(".")[1:])]
    # utils.py imports the codec facade and media I/O of the serving stack at module level; the
    # sampler needs only its BOC_ID/EOC_ID, so utils is the module of its four torch-only names.
    sys.modules["sglang_omni.models.higgs_tts.utils"] = _delay_functions()


def sglang_higgs():
    """The reference modules: namespace(model, hf_config, modeling, sampler, text_tokenizer,
    weight_loader, BOC_ID, EOC_ID, apply_delay_pattern, delay_pattern_action_mask)."""
    _stub_sglang()
    import importlib

    ns = types.SimpleNamespace()
    for name in ("hf_config", "modeling", "weight_loader", "sampler", "text_tokenizer", "model"):
        setattr(ns, name, importlib.import_module(f"sglang_omni.models.higgs_tts.{name}"))
    ns.utils = sys.modules["sglang_omni.models.higgs_tts.utils"]
    ns.BOC_ID, ns.EOC_ID = ns.utils.BOC_ID, ns.utils.EOC_ID
    ns.apply_delay_pattern = ns.utils.apply_delay_pattern
    ns.delay_pattern_action_mask = ns.utils.delay_pattern_action_mask
    return ns


def _delay_functions() -> types.ModuleType:
    """`BOC_ID`, `EOC_ID`, `apply_delay_pattern`, `delay_pattern_action_mask` executed from
    sglang_omni/models/higgs_tts/utils.py's own source text (the file's other imports pull in the
    serving stack; these four need only torch)."""
    import ast

    path = os.path.join(os.path.dirname(sys.modules["sglang_omni"].__file__), "models", "higgs_tts", "utils.py")
    tree = ast.parse(open(path).read())
    keep = {"BOC_ID", "EOC_ID", "apply_delay_pattern", "delay_pattern_action_mask"}
    body = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in keep) or
            (isinstance(n, ast.Assign) and {t.id for t in n.targets if isinstance(t, ast.Name)} & keep)]
    assert len(body) == 4, [getattr(n, "name", None) for n in body]
    mod = types.ModuleType("sglang_omni.models.higgs_tts.utils")
    mod.__dict__.update(torch=torch, __file__=path)
    exec(compile(ast.Module(body=[ast.parse("from __future__ import annotations").body[0], *body],
                            type_ignores=[]), path, "exec"), mod.__dict__)
    return mod


def load_reference_model(ckpt_dir: str):
    """sglang-omni's HiggsTTSModel built from DIR/config.json and filled by its own
    `load_weights` from DIR's safetensors (single file or index), fp32, eval."""
    from safetensors import safe_open

    ns = sglang_higgs()
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        raw = json.load(f)
    raw = {k: v for k, v in raw.items() if k != "model_type"}
    config = ns.hf_config.HiggsMultimodalQwen3Config(**raw)
    config.text_config.dtype = torch.float32
    model = ns.model.HiggsTTSModel(config).float().eval()
    names = _checkpoint_files(ckpt_dir)
    weights = []
    for file in names:
        with safe_open(os.path.join(ckpt_dir, file), framework="pt") as f:
            weights += [(k, f.get_tensor(k).float()) for k in f.keys()]
    # The reference ignores a name that maps to nothing of its tree without a word; a fixture
    # check must not, so such names raise here (the bundled codec, which the mapper drops, aside).
    mapper = ns.weight_loader.DiscreteWeightMapper(text_prefix_map=ns.model._BACKBONE_PREFIX_MAP,
                                                   tie_modality=model.tie_modality)
    own = model.own_param_names()
    ignored = [k for k, _ in weights if (m := mapper.map(k)) is not None
               and not m.startswith("backbone.") and m not in own]
    if ignored:
        raise KeyError(f"reference load: names it would silently ignore: {ignored[:5]}")
    loaded = model.load_weights(iter(weights))
    expected = {"multimodal_embedding.modality_embedding_0.weight"}
    if not model.tie_modality:
        expected.add("modality_head.weight")
    if not expected <= loaded:
        raise KeyError(f"reference load: own tensors not loaded: {sorted(expected - loaded)}")
    return model, ns


def _checkpoint_files(ckpt_dir: str) -> list[str]:
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def checkpoint_names(ckpt_dir: str) -> list[str]:
    from safetensors import safe_open

    names = []
    for file in _checkpoint_files(ckpt_dir):
        with safe_open(os.path.join(ckpt_dir, file), framework="pt") as f:
            names += list(f.keys())
    return names


def reference_tokenizer(ckpt_dir: str):
    """The reference's prompt builder, loaded as stages.py loads it (tokenizer.json only)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    ns = sglang_higgs()
    raw = Tokenizer.from_file(os.path.join(ckpt_dir, "tokenizer.json"))
    return ns.text_tokenizer.HiggsTokenizerAdapter(PreTrainedTokenizerFast(tokenizer_object=raw))


def prompt_embeds(model, ids: list[int], ref_delayed: torch.Tensor | None) -> torch.Tensor:
    """model_runner.HiggsModelRunner.build_prefill_input_embeds for one request: text embeddings,
    with the `-100` positions replaced by the fused embedding of the delayed reference rows in order."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask = ids_t == AUDIO_PLACEHOLDER_ID
    emb = model.backbone.model.embed_tokens(torch.where(mask, torch.zeros_like(ids_t), ids_t))
    if int(mask.sum()):
        assert ref_delayed is not None and ref_delayed.shape[0] == int(mask.sum())
        emb[mask.nonzero(as_tuple=True)[0]] = model.multimodal_embedding.modality_embedding_0(ref_delayed)
    return emb


@torch.no_grad()
def teacher_forced(model, ids: list[int], ref_delayed, frames: torch.Tensor):
    """Audio logits [len(frames), 8, 1026] for the delayed rows `frames` given the prompt: the
    prompt's last position predicts frames[0]; frame t's fused embedding predicts frames[t + 1]
    (as the reference's decode step feeds `last_codes`). Also the text logits of the same positions."""
    emb = prompt_embeds(model, ids, ref_delayed)
    fused = model.multimodal_embedding.modality_embedding_0(frames[:-1])
    x = torch.cat([emb, fused], 0)[None]
    h = model.backbone.model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).last_hidden_state[0]
    h = h[len(ids) - 1:]
    return model.modality_head.generate(h), model.backbone.lm_head(h)


@torch.no_grad()
def greedy(model, ns, ids: list[int], ref_delayed, max_steps: int):
    """The reference decode loop at temperature 0: prefill, then per step `sampler.step` on
    `modality_head.generate(last hidden)` and the fused embedding of the codes it returned as the
    next input (model.py: decode_step_embeds_cg), until the sampler says generation_done or
    `max_steps`. Returns (frames [n, 8], done, sampler state)."""
    emb = prompt_embeds(model, ids, ref_delayed)
    state = ns.sampler.HiggsSamplerState(num_codebooks=model.num_codebooks)
    frames = []
    for _ in range(max_steps):
        x = emb[None]
        h = model.backbone.model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).last_hidden_state[0, -1:]
        logits = model.modality_head.generate(h)[0].float()
        codes = ns.sampler.step(logits, state, temperature=0.0)
        frames.append(codes.clone())
        if state.generation_done:
            break
        emb = torch.cat([emb, model.multimodal_embedding.modality_embedding_0(codes[None])], 0)
    return torch.stack(frames), state


def load_reference_codec(ckpt_dir: str, codec_config_json: str):
    """sglang-omni's codec facade (`audio_codec.HiggsAudioCodec.from_pretrained`), which reads the
    bundled `tied.embedding.modality_embeddings.0.model.*` tensors out of the checkpoint into
    transformers' HiggsAudioV2TokenizerModel built from a config PACKAGED with sglang-omni
    (`_BUNDLED_CODEC_CONFIG_PATH`, the full-size v2 tokenizer config); the tiny fixture points
    that module constant at its own config. `sglang_omni.platforms.device_graph` (imported for
    CUDA graphs) is real; the facade's `load_state_dict(strict=False)` is re-checked here strictly."""
    sglang_higgs()
    import importlib

    ac = importlib.import_module("sglang_omni.models.higgs_tts.audio_codec")
    ac._BUNDLED_CODEC_CONFIG_PATH = codec_config_json
    codec = ac.HiggsAudioCodec.from_pretrained(ckpt_dir)
    state = ac.load_codec_state_dict(ckpt_dir)
    own = codec.model.state_dict()
    if set(state) != set(own):
        raise KeyError(f"bundled codec names differ: {sorted(set(state) ^ set(own))[:5]}")
    return codec


def mlx_model(ckpt_dir: str):
    """mlx-audio's higgs_audio_v3 Model from DIR: its config reader, `sanitize` (release names ->
    its tree) and strict `load_weights`, then its `post_load_hook` for the tokenizer / prompt
    builder (the hook then loads the bundled codec at FULL size, which a tiny checkpoint cannot
    satisfy: that error is caught once the tokenizer is set). Returns namespace(model, rope_note)."""
    import mlx.core as mx
    from mlx_audio.tts.models.higgs_audio_v3 import HiggsAudioV3Config, Model

    with open(os.path.join(ckpt_dir, "config.json")) as f:
        raw = json.load(f)
    try:
        config = HiggsAudioV3Config.from_dict(raw)
        note = "read as written"
    except TypeError as e:   # float(None): its reader takes rope_theta only when the key is absent
        text = {k: v for k, v in raw["text_config"].items() if not (k == "rope_theta" and v is None)}
        config = HiggsAudioV3Config.from_dict({**raw, "text_config": text})
        note = (f"mlx-audio's HiggsAudioV3TextConfig.from_dict raises {type(e).__name__}: {e} on "
                f"rope_theta null; the key is dropped for it (its default is 1e6)")
    model = Model(config)
    weights = {}
    for file in _checkpoint_files(ckpt_dir):
        weights.update(mx.load(os.path.join(ckpt_dir, file)))
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    mx.eval(model.parameters())
    try:
        Model.post_load_hook(model, ckpt_dir)
    except Exception:   # noqa: BLE001 - the codec part; the tokenizer was set before it
        if model._prompt_builder is None:
            raise
    return types.SimpleNamespace(model=model, rope_note=note)


def mlx_teacher_forced(model, text, ref_text, ref_delayed, frames):
    """mlx-audio's own prompt ids and embeddings (`_build_prompt_embeddings`, which takes DELAYED
    reference codes), the frames' fused embeddings (`_embed_audio_codes`), its backbone and tied
    head (`_audio_logits`). Returns (prompt ids, logits [len(frames), 8, 1026] as numpy)."""
    import mlx.core as mx
    from mlx_audio.tts.models.higgs_audio_v3 import ReferenceCodes

    refs = [] if ref_delayed is None else [ReferenceCodes(codes=mx.array(ref_delayed.numpy()), text=ref_text)]
    ids = model._prompt_builder.build_prompt(text, references=refs).token_ids
    emb, n = model._build_prompt_embeddings(text, refs)
    fused = model._embed_audio_codes(mx.array(frames[:-1].numpy()))[None]
    x = mx.concatenate([emb, fused], axis=1)
    h = model.backbone(mx.zeros((1, x.shape[1]), dtype=mx.int32), input_embeddings=x)
    logits = model._audio_logits(h[0, n - 1:])
    mx.eval(logits)
    return list(ids), np.array(logits.astype(mx.float32))


def mlx_greedy(model, text, ref_text, ref_delayed, max_steps: int) -> np.ndarray:
    """mlx-audio's own `generate()` loop at temperature 0 (KV cache, its `step` sampler and stop
    rule); `_decode_audio` (the codec, full size only) is replaced by a recorder of the rows."""
    import mlx.core as mx

    rows = []

    def record(delayed_rows):
        rows.extend(np.array(r) for r in delayed_rows)
        return mx.zeros((24000,))

    model._decode_audio = record
    kw = {} if ref_delayed is None else {"ref_audio_codes": ref_delayed.numpy(), "ref_text": ref_text}
    for _ in model.generate(text, temperature=0.0, max_new_tokens=max_steps, **kw):
        pass
    return np.stack(rows).astype(np.int64)


if __name__ == "__main__":   # setup_venv.sh's check: everything the fixture scripts import
    import mlx.core
    import transformers
    from transformers import HiggsAudioV2TokenizerModel  # noqa: F401  (needs torchaudio importable)

    import mlx_audio.codec.models.higgs_audio.higgs_audio  # noqa: F401  (imports scipy)
    from mlx_audio.tts.models.higgs_audio_v3 import Model  # noqa: F401

    sglang_higgs()
    print(f"[v3_venv] torch {torch.__version__}, transformers {transformers.__version__}, "
          f"mlx {mlx.core.__version__}; sglang_omni higgs_tts + mlx_audio higgs_audio_v3 import")
