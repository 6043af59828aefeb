"""The released Higgs Audio v2 LLM layout: parity with the ORIGINAL code, refusals, full-size names.

Fixtures (tests/fixtures/release/llm_original/, made by scripts/release_fixtures/llm.py in the
throwaway venv with boson-multimodal 0.1.1): tiny random HiggsAudioModels saved by the original
save_pretrained (sharded), the original's logits on a padded batch of two rows with audio-in and
audio-out positions, and the original's logits on OUR to=original export of a native model.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_train.convert import convert
from higgs_train.llm.checkpoints import from_hf_llama, load_llm, save_llm
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.layouts import LayoutError, export_plan, native_shapes, read_config
from higgs_train.llm.model import DualFFNModel

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FIX = Path(__file__).parent / "fixtures" / "release" / "llm_original"
KEYS = Path(__file__).parent / "fixtures" / "release" / "keys" / "llm_original.json"


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "io.safetensors"))


def logits(model, io):
    with torch.no_grad():
        return model(io["x_input_ids"], io["x_audio_codes"], io["x_audio_mask"])


@pytest.mark.parametrize("name,dual", [("model", None), ("partial", [0, 2])])
def test_original_checkpoint_logits_equal_the_original_code(io, name, dual):
    model = load_llm(FIX / name)[0].eval()
    cfg = model.cfg
    assert cfg.dual_layers == dual and cfg.encode_audio_in_tokens
    assert cfg.special_tokens == {"audio_eos": 101, "audio_out_bos": 102, "audio_in": 104, "audio_out": 105, "pad": 0}
    valid, out_mask = io["x_valid"], io["x_audio_out_mask"]
    assert io["x_audio_mask"].sum() > out_mask.sum() > 0            # audio-in and audio-out positions
    assert (~valid[1]).sum() > 0 and valid[0].all()                  # row 1 is right-padded
    o = logits(model, io)                                            # the padded batch of two
    assert (o.text_logits[valid] - io[f"{name}_text_logits"][valid]).abs().max() <= 1e-5
    assert (o.audio_logits[out_mask] - io[f"{name}_audio_logits"]).abs().max() <= 1e-5
    n = int(valid[1].sum())                                          # row 1 alone, unpadded
    with torch.no_grad():
        alone = model(io["x_input_ids"][1:, :n], io["x_audio_codes"][1:, :n], io["x_audio_mask"][1:, :n])
    assert (alone.text_logits[0] - io[f"{name}_text_logits"][1, :n]).abs().max() <= 1e-5
    # a mis-mapped tensor would show: the logits are far from a constant
    assert io[f"{name}_audio_logits"].std() > 1e-2


def test_original_code_reproduces_our_export():
    fig = json.loads((FIX / "figures.json").read_text())
    assert fig["from_native_text_logits_max_abs_diff"] <= 1e-5
    assert fig["from_native_audio_logits_max_abs_diff"] <= 1e-5


def test_committed_export_is_what_the_converter_writes_now(io, tmp_path):
    # the figure above is about from_native/: it must still be our converter's output
    model = load_llm(FIX / "from_native")[0].eval()
    ours = load_file(str(FIX / "native_logits.safetensors"))
    o = logits(model, io)
    assert (o.text_logits - ours["text_logits"]).abs().max() <= 1e-6
    assert (o.audio_logits[io["x_audio_out_mask"]] - ours["audio_logits"]).abs().max() <= 1e-6
    convert(FIX / "from_native", tmp_path / "nat", "native")
    convert(tmp_path / "nat", tmp_path / "orig", "original")
    a, b = load_file(str(FIX / "from_native" / "model.safetensors")), load_file(str(tmp_path / "orig/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((FIX / "from_native/config.json").read_text()) == json.loads((tmp_path / "orig/config.json").read_text())


def test_split_embedding_and_head_are_concatenated(io, tmp_path):
    # what the original trainer saves with freeze_llm(freeze_embed_until_idx) / freeze_text_head(..)
    d = tmp_path / "split"
    shutil.copytree(FIX / "model", d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    for full, part in (("embed_tokens.weight", "embedding"), ("audio_decoder_proj.text_lm_head.weight", "linear")):
        f = index["weight_map"].pop(full)
        sd = load_file(str(d / f))
        w = sd.pop(full)
        base = full.rsplit(".", 1)[0]
        sd[f"{base}.{part}_frozen.weight"], sd[f"{base}.{part}_trainable.weight"] = w[:90].clone(), w[90:].clone()
        save_file(sd, str(d / f))
        index["weight_map"].update({f"{base}.{part}_frozen.weight": f, f"{base}.{part}_trainable.weight": f})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    a = logits(load_llm(FIX / "model")[0].eval(), io)
    b = logits(load_llm(d)[0].eval(), io)
    assert torch.equal(a.text_logits, b.text_logits) and torch.equal(a.audio_logits, b.audio_logits)


REFUSED = [
    ({"audio_adapter_type": "stack"}, "audio_adapter_type='stack'"),
    ({"audio_dual_ffn_layers": [0, 2]}, r"layers \[1\] fast-forward"),
    ({"skip_audio_tower": False}, "skip_audio_tower=false"),
    ({"audio_embed_avg": True}, "audio_embed_avg=true"),
    ({"use_audio_out_self_attention": True}, "use_audio_out_self_attention=true"),
    ({"use_audio_out_embed_projector": True}, "use_audio_out_embed_projector=true"),
    ({"use_rq_transformer": True}, "use_rq_transformer=true"),
    ({"audio_decoder_proj_num_layers": 2}, "audio_decoder_proj_num_layers=2"),
    ({"use_delay_pattern": False}, "use_delay_pattern=false"),
    ({"audio_stream_eos_id": 7}, "audio_stream_eos_id"),
    ({"text_config": {"hidden_act": "gelu"}}, "hidden_act='gelu'"),
    ({"text_config": {"attention_bias": True}}, "attention_bias=true"),
]


@pytest.mark.parametrize("change,message", REFUSED)
def test_configs_we_cannot_reproduce_are_refused_naming_the_field(tmp_path, change, message):
    d = tmp_path / "m"
    shutil.copytree(FIX / "model", d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in change.items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayoutError, match=message) as e:
        load_llm(d)[0]
    assert "\n" not in str(e.value)
    with pytest.raises(LayoutError, match=message):
        convert(d, tmp_path / "out", "native")


def test_directories_that_are_none_of_the_layouts(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="none of the known layouts.*model_type='llama'"):
        load_llm(tmp_path / "llama")[0]
    tok = Path(__file__).parent / "fixtures" / "release" / "tokenizer_original"
    with pytest.raises(ValueError, match="audio tokenizer"):
        load_llm(tok)[0]
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(FIX / "model/config.json", d)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_llm(d)[0]
    shutil.copytree(FIX / "model", tmp_path / "short")
    cfg = json.loads((tmp_path / "short/config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 2
    cfg["audio_dual_ffn_layers"] = [0, 1]
    (tmp_path / "short/config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayoutError, match="does not have, e.g. layers.2"):
        load_llm(tmp_path / "short")[0]


def test_full_size_names_map_one_to_one_onto_the_release_and_the_port():
    """Release names/shapes: keys/llm_original.json (helper B: the original code's meta build at the
    release config.json, checked there against the hub's model.safetensors.index.json, 397 names)."""
    release = json.loads(KEYS.read_text())
    assert release["matches_release_index"]["same_names"]
    cfg = DualFFNConfig.preset("full")                              # our full config = the release's
    assert read_config_from_dict(release["config"]) == cfg
    shapes = native_shapes(cfg)
    ours = {name: list(shapes[src]) for name, src in export_plan(cfg, "original")}
    assert ours == {k: list(v) for k, v in release["keys"].items()}
    assert len(ours) == len(shapes) == 397                          # one-to-one: no fill at full size

    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    with torch.device("meta"):
        port = HiggsAudioV2ForConditionalGeneration(HiggsAudioV2Config(codebook_size=1026), use_text_head=True)
    theirs = {k: list(v.shape) for k, v in port.state_dict().items()}
    assert {name: list(shapes[src]) for name, src in export_plan(cfg, "hf")} == theirs


def read_config_from_dict(raw: dict) -> DualFFNConfig:
    from higgs_train.llm.layouts import config_from_original

    cfg = config_from_original(raw)
    assert cfg.special_tokens == {"audio_eos": 128012, "audio_out_bos": 128013, "audio_in": 128015,
                                  "audio_out": 128016, "pad": 128001}
    assert cfg.encode_audio_in_tokens
    return replace(cfg, special_tokens=None, encode_audio_in_tokens=False)


def test_read_config_needs_no_weights():
    cfg, layout = read_config(FIX / "partial")
    assert layout == "original" and cfg.dual_layers == [0, 2] and (cfg.num_codebooks, cfg.codebook_size) == (4, 30)


# ---------------------------------------------------------------- entry points on release layouts

TOK_ORIGINAL = Path(__file__).parent / "fixtures" / "release" / "tokenizer_original"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One tiny 8 x 1024-code LLM with its text tokenizer in all three layouts (the codebooks of the
    original-layout audio tokenizer fixture); hf and original written by our converter."""
    from higgs_train.testing.tiny_exports import tiny_text_tokenizer

    root = tmp_path_factory.mktemp("layouts")
    tok = tiny_text_tokenizer(root / "native", vocab_size=300)
    torch.manual_seed(5)
    model = DualFFNModel(DualFFNConfig.preset("full", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                                       num_heads=4, num_kv_heads=2, head_dim=8, rope_scaling=None))
    save_llm(model, root / "native")
    for layout in ("hf", "original"):
        convert(root / "native", root / layout, layout)
    return root


def test_engine_gives_the_same_frames_from_every_layout(layouts):
    from inference.engine import Engine, Request
    from inference.sampling import SamplingConfig
    from higgs_train.llm.text_tokenizer import load_text_tokenizer
    from higgs_train.tokenizer import AudioTokenizer

    greedy = SamplingConfig(temperature=0, max_frames=6, seed=0)
    engine = Engine.from_pretrained(layouts / "original", TOK_ORIGINAL)   # release LLM + release codec
    assert engine.model.cfg.special_tokens["audio_out"] == engine.tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
    want = engine.generate([Request("Hello there.", sampling=greedy)])[0].codes
    assert want.shape == (8, 6)
    codec = engine.codec
    for layout in ("native", "hf"):
        e = Engine(load_llm(layouts / layout)[0], codec, load_text_tokenizer(layouts / layout))
        assert torch.equal(e.generate([Request("Hello there.", sampling=greedy)])[0].codes, want)
    assert isinstance(codec, AudioTokenizer)


def test_cli_train_init_and_evaluation_entry_points_take_the_release_layouts(layouts, tmp_path):
    from hydra import compose, initialize_config_dir

    from higgs_train.config import package_configs
    from higgs_train.llm.lit import LLMModule
    from inference.__main__ import synthesize
    from inference.evaluation import from_exports

    native = load_llm(layouts / "native")[0].state_dict()
    model_cfg = asdict(read_config(layouts / "native")[0])
    for layout in ("hf", "original"):
        # python -m higgs_train.train task=llm task.init_from=DIR (and finetune base=, which builds it)
        m = LLMModule._make_model(model_cfg, str(layouts / layout))
        assert all(torch.equal(m.state_dict()[k], v) for k, v in native.items())
    # python -m inference model=DIR (the server and python -m recipes.evaluate build the same engine)
    with initialize_config_dir(str(package_configs("inference") / "inference"), version_base="1.3"):
        cfg = compose("infer", overrides=[f"model={layouts / 'original'}", f"tokenizer={TOK_ORIGINAL}",
                                          "text=Hello there.", f"output={tmp_path / 'o.wav'}",
                                          "sampling.max_frames=4", "sampling.seed=0", "engine.buckets=[256]",
                                          "progress=false"])
    assert synthesize(cfg) > 0 and (tmp_path / "o.wav").stat().st_size > 100
    synth = from_exports(layouts / "hf", TOK_ORIGINAL, device="cpu", sampling={"max_frames": 4, "seed": 0},
                         engine={"buckets": [256]})
    audio, sr, _ = synth("Hello there.")          # what the evaluation harness calls per item
    assert sr == 24000 and 0 < len(audio) <= 4 * 960


def test_from_hf_llama_points_a_higgs_directory_to_load_llm():
    with pytest.raises(ValueError, match="Higgs Audio LLM.*load_llm"):
        from_hf_llama(FIX / "model")
