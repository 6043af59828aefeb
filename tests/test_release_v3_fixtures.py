"""The Higgs TTS 3 reference fixtures (tests/fixtures/release_v3/, written by
scripts/release_fixtures/v3/write.py and keys.py in their throwaway venv) are self-consistent:
the shapes and counts their README states, the prompt layout the reference builds, the delay
pattern of the teacher-forced frames and the reference's stop rule in the greedy frames."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

FIX = Path(__file__).parent / "fixtures" / "release_v3"
BOC, EOC, N = 1024, 1025, 8


@pytest.fixture(scope="module")
def cases():
    return json.loads((FIX / "cases.json").read_text())


@pytest.fixture(scope="module")
def tensors():
    return load_file(str(FIX / "cases.safetensors"))


def delay(codes: torch.Tensor) -> torch.Tensor:
    """[T, 8] -> [T + 7, 8]: codebook c shifted by c, BOC before, EOC after."""
    T = codes.shape[0]
    out = torch.full((T + N - 1, N), EOC, dtype=codes.dtype)
    for c in range(N):
        out[:c, c] = BOC
        out[c:c + T, c] = codes[:, c]
    return out


def test_checkpoint_layout_and_config():
    cfg = json.loads((FIX / "tiny" / "config.json").read_text())
    assert cfg["model_type"] == "higgs_multimodal_qwen3" and cfg["audio_token_id"] == -100
    assert cfg["text_config"]["rope_theta"] is None and cfg["text_config"]["vocab_size"] == 320
    assert cfg["audio_encoder_config"] == {"encoder_type": "discrete", "num_codebooks": 8, "vocab_size": 1026,
                                           "tie_word_embeddings": True}
    with safe_open(str(FIX / "tiny" / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    codec = [k for k in shapes if k.startswith("tied.embedding.modality_embeddings.0.model.")]
    llm = sorted(set(shapes) - set(codec))
    assert (len(shapes), len(llm), len(codec)) == (376, 25, 351)
    assert shapes["tied.embedding.modality_embeddings.0.embedding.weight"] == [8 * 1026, 32]
    assert shapes["tied.embedding.text_embedding.weight"] == [320, 32]
    assert shapes["body.layers.1.self_attn.q_norm.weight"] == [16]
    assert not any(k.startswith("tied.head.") for k in shapes)     # tied: no head copies stored
    assert "tied.embedding.modality_embeddings.0.model.quantizer.quantizers.7.codebook.embed" in codec


def test_tokenizer_specials_come_from_added_vocabulary(cases):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIX / "tiny" / "tokenizer.json"))
    added = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    assert added == cases["meta"]["specials"] == {"<|endoftext|>": 300, "<|tts|>": 301, "<|ref_text|>": 302,
                                                   "<|ref_audio|>": 303, "<|text|>": 304, "<|audio|>": 305}
    assert tok.get_vocab_size() == cases["meta"]["tokenizer_len"] == 306


def test_prompt_layouts(cases, tensors):
    s = cases["meta"]["specials"]
    z, c = cases["cases"]["zero_shot"], cases["cases"]["clone"]
    assert z["prompt_ids"] == [s["<|tts|>"], s["<|text|>"], *z["text_ids"], s["<|audio|>"]]
    n_ref = tensors["clone.ref_delayed"].shape[0]
    assert n_ref == tensors["clone.ref_codes"].shape[0] + 7 == c["n_placeholders"] == 13
    assert c["prompt_ids"] == [s["<|tts|>"], s["<|ref_text|>"], *c["ref_text_ids"], s["<|ref_audio|>"],
                               *[-100] * n_ref, s["<|text|>"], *c["text_ids"], s["<|audio|>"]]
    assert torch.equal(tensors["clone.ref_delayed"], delay(tensors["clone.ref_codes"]))


@pytest.mark.parametrize("name,rows", [("zero_shot", 10), ("clone", 11)])
def test_teacher_forced_shapes(tensors, name, rows):
    frames = tensors[f"{name}.frames"]
    assert torch.equal(frames, delay(tensors[f"{name}.codes"])) and frames.shape == (rows, 8)
    assert tensors[f"{name}.audio_logits"].shape == (rows, 8, 1026)
    assert tensors[f"{name}.text_logits"].shape == (rows, 320)
    assert tensors[f"{name}.audio_logits"].abs().max() < 10
    # the reference's action mask marks the real codes only: T per codebook
    assert tensors[f"{name}.action_mask"].sum(0).tolist() == [rows - 7] * 8


def test_greedy_frames_follow_the_reference_stop_rule(cases, tensors):
    for name in ("zero_shot", "clone"):
        g = tensors[f"{name}.greedy_frames"]
        for r in range(N - 1):      # delay window: codebooks not yet started are overwritten with BOC
            assert (g[r, r + 1:] == BOC).all()
    z = tensors["zero_shot.greedy_frames"]
    eoc = (z[:, 0] == EOC).nonzero().flatten().tolist()
    assert eoc[:3] == [0, 1, 2]           # EOC sampled inside the delay window does not stop the stream
    first_after = min(r for r in eoc if r >= N)
    assert first_after == 27 and z.shape[0] == first_after + N - 1 == 34   # then 6 more steps
    assert cases["cases"]["zero_shot"]["greedy"]["generation_done"] is True
    assert cases["cases"]["clone"]["greedy"]["steps_run"] == tensors["clone.greedy_frames"].shape[0] == 40


def test_codec_case_and_cross_check(tensors):
    assert tensors["codec.codes"].shape == (25, 8)       # 0.8 s padded to 1 s at 25 frames/s
    assert int(tensors["codec.codes"].max()) < 1024
    assert tensors["codec.decoded"].shape == (24000,)
    fig = json.loads((FIX / "figures.json").read_text())
    assert fig["reference_rope"]["loaded_rope_parameters"]["rope_theta"] == 1_000_000
    for name in ("zero_shot", "clone"):
        m = fig["mlx_vs_sglang"][name]
        assert m["prompt_ids_equal"] and m["greedy_frames_equal"] and m["audio_logits_max_abs_diff"] < 1e-5


def test_full_size_key_set():
    keys = json.loads((FIX / "keys.json").read_text())
    t = keys["totals"]
    assert (t["llm_names"], t["codec_names"]) == (len(keys["keys"]), len(keys["codec_keys"])) == (399, 527)
    assert t["llm_parameters"] == sum(math.prod(s) for s in keys["keys"].values()) == 4_043_480_576
    assert t["per_layer_parameters"] * 36 + 151936 * 2560 + 8 * 1026 * 2560 + 2560 == 4_043_480_576
    assert keys["keys"]["tied.embedding.modality_embeddings.0.embedding.weight"] == [8208, 2560]
    assert keys["keys"]["body.layers.35.self_attn.k_proj.weight"] == [1024, 2560]
    assert t["codec_state_dict_elements"] == 201_400_553


def test_the_tiny_directory_holds_its_codec_config():
    """tiny/ is a whole model directory: the bundled codec's config lies beside the weights, where
    the tokenizer loader reads it (the release carries none, and the tiny codec is not the full size)."""
    from higgs_train.tokenizer import AudioTokenizer

    codec_cfg = json.loads((FIX / "tiny" / "codec_config.json").read_text())
    assert codec_cfg["codebook_size"] == 1024 and codec_cfg["codebook_dim"] == 2
    codec = AudioTokenizer.from_pretrained(FIX / "tiny")
    assert (codec.n_codebooks, codec.codebook_size, codec.hop) == (8, 1024, 960)
