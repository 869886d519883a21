"""Reusable, randomly initialised building blocks, as timm keeps its ``layers``.

A block lives here when it is paper-agnostic: it has no loss weight, schedule
or dataset convention of any one method, and a second method could use it as
it is. A method's own modules (ProFD's hybrid-attention decoder, SCING's
selective prompt fusion, ...) stay in the method's module and are built from
these. Method components that follow the CLIP-ReID reference code (BNNecks,
prompt learners, ReID losses) are in ``reidbench.methods.components``.

* ``Mlp``: Linear -> activation -> [Dropout] -> Linear.
* ``CrossAttentionBlock``: pre-LN multi-head cross-attention with an FFN and
  residuals, optional key padding mask.
* ``hsic``: the Hilbert-Schmidt independence criterion with linear kernels.
* ``Mamba`` (one Mamba-1 selective-SSM mixer, mamba-ssm's parameter names; its
  CUDA kernels on GPU, an exact PyTorch scan ``selective_scan`` elsewhere),
  ``MambaBlock`` (pre-norm residual layer) and ``MambaStack`` (BDAM's fusion stack).
"""

from __future__ import annotations

from .cross_attention import CrossAttentionBlock
from .hsic import hsic
from .mamba import Mamba, MambaBlock, MambaStack, selective_scan
from .mlp import Mlp

__all__ = ["CrossAttentionBlock", "Mamba", "MambaBlock", "MambaStack", "Mlp", "hsic", "selective_scan"]
