"""Residual VQ with EMA codebooks, k-means init, dead-code restart and quantizer dropout.

Codebooks are buffers, not parameters: they move by exponential moving averages of
the vectors assigned to them, so they are saved in checkpoints and restored exactly,
and no optimizer touches them. Under DDP the EMA statistics are summed over ranks and
random (re)initialisations are broadcast from rank 0, so every rank holds the same codebooks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

KMEANS_ITERS = 10
EPS = 1e-5


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _sample(x: torch.Tensor, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """n rows of x (with replacement when x has fewer rows)."""
    idx = torch.randint(0, x.shape[0], (n,), generator=gen).to(x.device)
    return x[idx]


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd k-means on x [N, D] -> (centroids [k, D], counts [k])."""
    c = _sample(x, k, gen)
    for _ in range(iters):
        idx = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
    return c, counts


class EMACodebook(nn.Module):
    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.size, self.decay, self.dead_threshold = size, decay, dead_threshold
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("embed_avg", self.embed.clone())
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("initted", torch.tensor(False))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:  # x [N, D] -> codes [N]
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, gen) -> None:
        c, counts = kmeans(x.float(), self.size, KMEANS_ITERS, gen)
        self.embed.copy_(_broadcast(c))
        self.cluster_size.copy_(_broadcast(counts))
        self.embed_avg.copy_(self.embed * self.cluster_size[:, None])
        self.initted.fill_(True)

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor, gen) -> None:
        """EMA step towards the mean of the vectors assigned to each code, then dead-code restart."""
        x = x.float()
        counts = _all_reduce(torch.bincount(codes, minlength=self.size).to(x.dtype))
        sums = _all_reduce(torch.zeros_like(self.embed).index_add_(0, codes, x))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + EPS) / (n + self.size * EPS) * n  # Laplace: no division by 0
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        # Codes that nobody uses any more restart on random vectors of this batch, with
        # their EMA statistics reset to match, so the next update does not undo the restart.
        # "Unused" is relative to the mean usage, so the rule does not depend on how many
        # vectors a batch holds (a CPU batch of 32 frames and a GPU batch of 50k alike).
        floor = self.dead_threshold * self.cluster_size.mean()
        dead = self.cluster_size < floor
        if dead.any():
            new = _broadcast(_sample(x, self.size, gen))
            dead = _broadcast(dead.to(torch.uint8)).bool()
            self.embed[dead] = new[dead]
            self.cluster_size[dead] = floor
            self.embed_avg[dead] = new[dead] * floor


class ResidualVQ(nn.Module):
    def __init__(self, n_codebooks: int, size: int, dim: int, decay: float, dead_threshold: float,
                 dropout: float):
        super().__init__()
        self.dropout = dropout
        self.codebooks = nn.ModuleList(EMACodebook(size, dim, decay, dead_threshold) for _ in range(n_codebooks))

    def forward(self, z: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """z [B, D, F] -> dict(z_q [B, D, F] (straight-through), codes [B, n, F], commit, stats).

        In training, a `dropout` fraction of the batch keeps only its first n ~ U{1..N}
        codebooks, so decoding with fewer codebooks still gives usable audio.
        """
        B, D, Fr = z.shape
        n = len(self.codebooks)
        n_q = torch.full((B,), n)
        if self.training and self.dropout > 0:
            drop = torch.rand(B, generator=gen) < self.dropout
            n_q = torch.where(drop, torch.randint(1, n + 1, (B,), generator=gen), n_q)
        keep = (torch.arange(n)[None] < n_q[:, None]).to(z)  # [B, n]

        residual = z
        out = torch.zeros_like(z)
        codes, commit, perplexity = [], z.new_zeros(()), []
        for i, cb in enumerate(self.codebooks):
            flat = residual.detach().transpose(1, 2).reshape(-1, D)  # [B*F, D]
            if self.training and not bool(cb.initted):
                cb.init_kmeans(flat, gen)
            idx = cb.nearest(flat)
            if self.training:
                cb.update(flat, idx, gen)
                p = torch.bincount(idx, minlength=cb.size).float() / idx.numel()
                perplexity.append(torch.exp(-(p * (p + 1e-10).log()).sum()))
            q = cb.embed[idx].view(B, Fr, D).transpose(1, 2)
            commit = commit + F.mse_loss(residual, q.detach())
            out = out + q * keep[:, i, None, None]
            residual = residual - q
            codes.append(idx.view(B, Fr))
        z_q = z + (out - z).detach()  # straight-through: the encoder gets the decoder's gradient
        stats = {}
        if perplexity:
            stats = {"perplexity": torch.stack(perplexity),
                     "alive": torch.stack([(cb.cluster_size >= cb.dead_threshold * cb.cluster_size.mean()).float().mean()
                                           for cb in self.codebooks])}
        return {"z_q": z_q, "codes": torch.stack(codes, 1), "commit": commit / n, "stats": stats}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, F] (the first k <= N codebooks) -> z_q [B, D, F]."""
        z = sum(self.codebooks[i].embed[codes[:, i]] for i in range(codes.shape[1]))  # [B, F, D]
        return z.transpose(1, 2)
