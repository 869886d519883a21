"""Distance matrices between two feature sets, ``[M,D] x [N,D] -> [M,N]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[M,D] x [N,D] -> [M,N]`` cosine distance ``1 - cos``, in [0, 2]."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[M,D] x [N,D] -> [M,N]`` euclidean distances.

    Computed as CLIP-ReID / TransReID do (``|x|^2 + |y|^2 - 2 x.y``, clamped at
    1e-12 before the square root) so the diagonal of a self-distance matrix is
    1e-6, not 0, and its gradient stays finite.
    """
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).T
    dist = xx + yy - 2.0 * (x @ y.T)
    return dist.clamp(min=1e-12).sqrt()


__all__ = ["cosine_distance", "euclidean_dist"]
