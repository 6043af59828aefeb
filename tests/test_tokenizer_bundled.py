"""The audio tokenizer bundled in a Higgs TTS 3 checkpoint (higgs_train/tokenizer/layouts.py,
read_bundled): the tiny reference checkpoint's codec (tests/fixtures/release_v3/) loads from the
checkpoint directory, gives the transformers port's codes (the reference loaders build that port
from the same tensors) and the reference's own codec case; its config resolution, the full-size
default against the release's key set, the error without a bundled tokenizer, the conversion to our
layout and the tokenize stage's fingerprint."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

import higgs_train.tokenizer.model as tok_model
from data_pipeline.tokenize import tokenizer_fingerprint
from higgs_train.convert import convert
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.tokenizer import layouts

V3 = Path(__file__).parent / "fixtures" / "release_v3"
TINY = V3 / "tiny"
CODEC_CONFIG = TINY / "codec_config.json"   # beside the weights, where the loader finds it
SPEECH = Path(__file__).parent / "fixtures" / "real_speech" / "en_man.flac"   # 24 kHz

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def ours():
    return AudioTokenizer.from_pretrained(TINY, codec_config=CODEC_CONFIG)


@pytest.fixture(scope="module")
def port():
    """transformers' HiggsAudioV2TokenizerModel holding the bundled tensors, prefix stripped
    (what sglang-omni's codec facade builds), loaded strictly."""
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    model = HiggsAudioV2TokenizerModel(HiggsAudioV2TokenizerConfig(**json.loads(CODEC_CONFIG.read_text())))
    state = {k.removeprefix(layouts.BUNDLED_PREFIX): v for k, v in load_file(TINY / "model.safetensors").items()
             if k.startswith(layouts.BUNDLED_PREFIX)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def speech(seconds: float) -> np.ndarray:
    wav, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 24000
    return wav[24000:24000 + int(seconds * sr)]


def test_a_v3_directory_is_read_as_its_bundled_tokenizer(ours):
    assert layouts.tokenizer_layout(TINY) == "bundled"
    assert layouts.codebook_shape(TINY) == (8, 1024)
    c = ours.cfg
    assert (c.channels, c.decoder_channels, c.latent_dim, c.codebook_dim) == (1, 32, 16, 2)
    assert c.teacher_config["hidden_size"] == 16 and c.teacher_config["num_hidden_layers"] == 1
    tensors = layouts.bundled_codec_tensors(TINY)   # names as stored, the LLM's tensors left out
    stored = load_file(TINY / "model.safetensors")
    assert len(tensors) == 351 and len(stored) == 376
    assert all(torch.equal(t, stored[k]) and t.dtype == stored[k].dtype for k, t in tensors.items())


@pytest.mark.parametrize("seconds,pad,frames", [(2.0, 0, 50), (1.5, 320, 38)])
def test_codes_and_audio_equal_the_port_on_real_speech(ours, port, monkeypatch, seconds, pad, frames):
    wav = speech(seconds)
    assert ours._framing(len(wav))[0] == pad   # both branches of the framing rule
    # the port pads 480 samples each side where acoustic and semantic frame counts differ, the
    # original (and we) 320 (tests/test_tokenizer_release.py): compared at the port's 480 (this
    # tiny codec's codes happen not to move with that 160-sample shift on these clips)
    monkeypatch.setattr(tok_model, "FRAMING_PAD", 480)
    codes = ours.encode(torch.from_numpy(wav), 24000)[0]
    with torch.no_grad():
        ref = port.encode(torch.from_numpy(wav)[None, None], return_dict=False)[0]
        ref_audio = port.decode(ref[None], return_dict=False)[0]
    assert codes.shape == ref.shape == (8, frames)
    assert len(torch.unique(ref[0])) > 10   # codes that depend on the input
    assert torch.equal(codes, ref)
    assert (ours.decode(ref[None]) - ref_audio).abs().max().item() < 1e-5


def test_codes_equal_the_reference_codec_case(ours):
    """sglang-omni's encode_reference (pads under 1 s to 1 s) and its decode, in cases.safetensors."""
    case = load_file(V3 / "cases.safetensors")
    wav = torch.nn.functional.pad(case["codec.wav"].float(), (0, 24000 - len(case["codec.wav"])))
    codes = ours.encode(wav, 24000)[0]
    assert torch.equal(codes, case["codec.codes"].T.long())
    audio = ours.decode(codes[None])[0, 0]
    assert (audio - case["codec.decoded"].float()).abs().max().item() < 1e-3   # stored in fp16


def test_the_default_config_is_the_releases_full_key_set():
    """No codec config anywhere: the v2 tokenizer's (our full size), whose bundled names and shapes
    are the release's 527 (keys.json, from the reference's HiggsAudioV2TokenizerModel)."""
    want = json.loads((V3 / "keys.json").read_text())["codec_keys"]
    with torch.device("meta"):
        full = AudioTokenizer(TokenizerConfig(teacher_config=dict(layouts.RELEASE_TEACHER)))
    got = {layouts.BUNDLED_PREFIX + k: list(v.shape) for k, v in layouts.native_to_hf_state(full.state_dict()).items()}
    assert len(got) == 527 and got == want


def test_codec_config_next_to_the_weights_or_passed(tmp_path, ours):
    d = tmp_path / "v3"
    shutil.copytree(TINY, d)
    (d / layouts.BUNDLED_CONFIG).unlink()
    assert layouts.bundled_hf_config(d) is None   # none there: the full size, which the tiny tensors do not fit
    with pytest.raises(ValueError, match=r"has channels 1 \(acoustic_encoder.conv1.weight\), its config "
                                         r"\(the v2 release's \(our full size\)\) says 64"):
        AudioTokenizer.from_pretrained(d)
    shutil.copyfile(CODEC_CONFIG, d / layouts.BUNDLED_CONFIG)
    wav = torch.from_numpy(speech(2.0))
    assert torch.equal(AudioTokenizer.from_pretrained(d).encode(wav, 24000), ours.encode(wav, 24000))
    four = {**json.loads(CODEC_CONFIG.read_text()), "target_bandwidths": [0.5, 1]}   # a key passed wins
    assert layouts.codebook_shape(d) == (8, 1024) and layouts.codebook_shape(d, four) == (4, 1024)
    with pytest.raises(ValueError, match="codec_config is read for a tokenizer bundled"):
        layouts.read(ours.save_pretrained(tmp_path / "native"), CODEC_CONFIG)


def test_the_prefixed_names_alone_mark_a_bundled_tokenizer(tmp_path, ours):
    """Whatever config.json says (here another family's), in one file or in shards with an index."""
    state = load_file(TINY / "model.safetensors")
    one, shards = tmp_path / "one", tmp_path / "shards"
    for d in (one, shards):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"architecture": "SomeOtherModel"}))
        shutil.copyfile(CODEC_CONFIG, d / layouts.BUNDLED_CONFIG)
    save_file(state, str(one / "model.safetensors"))
    codec = {k for k in state if k.startswith(layouts.BUNDLED_PREFIX)}
    parts = {"model-00001-of-00002.safetensors": sorted(set(state) - codec),
             "model-00002-of-00002.safetensors": sorted(codec)}
    for name, keys in parts.items():
        save_file({k: state[k] for k in keys}, str(shards / name))
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, keys in parts.items() for k in keys}}))
    wav = torch.from_numpy(speech(1.5))
    for d in (one, shards):
        assert layouts.tokenizer_layout(d) == "bundled"
        assert torch.equal(AudioTokenizer.from_pretrained(d).encode(wav, 24000), ours.encode(wav, 24000))


def test_a_v3_directory_without_a_bundled_tokenizer_is_named(tmp_path):
    d = tmp_path / "llm_only"
    d.mkdir()
    shutil.copyfile(TINY / "config.json", d / "config.json")
    save_file({k: v for k, v in load_file(TINY / "model.safetensors").items()
               if not k.startswith(layouts.BUNDLED_PREFIX)}, str(d / "model.safetensors"))
    assert layouts.tokenizer_layout(d) == "bundled"   # config.json's model_type says v3
    with pytest.raises(ValueError, match=f"{d} bundles no audio tokenizer.*{layouts.BUNDLED_PREFIX}"):
        AudioTokenizer.from_pretrained(d)


def test_convert_writes_our_layout_from_the_bundled_tokenizer(tmp_path, ours):
    kind, layout = convert(TINY, tmp_path / "tok", to="native", kind="tokenizer", codec_config=CODEC_CONFIG)
    assert (kind, layout) == ("tokenizer", "bundled")
    native = AudioTokenizer.from_pretrained(tmp_path / "tok")
    assert layouts.tokenizer_layout(tmp_path / "tok") == "native"
    wav = torch.from_numpy(speech(1.5))
    codes = native.encode(wav, 24000)
    assert torch.equal(codes, ours.encode(wav, 24000))
    assert torch.equal(native.decode(codes), ours.decode(codes))


def test_fingerprint_covers_the_bundled_tokenizer_only(tmp_path):
    d = tmp_path / "v3"
    shutil.copytree(TINY, d)
    before = tokenizer_fingerprint(d)
    state = load_file(d / "model.safetensors")
    state["body.norm.weight"] = state["body.norm.weight"] + 1   # the LLM: not the tokenizer
    save_file(state, str(d / "model.safetensors"))
    assert tokenizer_fingerprint(d) == before
    name = layouts.BUNDLED_PREFIX + "fc.bias"
    state[name] = state[name] + 1
    save_file(state, str(d / "model.safetensors"))
    assert tokenizer_fingerprint(d) != before
