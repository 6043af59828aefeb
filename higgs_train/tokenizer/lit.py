"""Lightning wrapper: GAN training of the tokenizer with manual optimization.

Two optimizers (generator = tokenizer, discriminator), clipping and schedulers done by
hand. The discriminator steps through its raw torch optimizer so that trainer.global_step
counts training iterations (Lightning counts every LightningOptimizer.step), which keeps
`trainer.max_steps`, checkpoint intervals and the data stream's resume point in batches.
Consequence: use 32-bit or bf16-mixed precision (fp16's loss scaler would not see that step).
Under DDP use strategy=ddp_find_unused_parameters_true: the discriminator's backward
leaves the generator's parameters unused.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from higgs_train.tokenizer import checks
from higgs_train.tokenizer.config import TokenizerConfig
from higgs_train.tokenizer.data import ShardAudioData
from higgs_train.tokenizer.discriminators import Discriminator
from higgs_train.tokenizer.losses import MelLoss, STFTLoss, d_loss, feature_matching, g_loss
from higgs_train.tokenizer.model import AudioTokenizer

log = logging.getLogger(__name__)


class TokenizerModule(L.LightningModule):
    def __init__(self, model: dict, loss: dict, optim: dict, disc_channels: int, seed: int,
                 init_from: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = self._make_model(model, init_from)
        self.hparams["model"] = self.model.cfg.to_dict()  # what was built: checkpoints carry it
        self.disc = Discriminator(disc_channels)
        self.mel = MelLoss(self.model.sample_rate)
        self.stft = STFTLoss()
        self.loss_cfg, self.optim_cfg, self.seed = loss, optim, seed
        self.gen = torch.Generator()

    @staticmethod
    def _make_model(model_cfg: dict, init_from: str | None) -> AudioTokenizer:
        """A fresh tokenizer, or one loaded from an export in any layout (ours, the transformers
        port's, the original release's) to train further: its codebooks are kept (marked
        initialised whatever the file says, so no k-means runs) and its config replaces `model`."""
        if not init_from:
            return AudioTokenizer(TokenizerConfig.from_dict(model_cfg))
        model = AudioTokenizer.from_pretrained(init_from).float().train()
        for stage in model.quantizer.quantizers:
            stage.codebook.inited.fill_(1.0)
        if model.cfg.to_dict() != TokenizerConfig.from_dict(model_cfg).to_dict():
            log.warning("task.init_from=%s: its config replaces the model config given", init_from)
        return model

    def configure_optimizers(self):
        o = self.optim_cfg
        g_params = [p for p in self.model.parameters() if p.requires_grad]  # the teacher is frozen
        opt_g = torch.optim.AdamW(g_params, lr=o["lr"], betas=tuple(o["betas"]))
        opt_d = torch.optim.AdamW(self.disc.parameters(), lr=o["lr"], betas=tuple(o["betas"]))
        sch = [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=o["lr_decay"]) for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], sch

    def training_step(self, wav, batch_idx):  # wav [B, 1, T]
        opt_g, opt_d = self.optimizers()
        sch_g, sch_d = self.lr_schedulers()
        w, step = self.loss_cfg, self.global_step
        # Random choices (quantizer dropout, codebook restarts) come from a generator seeded
        # by (seed, step, rank): a resumed run draws exactly what the uninterrupted one drew.
        self.gen.manual_seed(self.seed * 1_000_003 + step * 7919 + self.global_rank)
        out = self.model(wav, self.gen)
        recon = out["recon"]
        gan = step >= w["gan_start_step"]

        logs = {}
        if gan:
            fake = self.disc(recon.detach())
            real = self.disc(wav)
            loss_d = d_loss(real, fake, w["gan"])
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            self.clip_gradients(opt_d, gradient_clip_val=self.optim_cfg["grad_clip"], gradient_clip_algorithm="norm")
            opt_d.optimizer.step()  # raw step: see the module docstring
            sch_d.step()
            logs["train/d_loss"] = loss_d.detach()

        losses = {"mel": self.mel(recon, wav), "stft": self.stft(recon, wav), "commit": out["commit"],
                  "latent": out["latent"],
                  "semantic": out["semantic"]}
        if gan:
            fake = self.disc(recon)
            with torch.no_grad():
                real = self.disc(wav)
            losses["adv"] = g_loss(fake, w["gan"])
            losses["fm"] = feature_matching(real, fake)
        total = sum(w[k] * v for k, v in losses.items())
        opt_g.zero_grad()
        self.manual_backward(total)
        self.clip_gradients(opt_g, gradient_clip_val=self.optim_cfg["grad_clip"], gradient_clip_algorithm="norm")
        opt_g.step()
        sch_g.step()

        logs.update({f"train/{k}": v.detach() for k, v in losses.items()})
        logs["train/loss"] = total.detach()
        for name, values in out["stats"].items():
            logs.update({f"vq/{name}_{i}": v for i, v in enumerate(values)})
        self.log_dict(logs, prog_bar=False)
        self.log("mel", losses["mel"].detach(), prog_bar=True, logger=False)
        return total.detach()

    def validation_step(self, wav, batch_idx):
        T = wav.shape[-1]
        recon = self.model.decode(self.model.encode(wav, self.model.sample_rate))[..., :T]
        self.log("val/mel_distance", self.mel(recon, wav), sync_dist=True)
        # A low mel distance does not show that the decoder reads its codes: the collapsed demo codec
        # (one buzz for every input, benchmarks/README.md) scored it too. These do: reconstructions of
        # different clips must not correlate, nor repeat one waveform every frame, nor random codes
        # decode alike.
        y = recon[:, 0].float().cpu().numpy()
        if len(y) > 1:
            self.log("val/recon_cross_corr", max(abs(checks.correlation(a, b)) for i, a in enumerate(y)
                                                 for b in y[i + 1:]), sync_dist=True)
        self.log("val/periodic_share", float(np.mean([checks.periodic_share(a, self.model.hop) for a in y])),
                 sync_dist=True)
        self.log("val/random_codes_corr", abs(checks.random_codes_differ(self.model, seed=batch_idx)), sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._write_examples(wav, recon)

    def _write_examples(self, wav, recon) -> None:
        """Originals vs reconstructions: WAVs and a mel plot under run_dir/samples/step-N/, and to wandb."""
        from higgs_train.tokenizer.plots import mel_figure
        from higgs_train.audio import save_audio

        out = Path(self.trainer.default_root_dir) / "samples" / f"step-{self.global_step:07d}"
        out.mkdir(parents=True, exist_ok=True)
        sr = self.model.sample_rate
        for i, (a, b) in enumerate(zip(wav[:, 0].cpu().numpy(), recon[:, 0].float().cpu().numpy())):
            save_audio(out / f"{i}_orig.wav", a, sr)
            save_audio(out / f"{i}_recon.wav", b, sr)
        fig = mel_figure(wav[:, 0].cpu(), recon[:, 0].float().cpu(), sr)
        fig.savefig(out / "mel.png", dpi=80)
        if type(self.logger).__name__ == "WandbLogger":
            import wandb

            self.logger.experiment.log({
                "val/audio": [wandb.Audio(x[0].float().cpu().numpy(), sample_rate=sr, caption=f"{i} {kind}")
                              for i, (a, b) in enumerate(zip(wav, recon)) for kind, x in (("orig", a), ("recon", b))],
                "val/mel": wandb.Image(fig)}, step=self.global_step)
        import matplotlib.pyplot as plt

        plt.close(fig)

    def on_load_checkpoint(self, checkpoint):
        # latents gathered for the codebooks' k-means, if it has not run yet: a resume continues them
        self.model.quantizer.load_pool_state(checkpoint.get("vq_pool"))

    def on_save_checkpoint(self, checkpoint):
        checkpoint["vq_pool"] = self.model.quantizer.pool_state()
        checkpoint["tokenizer_config"] = self.model.cfg.to_dict()

    def export(self, export_dir) -> Path:
        return self.model.save_pretrained(export_dir)


def build(cfg: DictConfig):
    """task.build for higgs_train.train: (TokenizerModule, ShardAudioData)."""
    t = cfg.task
    module = TokenizerModule(model=OmegaConf.to_container(cfg.model, resolve=True),
                             loss=OmegaConf.to_container(t.loss, resolve=True),
                             optim=OmegaConf.to_container(t.optim, resolve=True),
                             disc_channels=t.disc_channels, seed=cfg.seed, init_from=t.init_from)
    d = t.data
    data = ShardAudioData(cfg.data.shards, batch_size=d.batch_size, crop_seconds=d.crop_seconds,
                          num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer, seed=cfg.seed,
                          val_shards=d.val_shards, val_clips=d.val_clips, val_seconds=d.val_seconds)
    return module, data
