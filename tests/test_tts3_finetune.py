"""Fine-tuning Higgs TTS 3: `python -m recipes.finetune base=V3_DIR tokenizer=V3_DIR` on the demo's
voice clips (real curation and tokenization with the audio tokenizer the base bundles), LoRA, full
and QLoRA on the tiny release checkpoint (tests/fixtures/release_v3/tiny/, its codec config copied
inside); the export is a release directory (the bundled codec copied through) whose logits are the
adapted model's. The reference loader's check of such exports: tests/fixtures/release_v3/README.md."""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from data_pipeline.synth import VOICES, make_voice_folder
from higgs_train.families import family_of
from higgs_train.families.higgs_tts3.prompt import encode
from higgs_train.finetune.lora import FinetuneModule
from higgs_train.tokenizer.layouts import BUNDLED_PREFIX as CODEC_PREFIX
from test_finetune import FAST, NAME, STOPS, finished_run

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FIX = Path(__file__).parent / "fixtures" / "release_v3"
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")   # the family's lora_targets, in the release's names


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts3_finetune")
    base = root / "base"
    shutil.copytree(FIX / "tiny", base)
    if not (base / "codec_config.json").is_file():   # the bundled codec's config, inside the base
        shutil.copyfile(FIX / "codec_config.json", base / "codec_config.json")
    make_voice_folder(root / "voice", voice=VOICES[6], n_clips=6)
    return {"root": root, "base": base,
            "args": [f"voice_dir={root / 'voice'}", f"base={base}", f"tokenizer={base}", f"name={NAME}"]}


def tensors(d) -> dict:
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def clone_case(tok):
    """The fixture's cloning case as model inputs (prompt + delayed target rows)."""
    case = json.loads((FIX / "cases.json").read_text())["cases"]["clone"]
    from safetensors.torch import load_file

    t = load_file(str(FIX / "cases.safetensors"))
    s = encode(tok, case["text"], [(case["ref_text"], t["clone.ref_codes"].T)], codes=t["clone.codes"].T)
    return tuple(torch.from_numpy(a)[None] for a in (s.input_ids, s.audio_codes, s.audio_mask))


def assert_release_export(export, base, changed_prefixes):
    """A release directory: the base's config and names, the bundled codec bit-equal, changed only
    where fine-tuning may change it."""
    from higgs_train.families.higgs_tts3.layouts import config_from_original

    raw = [json.loads((d / "config.json").read_text()) for d in (base, export)]
    assert raw[1]["model_type"] == "higgs_multimodal_qwen3" and config_from_original(raw[0]) == config_from_original(raw[1])
    a, b = tensors(base), tensors(export)
    assert a.keys() == b.keys() and sum(k.startswith(CODEC_PREFIX) for k in b) == 351
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith(changed_prefixes) for k in changed), sorted(changed)[:5]
    assert (export / "codec_config.json").is_file() and (export / "tokenizer.json").is_file()
    return changed


def test_lora_export_in_release_layout_has_the_adapted_logits(inputs, tmp_path):
    """LoRA on the family's targets: the merged export (the base's release layout, or ours) loads
    through the family with the in-memory adapted model's teacher-forced logits (1e-5)."""
    base = inputs["base"]
    family = family_of(base)
    cfg, layout = family.read_config(base)
    assert layout == "original"
    tok = family.text_tokenizer(base)
    ids, codes, mask = clone_case(tok)
    model_cfg = {"family": family.name, **asdict(cfg)}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        base_logits = family.load(base)[0].eval()(ids, codes, mask).audio_logits
    for export_layout in (None, "native"):
        module = FinetuneModule(model_cfg, tokenizer_dir=str(base), optim={}, init_from=str(base),
                                lora=dict(rank=4, alpha=8, dropout=0.0, targets=None), export_layout=export_layout)
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 * 7 * cfg.num_layers and all(".lora_" in n for n in trainable)
        for n, p in module.model.named_parameters():
            if ".lora_B." in n:   # B starts at zero: give the adapters something to merge
                p.data = torch.randn(p.shape, generator=g) * 0.1
        module.eval()
        with torch.no_grad():
            adapted = module.model(ids, codes, mask).audio_logits
        out = tmp_path / str(export_layout)
        module.export(out)
        model, got = family_of(out).load(out)
        with torch.no_grad():
            again = model.eval()(ids, codes, mask).audio_logits
        diff = (again - adapted).abs().max().item()
        assert got == (export_layout or "original") and diff < 1e-5, diff
        assert (again - base_logits).abs().max() > 1e-2                     # the adapters changed the output
        if got == "original":                                              # the release layout bundles the codec
            assert sum(k.startswith(CODEC_PREFIX) for k in tensors(out)) == 351
    assert_release_export(tmp_path / "None", base, tuple(f"body.layers.{i}." for i in range(cfg.num_layers)))
    # names of the base's layout are targets too; an unknown layout is refused before any work
    from recipes.finetune import FinetuneError
    from recipes.finetune.run import _check_targets

    _check_targets(cfg, layout, list(TARGETS))
    with pytest.raises(FinetuneError, match="'self_attn.qq' names no linear layer"):
        _check_targets(cfg, layout, ["self_attn.qq"])
    with pytest.raises(ValueError, match="export_layout='hf': use one of native, original"):
        FinetuneModule(model_cfg, tokenizer_dir=str(base), optim={}, init_from=str(base),
                       lora=dict(rank=4, alpha=8, dropout=0.0, targets=None), export_layout="hf")


@pytest.fixture(scope="module")
def run(inputs):
    """One LoRA fine-tune through the recipe, shared by the tests below; the stop check speaks held-out
    sentences with the model being trained (the engine, this family's generation rule)."""
    return finished_run(inputs["root"] / "out", *inputs["args"], *FAST, *STOPS, "trainer.max_steps=24",
                        "task.optim.lr=1e-2")


@pytest.mark.slow
def test_lora_recipe_on_a_release_base(inputs, run):
    out, summary = run["out"], run["summary"]
    for i, what in enumerate(["curate", "tokenize", "train", "export", "voice preset"], 1):
        assert f"{i}/5 {what}" in run["stdout"]
    print(f"v3 LoRA: held-out loss {summary['base_val_loss']:.4f} -> {summary['val_loss']:.4f}, "
          f"best step {summary['best_step']} of {summary['steps']}")
    assert summary["val_loss"] < summary["base_val_loss"] - 0.2, summary
    assert summary["clips"]["val"] >= 1 and summary["best_step"] is not None
    assert [h["step"] for h in summary["validations"]] == [4, 8, 12, 16, 20, 24]    # the stop check ran each time
    assert summary["stop_rate"] is not None and summary["duration_ratio"] > 0
    export = out / "export"
    layers = tuple(f"body.layers.{i}." for i in range(2))
    changed = assert_release_export(export, inputs["base"], layers)
    assert not any(k.endswith(("norm.weight", "layernorm.weight")) for k in changed)   # LoRA: linears only
    assert (export / "voices" / NAME / "reference.wav").is_file()
    # the audio tokenizer loads from the export (bundled tensors + codec_config.json) as from the base
    from higgs_train.tokenizer import AudioTokenizer

    wav = torch.from_numpy(np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1)
    a, b = (AudioTokenizer.from_pretrained(d).eval() for d in (inputs["base"], export))
    with torch.no_grad():
        assert torch.equal(a.encode(wav, 24000), b.encode(wav, 24000))
    # the engine loads the export as its model and its audio tokenizer (model=EXPORT tokenizer=EXPORT)
    from inference.engine import Engine

    engine = Engine.from_pretrained(export, export)
    assert engine.family.name == "higgs_tts3" and engine.model.cfg == family_of(inputs["base"]).read_config(export)[0]


@pytest.mark.slow
def test_full_recipe_on_a_release_base(inputs, run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run["out"] / "corpus", out / "corpus")   # curation and tokenization are done
    summary = finished_run(out, *inputs["args"], *FAST, "mode=full", "trainer.max_steps=8", "task.optim.lr=3e-3")["summary"]
    print(f"v3 full: held-out loss {summary['base_val_loss']:.4f} -> {summary['val_loss']:.4f}")
    assert summary["val_loss"] < summary["base_val_loss"], summary
    changed = assert_release_export(out / "export", inputs["base"], ("body.", "tied.embedding."))
    assert "tied.embedding.modality_embeddings.0.embedding.weight" in changed   # the fused table trains too
    assert not any(k.startswith(CODEC_PREFIX) for k in changed)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_qlora_recipe_on_a_release_base(inputs, run, tmp_path, mode):
    out = tmp_path / "out"
    shutil.copytree(run["out"] / "corpus", out / "corpus")
    summary = finished_run(out, *inputs["args"], *FAST, f"quantize={mode}", "trainer.max_steps=8",
                           "task.optim.lr=1e-2")["summary"]
    print(f"v3 QLoRA {mode}: held-out loss (base and result loaded {mode}) "
          f"{summary['base_val_loss']:.4f} -> {summary['val_loss']:.4f}")
    assert summary["val_loss"] < summary["base_val_loss"], summary
    # the adapters merged into the base's own fp32 weights, not the rounded ones: untargeted tensors equal
    changed = assert_release_export(out / "export", inputs["base"], tuple(f"body.layers.{i}." for i in range(2)))
    assert not any("norm" in k for k in changed)
