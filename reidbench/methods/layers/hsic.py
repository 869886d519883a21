"""The Hilbert-Schmidt independence criterion with linear kernels (BDAM, Eq. 2)."""

from __future__ import annotations

import torch


def hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``HSIC(x, y) = tr(K H L H) / (N-1)^2`` for ``x [N,Dx]``, ``y [N,Dy]`` (rows are
    paired samples), with the linear kernels ``K = x x^T``, ``L = y y^T`` and the
    centring matrix ``H = I_N - 1/N 1 1^T`` (BDAM's decoupling loss, Eq. 2).

    Computed without forming ``H``: ``H K H`` is the Gram matrix of the
    column-centred ``x`` and ``tr(A B) = sum(A * B)`` for symmetric ``A``, ``B``,
    so the cost is two ``N x N`` Gram matrices. In float32 whatever the inputs'
    dtype (the trace sums ``N^2`` products, which half precision would lose).
    Zero when either feature set is constant over the samples; unchanged by
    adding a constant vector to every row; scales as ``a^2 b^2`` under
    ``x -> a x``, ``y -> b y`` (not normalised: compare values at one feature scale).
    """
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"hsic: expected two [N,D] feature matrices, got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"hsic: x and y must pair the same samples, got {n} and {y.shape[0]} rows")
    if n < 2:
        raise ValueError(f"hsic: needs at least 2 samples (the estimate divides by (N-1)^2), got {n}")
    xc = x.float() - x.float().mean(dim=0, keepdim=True)
    yc = y.float() - y.float().mean(dim=0, keepdim=True)
    return ((xc @ xc.T) * (yc @ yc.T)).sum() / (n - 1) ** 2


__all__ = ["hsic"]
