"""Contrastive self-distillation blocks of DDAE++ (spec §3.2): MoCo v3 heads and loss.

Student: self-conditioning vector -> projector -> predictor. Teacher: momentum copy of the
network and projector (no predictor). Loss: symmetrised InfoNCE of MoCo v3 (Chen, Xie & He 2021,
arXiv 2104.02057), ``ctr(q, k) = CE(q·kᵀ/τ, positives) · 2τ`` with keys from every device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.errors import require

NEEDED_FOR = "contrastive self-distillation (contrastive.weight > 0)"


def _projection_head(blocks: list) -> nn.Module:
    # lightly is optional: ddaepp without contrastive self-distillation runs without it
    return require("lightly.models.modules.heads", NEEDED_FOR).ProjectionHead(blocks)


def moco_v3_projector(in_dim: int, hidden: int, out: int) -> nn.Module:
    """3-layer MLP, BN + ReLU between, BN without affine at the end (MoCo v3)."""
    return _projection_head([
        (in_dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
        (hidden, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
        (hidden, out, nn.BatchNorm1d(out, affine=False), None),
    ])


def moco_v3_predictor(dim: int, hidden: int) -> nn.Module:
    """2-layer MLP predictor (MoCo v3)."""
    return _projection_head([
        (dim, hidden, nn.BatchNorm1d(hidden), nn.ReLU()),
        (hidden, dim, None, None),
    ])


def gather_keys(keys: Tensor) -> tuple[Tensor, int]:
    """All keys of the global batch (no gradient: keys come from the teacher) and this rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, 0
    out = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(out, keys.contiguous())
    return torch.cat(out), dist.get_rank()


def infonce(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3 ``ctr``: queries (N, D) vs keys gathered over devices; positives on the diagonal."""
    q = F.normalize(q, dim=1)  # (N, D)
    k_all, rank = gather_keys(F.normalize(k.detach(), dim=1))  # (world*N, D)
    logits = q @ k_all.T / temperature  # (N, world*N)
    targets = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, targets) * (2 * temperature)


def symmetric_infonce(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, temperature: float) -> Tensor:
    """L = ctr(q1, k2) + ctr(q2, k1)."""
    return infonce(q1, k2, temperature) + infonce(q2, k1, temperature)
