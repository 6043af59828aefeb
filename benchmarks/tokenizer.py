"""Audio tokenizer benchmark: encode/decode real-time factor on CPU (tiny and full), parameter
counts, and training steps/s of the tiny config.

    python -m benchmarks.tokenizer [seconds=4] [repeats=3] [threads=N] [train_steps=20]

RTF = compute seconds / audio seconds (below 1 is faster than real time). Both sizes have the
released topology and run their HuBERT teacher when encoding (full: hubert-base's config, random
weights: the same cost as the real one, nothing to download). Parameter counts include HuBERT;
"state" counts every tensor of the state dict (codebooks and EMA statistics too), the figure to
compare with the release's model.pth (201,426,474 elements). Training steps/s: the tiny config,
batch 4 x 0.3 s crops, with and without the GAN.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from higgs_train.cli import parse
from higgs_train.config import CONFIG_DIR
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.tokenizer.lit import TokenizerModule


def load_cfg(size: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=tokenizer", f"model=tokenizer/{size}", "data.shards=x"])
    return cfg


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitives)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def codec_row(size: str, seconds: float, repeats: int) -> dict:
    mc = OmegaConf.to_container(load_cfg(size).model, resolve=True)
    if mc["teacher_config"] is None:  # full: a local HuBERT-base dir; its config = HubertConfig()'s
        mc["teacher"], mc["teacher_config"] = None, {"model_type": "hubert"}
    m = AudioTokenizer(TokenizerConfig.from_dict(mc)).eval()
    wav = torch.randn(1, int(seconds * 24000)) * 0.1
    codes = m.encode(wav, 24000)
    enc = timed(lambda: m.encode(wav, 24000), repeats)
    dec = timed(lambda: m.decode(codes), repeats)
    return {"size": size, "params_M": sum(p.numel() for p in m.parameters()) / 1e6,
            "trainable_M": sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6,
            "state": sum(v.numel() for v in m.state_dict().values()), "audio_s": seconds,
            "encode_rtf": enc / seconds, "decode_rtf": dec / seconds}


def train_steps_per_s(steps: int, gan: bool) -> float:
    cfg = load_cfg("tiny")
    t = cfg.task
    mod = TokenizerModule(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(t.loss),
                          OmegaConf.to_container(t.optim), t.disc_channels, seed=0)
    opt_g = torch.optim.AdamW([p for p in mod.model.parameters() if p.requires_grad], lr=1e-4)
    opt_d = torch.optim.AdamW(mod.disc.parameters(), lr=1e-4)
    from higgs_train.tokenizer.losses import d_loss, feature_matching, g_loss

    def step():  # the same work as TokenizerModule.training_step, without a Trainer
        wav = torch.randn(4, 1, 7200) * 0.1
        out = mod.model(wav, mod.gen)
        loss = 15 * mod.mel(out["recon"], wav) + mod.stft(out["recon"], wav) + 0.25 * out["commit"]
        if gan:
            ld = d_loss(mod.disc(wav), mod.disc(out["recon"].detach()), "lsgan")
            opt_d.zero_grad(); ld.backward(); opt_d.step()
            fake = mod.disc(out["recon"])
            with torch.no_grad():
                real = mod.disc(wav)
            loss = loss + g_loss(fake, "lsgan") + 2 * feature_matching(real, fake)
        opt_g.zero_grad(); loss.backward(); opt_g.step()

    return 1.0 / timed(step, steps)


@dataclass
class Args:
    seconds: float = field(default=4.0, metadata={"help": "audio encoded and decoded per call"})
    repeats: int = field(default=3, metadata={"help": "timed calls (the best counts)"})
    threads: int = field(default=torch.get_num_threads(), metadata={"help": "torch threads"})
    train_steps: int = field(default=20, metadata={"help": "training steps timed (a quarter with the GAN)"})


def main(argv: list[str]) -> None:
    a = parse(Args, argv, "python -m benchmarks.tokenizer", __doc__)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), {a.seconds:.0f} s of audio, batch 1")
    print(f"{'size':6} {'params (M)':>10} {'trainable (M)':>13} {'state (elements)':>17} {'encode RTF':>11} "
          f"{'decode RTF':>11}")
    for size in ("tiny", "full"):
        r = codec_row(size, a.seconds, a.repeats)
        print(f"{r['size']:6} {r['params_M']:10.2f} {r['trainable_M']:13.2f} {r['state']:17,} {r['encode_rtf']:11.3f} "
              f"{r['decode_rtf']:11.3f}")
    print(f"\ntraining, tiny, batch 4 x 0.3 s: {train_steps_per_s(a.train_steps, False):.2f} steps/s (reconstruction "
          f"losses), {train_steps_per_s(max(3, a.train_steps // 4), True):.2f} steps/s (with GAN)")


if __name__ == "__main__":
    main(sys.argv[1:])
