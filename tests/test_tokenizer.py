"""Audio tokenizer: interface constants, shapes, framing, export round trip, chunked encoding, RVQ mechanics."""
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from higgs_train.config import CONFIG_DIR
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.tokenizer.quantizer import EMACodebook, ResidualVQ

# smaller than model=tokenizer/tiny: these tests check mechanics, not quality
MICRO_HUBERT = dict(model_type="hubert", hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                    intermediate_size=32, conv_dim=[8] * 7, num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2, mask_time_prob=0.0)
MICRO = dict(channels=2, decoder_channels=64, latent_dim=16, codebook_dim=8, teacher_config=MICRO_HUBERT)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def size_config(size: str) -> TokenizerConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=tokenizer", f"model=tokenizer/{size}", "data.shards=x"])
    return TokenizerConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))


def micro(**kw) -> AudioTokenizer:
    torch.manual_seed(0)
    return AudioTokenizer(TokenizerConfig(**{**MICRO, **kw}))


def trained_micro() -> AudioTokenizer:
    """One training forward: k-means init moves the codebooks onto real latents."""
    m = micro().train()
    m(torch.randn(4, 1, 24000) * 0.1, torch.Generator().manual_seed(0))
    return m.eval()


def tiny_hubert(path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = {k: v for k, v in MICRO_HUBERT.items() if k != "model_type"}
    HubertModel(HubertConfig(**cfg)).save_pretrained(path)
    return path


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_every_size_keeps_the_interface(size):
    cfg = size_config(size)
    assert (cfg.sample_rate, cfg.hop, cfg.n_codebooks, cfg.codebook_size) == (24000, 960, 8, 1024)
    assert cfg.frame_rate == 25.0
    assert cfg.bitrate == 2000.0  # 8 x log2(1024) x 25
    if size == "tiny":
        assert cfg.teacher is None and cfg.teacher_config["model_type"] == "hubert"
    else:
        assert cfg.teacher.endswith("hubert-base-ls960") and cfg.teacher_config is None
        assert (cfg.channels, cfg.decoder_channels, cfg.latent_dim, cfg.codebook_dim) == (64, 1024, 256, 64)


def test_tiny_size_is_cpu_sized():
    m = AudioTokenizer(size_config("tiny"))
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert 0.5e6 < trainable < 2e6, trainable
    assert not any(p.requires_grad for p in m.semantic_model.parameters())


def test_interface_constants_cannot_change():
    with pytest.raises(ValueError, match="hop 960"):
        TokenizerConfig(strides=(8, 5, 4, 2, 2), teacher_config=MICRO_HUBERT)
    with pytest.raises(ValueError, match="8 codebooks"):
        TokenizerConfig(codebook_size=512, teacher_config=MICRO_HUBERT)
    with pytest.raises(ValueError, match="teacher"):
        TokenizerConfig(teacher="none")


@pytest.mark.parametrize("T", [1, 959, 960, 961, 16800, 24000 + 5])
def test_shapes_for_any_length(T):
    m = micro().eval()
    codes = m.encode(torch.randn(2, T) * 0.1, 24000)
    Fr = m.n_frames(T)
    # the original's counts (shorter than a hop: one frame); not ceil(T / 960)
    assert Fr == {1: 1, 959: 1, 960: 1, 961: 1, 16800: 18, 24005: 25}[T]
    assert codes.shape == (2, 8, Fr) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 1024
    wav = m.decode(codes)
    assert wav.shape == (2, 1, Fr * 960)
    assert m.decode(codes[:, :3]).shape == (2, 1, Fr * 960)  # fewer codebooks decode too


def test_framing_rule_is_the_originals():
    """Where the acoustic and semantic frame counts differ, the original pads 320 samples each
    side for the acoustic path only and trims both paths to the shorter."""
    m = trained_micro()
    T = 16800  # 17.5 frames: acoustic 17 frames unpadded, semantic 18
    x = torch.randn(1, 1, T) * 0.1
    assert m.acoustic_frames(T) == 17 and m._framing(T) == (320, 18)
    from higgs_train.tokenizer.semantic import teacher_features
    with torch.no_grad():
        s = m.encoder_semantic(teacher_features(m.semantic_model, x, 24000).transpose(1, 2))
        a = m.acoustic_encoder(F.pad(x, (320, 320)))
        assert (a.shape[2], s.shape[2]) == (18, 18)
        z = m.fc(torch.cat([a, s], 1).transpose(1, 2)).transpose(1, 2)
        assert torch.equal(m.encode(x, 24000), m.quantizer.encode(z))
    T = 24000  # 25 frames both: no padding
    assert m._framing(T) == (0, 25)


def test_input_layouts_and_resampling():
    m = micro().eval()
    x = torch.randn(1, 16000) * 0.1
    assert m.encode(x, 16000).shape == (1, 8, 25)          # 1 s at 16 kHz -> 25 frames
    y = torch.randn(3, 4800) * 0.1
    assert torch.equal(m.encode(y, 24000), m.encode(y[:, None], 24000))  # [B, T] == [B, 1, T]


def test_batched_encode_equals_encoding_each_clip_alone():
    m = trained_micro()
    g = torch.Generator().manual_seed(3)
    clips = [torch.randn(n, generator=g) * 0.1 for n in (9600, 16800, 9600, 24000)]
    batched = m.encode_batch(clips, 24000)
    for c, codes in zip(clips, batched):
        assert torch.equal(codes, m.encode(c, 24000)[0])
    # zero-padding a shorter clip would change its codes (HuBERT normalises over the input)
    padded = m.encode(torch.stack([clips[0], clips[3][:9600] * 0 + clips[0]]), 24000)
    assert torch.equal(padded[0], batched[0])


def test_export_round_trip_gives_identical_codes(tmp_path):
    m = trained_micro()
    m.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    m2 = AudioTokenizer.from_pretrained(tmp_path / "export")
    x = torch.randn(2, 30000) * 0.1
    c1, c2 = m.encode(x, 24000), m2.encode(x, 24000)
    assert torch.equal(c1, c2)
    assert torch.equal(m.decode(c1), m2.decode(c2))
    assert m2.cfg == m.cfg


def test_semantic_teacher_is_embedded_in_the_export(tmp_path):
    teacher_dir = tiny_hubert(tmp_path / "hubert")
    m = micro(teacher=str(teacher_dir), teacher_config=None)
    assert m.cfg.teacher_config["hidden_size"] == 16
    # the directory wins over a teacher_config (model.teacher=DIR on top of tiny.yaml)
    other = micro(teacher=str(teacher_dir), teacher_config={**MICRO_HUBERT, "hidden_size": 32})
    assert other.cfg.teacher_config["hidden_size"] == 16
    assert all(torch.equal(a, b) for a, b in zip(m.semantic_model.state_dict().values(),
                                                 other.semantic_model.state_dict().values()))
    out = m(torch.randn(2, 1, 9600) * 0.1)
    assert out["semantic"].item() > 0 and out["recon"].shape == (2, 1, 9600)
    assert not any(p.requires_grad for p in m.semantic_model.parameters())
    m.eval().save_pretrained(tmp_path / "export")
    for f in teacher_dir.iterdir():  # the export must not need the teacher's folder any more
        f.unlink()
    m2 = AudioTokenizer.from_pretrained(tmp_path / "export")
    x = torch.randn(1, 24000) * 0.1
    assert torch.equal(m.encode(x, 24000), m2.encode(x, 24000))


def test_random_teacher_is_seeded():
    torch.manual_seed(1)
    a = AudioTokenizer(TokenizerConfig(**MICRO)).semantic_model.state_dict()
    torch.manual_seed(2)
    b = AudioTokenizer(TokenizerConfig(**MICRO)).semantic_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_teacher_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AudioTokenizer(TokenizerConfig(**{**MICRO, "teacher": str(tmp_path / "nowhere"), "teacher_config": None}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioTokenizer.from_pretrained(tmp_path)


def test_chunked_encoding_matches_whole_encoding():
    m = trained_micro()
    x = torch.randn(1, 24000 * 9 + 123) * 0.1
    whole = m.encode(x, 24000, chunk_seconds=60)
    chunked = m.encode(x, 24000, chunk_seconds=2)   # 5 chunks, 4 seams
    assert chunked.shape == whole.shape == (1, 8, m.n_frames(x.shape[-1]))
    # 2 s of context on each side covers the encoder's receptive field: the same codes up to
    # float noise on near-ties (an untrained codebook has many near-equal codes) and HuBERT's
    # per-input normalisation
    assert (chunked == whole).float().mean().item() > 0.9
    # and no discontinuity at the seams larger than the codec's own error
    a, b = m.decode(chunked)[0, 0], m.decode(whole)[0, 0]
    seams = [s * 50 * 960 for s in range(1, 5)]
    seam_err = max((a[s - 960:s + 960] - b[s - 960:s + 960]).pow(2).mean().sqrt().item() for s in seams)
    n = min(len(b), x.shape[-1])
    codec_err = (b[:n] - x[0, :n]).pow(2).mean().sqrt().item()
    assert seam_err <= codec_err, (seam_err, codec_err)


def test_ema_codebook_kmeans_update_and_restart():
    torch.manual_seed(0)
    centers = torch.randn(16, 4) * 3
    data = centers[torch.randint(0, 16, (2048,))] + 0.05 * torch.randn(2048, 4)
    cb = EMACodebook(size=64, dim=4, decay=0.9, dead_threshold=0.05)
    gen = torch.Generator().manual_seed(0)
    cb.init_kmeans(data, gen)
    err = (cb.embed[cb.nearest(data)] - data).pow(2).sum(1).mean().item()
    assert err < 0.5, err  # 64 codes for 16 tight clusters: k-means finds them
    # shift the data: EMA updates follow it
    shifted = data + 1.0
    for _ in range(60):
        cb.update(shifted, cb.nearest(shifted), gen)
    err2 = (cb.embed[cb.nearest(shifted)] - shifted).pow(2).sum(1).mean().item()
    assert err2 < 0.5, err2
    # codes nobody uses are restarted onto data vectors
    cb.embed[:8] = 100.0
    cb.cluster_size[:8] = 0.0
    cb.update(shifted, cb.nearest(shifted), gen)
    assert cb.embed[:8].abs().max().item() < 20


def test_quantizer_dropout_uses_fewer_codebooks_in_training():
    torch.manual_seed(0)
    q = ResidualVQ(8, 1024, 8, 8, 0.99, 0.05, dropout=1.0, kmeans_frames=1024).train()
    with torch.no_grad():  # identity projections: each stage then quantizes the residual itself
        for stage in q.quantizers:
            for lin in (stage.project_in, stage.project_out):
                lin.weight.copy_(torch.eye(8))
                lin.bias.zero_()
    z = torch.randn(64, 8, 40)  # 2560 vectors for 1024 codes: every stage leaves a residual
    gen = torch.Generator().manual_seed(1)
    q(z, gen)  # init
    out_drop = q(z, gen)["z_q"]
    q.eval()
    out_full = q(z)["z_q"]
    err_drop = (out_drop - z).pow(2).mean(dim=(1, 2))
    err_full = (out_full - z).pow(2).mean(dim=(1, 2))
    # with dropout 1.0 each item keeps 1..8 codebooks: most reconstruct worse than with all 8
    assert (err_drop > err_full * 1.05).float().mean().item() > 0.5
    # eval-mode forward and encode agree on the codes
    assert torch.equal(q(z)["codes"], q.encode(z))
