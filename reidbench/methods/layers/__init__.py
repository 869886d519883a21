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
"""

from __future__ import annotations

from .cross_attention import CrossAttentionBlock
from .hsic import hsic
from .mlp import Mlp

__all__ = ["CrossAttentionBlock", "Mlp", "hsic"]
