"""Learnable text prompts: CLIP-ReID's per-identity context tokens and CoOp's
shared context (ProFD's part prompts, CCAF's clothes prompts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class PromptLearner(nn.Module):
    """Learnable context tokens spliced into a text template (CoOp / CLIP-ReID).

    ``template`` holds one ``{ctx}`` placeholder, replaced by ``n_ctx`` learnable
    vectors in the token-embedding space, and optionally one ``{name}``
    placeholder after it, replaced by ``class_names[c]`` (ProFD's part names).
    CLIP-ReID is ``"a photo of a {ctx} person."`` with ``class_specific=True``:
    every identity owns its ``n_ctx`` vectors ("A photo of a X X X X person.").
    ``class_specific=False`` shares one context across classes (CoOp).

    ``forward(labels)`` returns ``(token_embeds [B,L,width], eos_index [B])`` for
    ``backbone.encode_text_embeddings``: ``[BOS] prefix ctx suffix [EOS]`` with
    the fixed words embedded by the backbone's (frozen) token embedding at call
    time, so they always match the backbone's current weights. The token
    embedding is held by reference, not registered, so its weights appear once in
    the state dict (under the backbone). Sequences end at the longest prompt's
    EOS rather than padding to the context length: the text encoder is causal, so
    positions after EOS never affect the pooled EOS feature
    (``pad_to_context=True`` pads anyway). Context vectors start as N(0, init_std^2)
    (CLIP-ReID: 0.02).
    """

    def __init__(self, token_embedding: nn.Embedding, tokenizer: Any, num_classes: int, n_ctx: int = 4,
                 template: str = "a photo of a {ctx} person.", class_names: Sequence[str] | None = None,
                 class_specific: bool = True, init_std: float = 0.02, pad_to_context: bool = False) -> None:
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"PromptLearner: n_ctx must be >= 1, got {n_ctx}")
        if template.count("{ctx}") != 1:
            raise ValueError(f"PromptLearner: template must contain '{{ctx}}' exactly once, got {template!r}")
        before, after = template.split("{ctx}")
        if "{name}" in before:
            raise ValueError(f"PromptLearner: '{{name}}' must come after '{{ctx}}' in the template, got {template!r}")
        if ("{name}" in after) != (class_names is not None):
            raise ValueError("PromptLearner: give class_names exactly when the template has a '{name}' placeholder "
                             f"(template {template!r}, class_names {'given' if class_names is not None else 'None'})")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"PromptLearner: {len(class_names)} class_names for num_classes={num_classes}")
        if num_classes < 1:
            raise ValueError(f"PromptLearner: num_classes must be >= 1, got {num_classes}")

        self.__dict__["_token_embedding"] = token_embedding  # by reference: not a submodule
        self.num_classes = num_classes
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.template = template

        prefix_ids = [tokenizer.bos_token_id, *tokenizer.encode_words(before.strip())]
        names = class_names if class_names is not None else [None]
        rows = []
        for name in names:
            suffix = after.replace("{name}", name) if name is not None else after
            rows.append(prefix_ids + [tokenizer.pad_token_id] * n_ctx
                        + [*tokenizer.encode_words(suffix.strip()), tokenizer.eos_token_id])
        length = tokenizer.context_length if pad_to_context else max(len(r) for r in rows)
        if max(len(r) for r in rows) > tokenizer.context_length:
            raise ValueError(f"PromptLearner: prompt of {max(len(r) for r in rows)} tokens exceeds the text "
                             f"encoder's context length {tokenizer.context_length} (template {template!r})")
        ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        self.ctx_start = len(prefix_ids)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eos_index", torch.tensor([len(r) - 1 for r in rows]), persistent=False)

        width = token_embedding.weight.shape[1]
        shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.ctx, std=init_std)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.__dict__["_token_embedding"]

    def forward(self, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts for class ``labels`` ([B] long); ``None``: every class in order."""
        if labels is None:
            labels = torch.arange(self.num_classes, device=self.ctx.device)
        if self.class_specific:
            ctx = self.ctx[labels]
        else:
            ctx = self.ctx.unsqueeze(0).expand(labels.shape[0], -1, -1)
        return self.assemble(ctx, labels)

    def assemble(self, ctx: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Splice given context vectors ``ctx [B,n_ctx,width]`` into the prompts of
        ``labels``: the hook for methods that condition the context (e.g. SCING
        fuses visual features into it)."""
        if ctx.shape[1] != self.n_ctx:
            raise ValueError(f"PromptLearner.assemble: expected {self.n_ctx} context vectors, got {tuple(ctx.shape)}")
        row = labels if self.token_ids.shape[0] > 1 else torch.zeros_like(labels)
        ids = self.token_ids[row]
        fixed = self.token_embedding(ids)
        s, e = self.ctx_start, self.ctx_start + self.n_ctx
        embeds = torch.cat([fixed[:, :s], ctx.to(fixed.dtype), fixed[:, e:]], dim=1)
        return embeds, self.eos_index[row]

    def extra_repr(self) -> str:
        return (f"template={self.template!r}, n_ctx={self.n_ctx}, num_classes={self.num_classes}, "
                f"class_specific={self.class_specific}")


__all__ = ["PromptLearner"]
