"""The released tokenizer's layouts: our AudioTokenizer against the original code (fixtures
written by boson-multimodal 0.1.1 itself, scripts/release_fixtures/tokenizer.py) and against the
transformers port (HiggsAudioV2TokenizerModel, in this venv); conversions between the three
layouts; the release's full key set; one-line errors on broken directories."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import higgs_train.tokenizer.model as tok_model
from higgs_train.convert import convert, detect
from higgs_train.convert import tokenizer as conv
from higgs_train.tokenizer import layouts
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

FIX = Path(__file__).parent / "fixtures" / "release"
ORIGINAL = FIX / "tokenizer_original"
CASES_DIR = FIX / "tokenizer_original_cases"
CASES = json.loads((CASES_DIR / "cases.json").read_text())["cases"]

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def case_input(c) -> np.ndarray:
    return np.load(CASES_DIR / c["files"]["input"])


def case_codes(c) -> np.ndarray:
    return np.load(CASES_DIR / c["files"]["codes"])


@pytest.fixture(scope="module")
def ours():
    return AudioTokenizer.from_pretrained(ORIGINAL)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "hf"
    convert(ORIGINAL, d, to="hf")
    return d


def port_codes(port, wav: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return port.encode(torch.from_numpy(wav)[None, None], return_dict=False)[0]


def test_fixtures_cover_both_framing_branches_and_resampling():
    assert {c["pad_branch"] for c in CASES} == {True, False}
    assert {c["sample_rate"] for c in CASES} >= {24000, 16000, 44100}


def test_original_layout_widths_come_from_tensor_shapes(ours):
    assert detect(ORIGINAL) == ("tokenizer", "original")
    c = ours.cfg
    assert (c.channels, c.decoder_channels, c.latent_dim, c.codebook_dim) == (2, 64, 32, 8)
    t = c.teacher_config
    assert (t["hidden_size"], t["num_attention_heads"], t["num_hidden_layers"], t["intermediate_size"]) == (64, 1, 2, 128)
    assert t["conv_dim"] == [32] * 7 and t["num_conv_pos_embeddings"] == 128 and t["num_conv_pos_embedding_groups"] == 16


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_codes_and_audio_equal_the_original_code(ours, case):
    codes = ours.encode(torch.from_numpy(case_input(case)), case["sample_rate"])[0].numpy()
    ref = case_codes(case)
    assert codes.shape == ref.shape == (8, case["code_frames"])
    assert np.array_equal(codes, ref)
    audio = ours.decode(torch.from_numpy(ref)[None]).numpy()
    ref_audio = np.load(CASES_DIR / case["files"]["decoded"])
    assert audio.shape == ref_audio.shape
    assert np.abs(audio - ref_audio).max() < 1e-4


def test_batched_encode_equals_the_original_per_clip(ours):
    clips = [case_input(c) for c in CASES if c["sample_rate"] == 24000]
    clips.append(clips[0].copy())  # two of equal length go through one batch
    refs = [case_codes(c) for c in CASES if c["sample_rate"] == 24000]
    refs.append(refs[0])
    for codes, ref in zip(ours.encode_batch(clips, 24000), refs):
        assert np.array_equal(codes.numpy(), ref)


def _same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_round_trips_are_bit_exact(tmp_path):
    src = torch.load(ORIGINAL / "model.pth", weights_only=True)
    # original -> native -> original: every tensor, every name
    convert(ORIGINAL, tmp_path / "native", to="native")
    assert detect(tmp_path / "native") == ("tokenizer", "native")
    convert(tmp_path / "native", tmp_path / "orig2", to="original")
    _same_state(src, torch.load(tmp_path / "orig2" / "model.pth", weights_only=True))
    assert json.loads((tmp_path / "orig2" / "config.json").read_text()) == json.loads((ORIGINAL / "config.json").read_text())
    # native -> original -> native: every tensor
    convert(tmp_path / "orig2", tmp_path / "native2", to="native")
    _same_state(load_file(tmp_path / "native" / "model.safetensors"), load_file(tmp_path / "native2" / "model.safetensors"))
    # hf -> native -> hf: every tensor (weight norm unfolded and folded back exactly)
    convert(tmp_path / "native", tmp_path / "hf", to="hf")
    convert(tmp_path / "hf", tmp_path / "native3", to="native")
    convert(tmp_path / "native3", tmp_path / "hf2", to="hf")
    _same_state(load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors"))
    # native -> hf -> native: the same effective weights, so the same codes and audio bit for bit
    a, b = AudioTokenizer.from_pretrained(tmp_path / "native"), AudioTokenizer.from_pretrained(tmp_path / "native3")
    wav = torch.from_numpy(case_input(CASES[0]))
    ca, cb = a.encode(wav, 24000), b.encode(wav, 24000)
    assert torch.equal(ca, cb) and torch.equal(a.decode(ca), b.decode(cb))
    # original -> hf directly, then -> original: the original loader's key set again (no masking vector)
    convert(tmp_path / "hf", tmp_path / "orig3", to="original")
    back = torch.load(tmp_path / "orig3" / "model.pth", weights_only=True)
    assert set(src) - set(back) == {"semantic_model.masked_spec_embed"} and set(back) <= set(src)


def test_hf_export_loads_in_the_port_strictly_with_the_same_codes(ours, hf_dir, monkeypatch):
    from transformers import HiggsAudioV2TokenizerModel

    assert detect(hf_dir) == ("tokenizer", "hf")
    port, info = HiggsAudioV2TokenizerModel.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    port.eval()
    differ = {}
    for c in (c for c in CASES if c["sample_rate"] == 24000):  # the port does not resample
        wav, ref = case_input(c), case_codes(c)
        pc = port_codes(port, wav)
        if not c["pad_branch"]:  # acoustic frames == semantic frames: no padding anywhere
            assert np.array_equal(pc.numpy(), ref)
        else:
            # The port pads 480 samples each side where the original pads 320; with 480 ours
            # gives the port's codes exactly, so that padding is the whole difference.
            monkeypatch.setattr(tok_model, "FRAMING_PAD", 480)
            assert torch.equal(pc, ours.encode(torch.from_numpy(wav), 24000)[0])
            monkeypatch.setattr(tok_model, "FRAMING_PAD", 320)
            differ[c["name"]] = int((pc.numpy() != ref).any(0).sum())
        audio_port = port.decode(torch.from_numpy(ref)[None], return_dict=False)
        assert (audio_port - ours.decode(torch.from_numpy(ref)[None])).abs().max().item() < 1e-4
    assert differ and all(n > 0 for n in differ.values()), differ  # the 160-sample shift moves codes


def random_port(seed: int = 0):
    """A tiny HiggsAudioV2TokenizerModel with random weights and codebooks drawn from its own
    latents of real speech (the port initialises codebooks to zeros)."""
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    torch.manual_seed(seed)
    cfg = HiggsAudioV2TokenizerConfig(
        acoustic_model_config=dict(encoder_hidden_size=2, downsampling_ratios=[8, 5, 4, 2, 3],
                                   decoder_hidden_size=64, upsampling_ratios=[8, 5, 4, 2, 3], hidden_size=16),
        semantic_model_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                                   intermediate_size=64, conv_dim=[16] * 7),
        target_bandwidths=[0.5, 1, 1.5, 2], codebook_dim=8)
    port = HiggsAudioV2TokenizerModel(cfg).eval()
    wav = torch.from_numpy(np.concatenate([case_input(c) for c in CASES if c["sample_rate"] == 24000]))[None, None]
    with torch.no_grad():
        sem = port.encoder_semantic(port._extract_semantic_features(wav).transpose(1, 2))
        ac = port.acoustic_encoder(wav)[..., :sem.shape[2]]
        residual = port.fc(torch.cat([ac, sem], 1).transpose(1, 2)).transpose(1, 2)
        g = torch.Generator().manual_seed(seed)
        for q in port.quantizer.quantizers:
            x = q.project_in(residual.transpose(1, 2)).reshape(-1, 8)
            q.codebook.embed.copy_(x[torch.randint(0, len(x), (1024,), generator=g)] + 0.01 * torch.randn(1024, 8, generator=g))
            residual = residual - q.decode(q.encode(residual))
    return port


def test_port_saved_model_loads_in_ours_with_the_same_codes(tmp_path, monkeypatch):
    port = random_port()
    port.save_pretrained(tmp_path / "port")
    m = AudioTokenizer.from_pretrained(tmp_path / "port")
    for c in (c for c in CASES if c["sample_rate"] == 24000):
        wav = case_input(c)
        pc = port_codes(port, wav)
        assert len(torch.unique(pc[0])) > 10  # codes that depend on the input
        monkeypatch.setattr(tok_model, "FRAMING_PAD", 320 if not c["pad_branch"] else 480)
        assert torch.equal(m.encode(torch.from_numpy(wav), 24000)[0], pc), c["name"]
        with torch.no_grad():
            assert (port.decode(pc[None], return_dict=False) - m.decode(pc[None])).abs().max().item() < 1e-5
    # and back: ours -> hf is the port's own file, tensor for tensor
    convert(tmp_path / "port", tmp_path / "native", to="native")
    convert(tmp_path / "native", tmp_path / "hf", to="hf")
    _same_state(load_file(tmp_path / "port" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors"))


def full_release_keys() -> dict:
    return json.loads((FIX / "keys" / "tokenizer_original.json").read_text())


def full_native_state() -> dict:
    """Our full-size model (configs/model/tokenizer/full.yaml's widths, hubert-base's config as
    facebook/hubert-base-ls960 has it) on the meta device."""
    with torch.device("meta"):
        m = AudioTokenizer(TokenizerConfig(teacher_config={"model_type": "hubert"}))
    return m.state_dict()


def test_release_full_key_set_maps_one_to_one():
    release = full_release_keys()
    keys = {k: tuple(v) for k, v in release["keys"].items()}
    ours = {k: tuple(v.shape) for k, v in full_native_state().items()}
    mapped = {layouts.original_to_native(k): s for k, s in keys.items()}
    assert len(mapped) == len(keys) == len(ours) == 602
    assert mapped == ours
    assert {layouts.native_to_original(k) for k in ours} == set(keys)
    import math
    assert sum(math.prod(s) for s in ours.values()) == release["totals"]["state_dict_elements"] == 201_426_474


def test_port_full_key_set_maps_one_to_one():
    from transformers import HiggsAudioV2TokenizerModel

    state = full_native_state()
    cfg = TokenizerConfig(teacher_config={"model_type": "hubert"})
    with torch.device("meta"):
        port = HiggsAudioV2TokenizerModel(conv.hf_config(cfg))
    port_shapes = {k: tuple(v.shape) for k, v in port.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in layouts.native_to_hf_state(state).items()}  # weight norm folded
    assert ours == port_shapes
    assert port.config.num_quantizers == 8 and port.config.hop_length == 960


def test_broken_directories_give_one_line_errors(tmp_path):
    d = tmp_path / "orig"
    shutil.copytree(ORIGINAL, d)
    (d / "model.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pth"):
        AudioTokenizer.from_pretrained(d)
    shutil.copy(ORIGINAL / "model.pth", d / "model.pth")
    cfg = json.loads((ORIGINAL / "config.json").read_text())
    for field, bad in (("sample_rate", 16000), ("n_q", 12), ("semantic_techer", "w2v_bert2"), ("ratios", [8, 5, 4, 2])):
        (d / "config.json").write_text(json.dumps({**cfg, field: bad}))
        with pytest.raises(ValueError, match=rf"^original tokenizer config: {field}="):
            AudioTokenizer.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({**cfg, "D": 64}))
    with pytest.raises(ValueError, match="D=64 but model.pth holds 32"):
        AudioTokenizer.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        AudioTokenizer.from_pretrained(tmp_path / "nothing")
    hf = tmp_path / "hf"
    convert(ORIGINAL, hf, to="hf")
    c = json.loads((hf / "config.json").read_text())
    c["acoustic_model_config"]["upsampling_ratios"] = [3, 2, 4, 5, 8]
    (hf / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"^hf tokenizer config: acoustic_model_config.upsampling_ratios="):
        AudioTokenizer.from_pretrained(hf)
    with pytest.raises(ValueError, match="unknown tensor encoder.extra.weight"):
        layouts.original_to_native("encoder.extra.weight")
