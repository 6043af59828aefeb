"""Residual VQ as the release has it (xcodec's): each stage projects the residual from the
fused space (D + semantic) into its codebook's space (project_in), picks the nearest code,
and projects it back (project_out); EMA codebooks, k-means init (on >= codebook-size vectors
gathered over steps), dead-code restart, commitment loss, a per-stage latent loss, and (ours, for training) quantizer dropout and usage statistics.

Codebooks are buffers, not parameters: they move by exponential moving averages of the
vectors assigned to them, so they are saved in checkpoints and restored exactly, and no
optimizer touches them. Under DDP the EMA statistics are summed over ranks and random
(re)initialisations are broadcast from rank 0, so every rank holds the same codebooks. All
random draws come from the generator passed in, so a resumed run draws what the uninterrupted
one drew.

Encoding and decoding repeat the original's arithmetic operation for operation (the order of
transposes, the distance formula, argmax of the negated distance), so the codes are equal
bit for bit, not merely close.
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
    """size x dim codes. Buffers named as the release's (`inited` a float [1] flag as there)."""

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.size, self.decay, self.dead_threshold = size, decay, dead_threshold
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("embed_avg", self.embed.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, dim] -> codes [N], the original's formula: argmax of -(|x|^2 - 2 x.e + |e|^2)."""
        embed = self.embed.t()
        dist_ = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist_.max(dim=-1).indices

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, gen) -> None:
        c, counts = kmeans(x.float(), self.size, KMEANS_ITERS, gen)
        self.embed.copy_(_broadcast(c))
        self.cluster_size.copy_(_broadcast(counts))
        self.embed_avg.copy_(self.embed * self.cluster_size[:, None])
        self.inited.fill_(1.0)

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

    def alive(self) -> torch.Tensor:
        return (self.cluster_size >= self.dead_threshold * self.cluster_size.mean()).float().mean()


class VQStage(nn.Module):
    """One residual stage: fused space (dim) <-> codebook space (codebook_dim)."""

    def __init__(self, dim: int, codebook_dim: int, size: int, decay: float, dead_threshold: float):
        super().__init__()
        self.codebook = EMACodebook(size, codebook_dim, decay, dead_threshold)
        self.project_in = nn.Linear(dim, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim)

    @torch.no_grad()
    def init_projections(self, residual: torch.Tensor) -> None:
        """project_in/out as the residual's top principal directions (residual [N, dim]): the
        best rank-codebook_dim linear stage. With random projections project_out(code) does not
        approximate the residual, so at first every added codebook moved z_q away from z."""
        mean = residual.mean(0)
        _, _, vh = torch.linalg.svd(residual - mean, full_matrices=False)
        v = vh[:self.project_in.out_features]                       # [cd, dim]
        if v.shape[0] < self.project_in.out_features:               # fewer frames than dims: keep the rest
            v = torch.cat([v, self.project_in.weight[v.shape[0]:]])
        for t, value in ((self.project_in.weight, v), (self.project_in.bias, -v @ mean),
                         (self.project_out.weight, v.t()), (self.project_out.bias, mean)):
            t.copy_(_broadcast(value.to(t.dtype).contiguous()))

    def decode(self, idx: torch.Tensor) -> torch.Tensor:  # [B, F] -> [B, dim, F]
        return self.project_out(F.embedding(idx, self.codebook.embed)).transpose(1, 2).contiguous()


class ResidualVQ(nn.Module):
    def __init__(self, n_codebooks: int, size: int, dim: int, codebook_dim: int, decay: float,
                 dead_threshold: float, dropout: float, kmeans_frames: int):
        super().__init__()
        self.dropout, self.kmeans_frames = dropout, kmeans_frames
        self.quantizers = nn.ModuleList(VQStage(dim, codebook_dim, size, decay, dead_threshold)
                                        for _ in range(n_codebooks))
        # Fused latents gathered over steps until k-means has at least `size` of them: one batch
        # of a CPU run holds ~32 frames, and k-means on those can place at most 32 of 1024 codes,
        # which collapsed the demo codec (every input decoded to one buzz). Not a buffer (exports
        # and the release's layout have no such tensor): the training module checkpoints it.
        self.pool: list[torch.Tensor] = []

    @property
    def ready(self) -> bool:
        return all(bool(s.codebook.inited) for s in self.quantizers)

    @torch.no_grad()
    def gather(self, z: torch.Tensor, gen) -> bool:
        """Add the frames of z [B, dim, F] to the pool; once it holds >= kmeans_frames frames,
        initialise every stage in order by k-means on the pool's residuals. -> ready now?"""
        self.pool.append(z.detach().transpose(1, 2).reshape(-1, z.shape[1]).float().cpu())
        if sum(len(p) for p in self.pool) < self.kmeans_frames:
            return False
        residual = torch.cat(self.pool).to(z.device)
        for stage in self.quantizers:
            stage.init_projections(residual)
            x = stage.project_in(residual)
            stage.codebook.init_kmeans(x, gen)
            idx = stage.codebook.nearest(x)
            residual = residual - stage.project_out(F.embedding(idx, stage.codebook.embed))
        self.pool = []
        return True

    def forward(self, z: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """Training: z [B, dim, F] -> dict(z_q [B, dim, F], codes [B, n, F], commit, latent, stats).

        Each stage passes its straight-through estimate to the next (as the release's
        training code). A `dropout` fraction of the batch keeps only its first n ~ U{1..N}
        codebooks in z_q, so decoding with fewer codebooks still gives usable audio.
        Until the codebooks are initialised (k-means on >= kmeans_frames gathered frames, see
        gather) z goes through unquantized. `latent` is each stage's |project_out(q) - residual|^2:
        without it nothing asks a stage to explain its residual (the EMA codebooks live after
        project_in), so early on every added codebook moved z_q further from z.
        """
        B, _, Fr = z.shape
        n = len(self.quantizers)
        n_q = torch.full((B,), n)
        if self.training and self.dropout > 0:
            drop = torch.rand(B, generator=gen) < self.dropout
            n_q = torch.where(drop, torch.randint(1, n + 1, (B,), generator=gen), n_q)
        keep = (torch.arange(n)[None] < n_q[:, None]).to(z)  # [B, n]

        ready = self.ready or (self.training and self.gather(z, gen))
        residual, out = z, torch.zeros_like(z)
        codes, commit, latent, perplexity = [], z.new_zeros(()), z.new_zeros(()), []
        for i, stage in enumerate(self.quantizers):
            cb = stage.codebook
            x = stage.project_in(residual.transpose(1, 2).contiguous())  # [B, F, cd]
            flat = x.detach().reshape(-1, x.shape[-1])
            idx = cb.nearest(flat)
            if self.training and ready:
                cb.update(flat, idx, gen)
                p = torch.bincount(idx, minlength=cb.size).float() / idx.numel()
                perplexity.append(torch.exp(-(p * (p + 1e-10).log()).sum()))
            q = F.embedding(idx, cb.embed).view_as(x)
            commit = commit + F.mse_loss(q.detach(), x)
            if self.training:  # straight-through: project_in and the encoder get the gradient
                q = x + (q - x).detach()  # (only then, as the original: x + (q - x) is not q bit for bit)
            q = stage.project_out(q).transpose(1, 2)  # [B, dim, F]
            latent = latent + F.mse_loss(q, residual.detach())
            out = out + q * keep[:, i, None, None]
            residual = residual - q
            codes.append(idx.view(B, Fr))
        if not ready:  # still gathering for k-means (training only): the latent goes through as is
            out, commit, latent = z, z.new_zeros(()), z.new_zeros(())
        stats = {}
        if perplexity:
            stats = {"perplexity": torch.stack(perplexity),
                     "alive": torch.stack([s.codebook.alive() for s in self.quantizers])}
        return {"z_q": out, "codes": torch.stack(codes, 1), "commit": commit / n, "latent": latent / n,
                "stats": stats}

    def pool_state(self) -> torch.Tensor | None:
        """The latents gathered for k-means so far (for a training checkpoint; None once ready)."""
        return torch.cat(self.pool) if self.pool else None

    def load_pool_state(self, pool: torch.Tensor | None) -> None:
        self.pool = [] if pool is None else [pool]

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, dim, F] -> codes [B, n, F] (no update), as the original's eval forward."""
        residual, codes = z, []
        for stage in self.quantizers:
            x = stage.project_in(residual.transpose(1, 2).contiguous())  # [B, F, cd]
            idx = stage.codebook.nearest(x.reshape(-1, x.shape[-1])).view(x.shape[:-1])
            residual = residual - stage.decode(idx)
            codes.append(idx)
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, F] (the first k <= N codebooks) -> z_q [B, dim, F]."""
        out = torch.tensor(0.0, device=codes.device)
        for i in range(codes.shape[1]):
            out = out + self.quantizers[i].decode(codes[:, i])
        return out
