"""A pre-LN multi-head cross-attention block: queries attend to a set of key/value tokens.

CLIP-SCGI's prompt generator (Eqs. 4-5: ``Q_C = Q + CrossAttn(LN(Q), LN(v), LN(v))``,
``P = Q_C + FFN(Q_C)``), its fusion module's cross-attention (Eq. 9, through
``attend``) and BDAM's exchange between its identity and clothing branches are
all this block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .mlp import Mlp


class CrossAttentionBlock(nn.Module):
    """``x = q + CrossAttn(LN_q(q), LN_kv(t), LN_kv(t))``, then ``x + FFN(LN(x))``.

    * ``queries [B,Q,dim]`` or ``[Q,dim]`` (learned queries shared by the batch,
      expanded to the tokens' batch size); ``tokens [B,T,kv_dim]``.
    * ``key_padding_mask [B,T]`` bool, ``True`` = padding, ignored (PyTorch's
      ``nn.MultiheadAttention`` convention, which does the attention here).
      A sample whose tokens are all padding gets a zero attention output (its
      queries go through the residual unchanged) rather than the NaNs a softmax
      over no key gives; done without a host sync.
    * Queries and tokens get their own LayerNorm: they usually come from
      different streams or modalities (IRRA's fusion, which CLIP-SCGI cites,
      does the same); ``kv_dim`` differs from ``dim`` when the token stream is
      wider or narrower (the key/value projections map it to ``dim``).
    * ``mlp_ratio=0`` drops the FFN (a cross-attention layer alone);
      ``ffn_norm=False`` feeds the FFN the un-normalised residual stream, as
      Eq. 5 of CLIP-SCGI is written.
    * ``zero_init=True`` zeroes the attention's output projection and the FFN's
      last linear, so the block starts as the identity on its queries (useful
      when it is inserted into a pretrained stream).
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, ffn_norm: bool = True, act: Callable[[], nn.Module] = nn.GELU,
                 zero_init: bool = False) -> None:
        super().__init__()
        if dim < 1 or heads < 1 or dim % heads:
            raise ValueError(f"CrossAttentionBlock: dim={dim} must be a positive multiple of heads={heads}")
        if mlp_ratio < 0:
            raise ValueError(f"CrossAttentionBlock: mlp_ratio must be >= 0 (0: no FFN), got {mlp_ratio}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.dim, self.kv_dim, self.heads = dim, kv_dim, heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True, kdim=kv_dim, vdim=kv_dim)
        self.drop = nn.Dropout(dropout)
        hidden = round(dim * mlp_ratio)
        self.norm_ffn = nn.LayerNorm(dim) if hidden and ffn_norm else None
        self.ffn = Mlp(dim, hidden, dim, act=act, dropout=dropout) if hidden else None
        if zero_init:
            last = [self.attn.out_proj] + ([self.ffn.fc2] if self.ffn is not None else [])
            for linear in last:
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    def attend(self, queries: torch.Tensor, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cross-attention alone, on normalised inputs and without residual:
        ``(out [B,Q,dim], weights [B,Q,T] averaged over heads or None)``."""
        queries = self._batched(queries, tokens)
        if tokens.shape[-1] != self.kv_dim:
            raise ValueError(f"CrossAttentionBlock: tokens have width {tokens.shape[-1]}, expected kv_dim={self.kv_dim}")
        empty = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != tokens.shape[:2] or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"CrossAttentionBlock: key_padding_mask must be bool [B,T]={tuple(tokens.shape[:2])} "
                                 f"(True = padding), got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            empty = key_padding_mask.all(dim=1)
            key_padding_mask = key_padding_mask & ~empty[:, None]  # attend to something; zeroed below
        kv = self.norm_kv(tokens)
        out, weights = self.attn(self.norm_q(queries), kv, kv, key_padding_mask=key_padding_mask,
                                 need_weights=need_weights)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
            if weights is not None:
                weights = weights.masked_fill(empty[:, None, None], 0.0)
        return out, weights

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B,Q,dim]``: the queries updated by the tokens."""
        x = self._batched(queries, tokens)
        x = x + self.drop(self.attend(x, tokens, key_padding_mask)[0])
        if self.ffn is not None:
            x = x + self.drop(self.ffn(self.norm_ffn(x) if self.norm_ffn is not None else x))
        return x

    def _batched(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"CrossAttentionBlock: tokens must be [B,T,kv_dim], got shape {tuple(tokens.shape)}")
        if queries.dim() == 2:
            queries = queries.expand(tokens.shape[0], -1, -1)
        if queries.dim() != 3 or queries.shape[-1] != self.dim or queries.shape[0] != tokens.shape[0]:
            raise ValueError(f"CrossAttentionBlock: queries must be [B,Q,{self.dim}] or [Q,{self.dim}] with the "
                             f"tokens' batch size {tokens.shape[0]}, got shape {tuple(queries.shape)}")
        return queries

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kv_dim={self.kv_dim}, heads={self.heads}"


__all__ = ["CrossAttentionBlock"]
