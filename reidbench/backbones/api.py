"""What every backbone kind returns and shares: the feature records, the SIE
camera embedding and the copyable image tower.

Every kind (``clip``, ``vit_bert``, ...) offers the same calls, so methods never
know which one they run on:

* ``encode_image(pixels, camids=None, return_hidden=False) -> ImageFeatures``
* ``image_tower() -> ImageTower`` (the image side as a module of its own; see there)
* ``encode_text(input_ids, attention_mask) -> [B, embed_dim]`` and
  ``encode_text_tokens(input_ids, attention_mask) -> TextFeatures``
* ``encode_text_embeddings(token_embeds, eos_index) -> [B, embed_dim]`` and
  ``encode_text_embeddings_tokens(token_embeds, eos_index) -> TextFeatures``
  (prompt learners splice learnable vectors into ``token_embedding(ids)``)
* ``encode_texts(list[str])``, ``eos_positions(input_ids, attention_mask)``
* ``tokenizer`` (``context_length``, ``bos/eos/pad_token_id``, ``encode_words``),
  ``token_embedding``, ``embed_dim``, ``vision_width``, ``text_width``,
  ``image_size``, ``patch_grid``, ``num_cameras``, ``logit_scale``,
  ``image_mean`` / ``image_std``, ``vision``, ``text``, ``visual_projection``,
  ``text_projection``
* ``image_modules``: names of the attributes that make up the image side (what
  ``image_tower()`` holds and what image-only training stages unfreeze).

In every kind ``encode_text(ids, mask)`` equals
``encode_text_embeddings(token_embedding(ids), eos_positions(ids, mask))``: the
EOS index marks where a sequence ends; each kind pools where its text model
was trained to (CLIP at EOS, BERT at [CLS]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class TowerPreset:
    """The architecture every backbone kind's preset names: an image tower (ViT
    ``vision_*``, ``patch_size``, default person crop ``image_size`` (H, W)), a text
    tower (``text_*``, tokenizer ``context_length``), the joint space's ``embed_dim``
    and the vocabulary size (None: the tokenizer's). Kinds add their own fields."""

    name: str
    description: str
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: tuple[int, int]
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    embed_dim: int
    vocab_size: int | None


@dataclass
class ImageFeatures:
    """Vision-tower outputs.

    ``tokens``: last-layer tokens after the tower's final layer norm
    ``[B, 1+h*w, vision_width]`` (index 0 = CLS, then patches row-major over
    ``patch_grid``); ``cls`` = ``tokens[:, 0]``; ``proj`` = ``visual_projection(cls)``
    ``[B, embed_dim]``, the image embedding. ``hidden_states`` (only with
    ``return_hidden=True``): the input to the first layer then each layer's
    output, before the final norm (CLIP-ReID's triplet loss uses the penultimate
    layer's CLS, ``hidden_states[-2][:, 0]``).
    """

    tokens: torch.Tensor
    cls: torch.Tensor
    proj: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def patches(self) -> torch.Tensor:
        return self.tokens[:, 1:]


@dataclass
class TextFeatures:
    """Text-tower outputs.

    ``tokens``: every position's last-layer state after the final norm
    ``[B, L, text_width]``; ``proj``: the pooled state projected, ``[B, embed_dim]``
    (what ``encode_text`` returns); ``attention_mask`` ``[B, L]`` (1 = a real
    token, 0 = padding after EOS, whose states carry no meaning);
    ``pool_index`` ``[B]``: the position pooled into ``proj`` (EOS for CLIP, 0 =
    [CLS] for BERT).
    """

    tokens: torch.Tensor
    proj: torch.Tensor
    attention_mask: torch.Tensor
    pool_index: torch.Tensor


def mask_through(eos_index: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, length]`` long mask, 1 up to and including each row's ``eos_index``."""
    positions = torch.arange(length, device=eos_index.device)
    return (positions[None] <= eos_index.reshape(-1, 1)).long()


def check_camids(camids: torch.Tensor, batch: int, num_cameras: int, device: torch.device) -> torch.Tensor:
    """``camids`` as a ``[batch]`` long tensor of 0-based camera indices, or a clear error."""
    camids = torch.as_tensor(camids, device=device).long().reshape(-1)
    if camids.numel() != batch:
        raise ValueError(f"camids has {camids.numel()} entries for a batch of {batch}")
    if camids.min() < 0 or camids.max() >= num_cameras:
        raise ValueError(
            f"camids must be 0-based camera indices below num_cameras={num_cameras}; "
            f"got values in [{int(camids.min())}, {int(camids.max())}]"
        )
    return camids


class CameraEmbedding(nn.Module):
    """TransReID's side-information embedding (SIE): a learned vector per camera,
    times ``coef``, added to the CLS token (``tokens="cls"``, CLIP-ReID's released
    code) or to every token (``"all"``, TransReID). Init as both: zeros then
    ``trunc_normal_(std=0.02)``. A module (not a bare parameter) so that its weight
    is used inside its own ``forward``, which ZeRO-3's parameter gathering needs."""

    def __init__(self, num_cameras: int, width: int, coef: float = 3.0, tokens: Literal["cls", "all"] = "cls") -> None:
        super().__init__()
        if num_cameras < 1:
            raise ValueError(f"CameraEmbedding needs num_cameras >= 1, got {num_cameras}")
        if tokens not in ("cls", "all"):
            raise ValueError(f"SIE tokens must be 'cls' or 'all', got {tokens!r}")
        self.num_cameras, self.coef, self.tokens = int(num_cameras), float(coef), tokens
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.zeros(num_cameras, width), std=0.02))

    def forward(self, tokens: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        camids = check_camids(camids, tokens.shape[0], self.num_cameras, tokens.device)
        camera = self.coef * self.weight[camids].to(tokens.dtype)
        if self.tokens == "cls":
            return torch.cat([tokens[:, :1] + camera[:, None], tokens[:, 1:]], dim=1)
        return tokens + camera[:, None]

    def extra_repr(self) -> str:
        return f"{self.num_cameras} cameras x {self.coef:g} on {self.tokens}"


class ImageTower(nn.Module):
    """A backbone's image side as a module of its own: ``tower(pixels, camids,
    return_hidden)`` (or ``tower.encode_image(...)``) returns the same
    :class:`ImageFeatures` as ``backbone.encode_image``, because it runs the very
    same function on the same submodules.

    ``backbone.image_tower()`` *shares* the backbone's parameters (its state-dict
    keys are the backbone's image-side keys, e.g. ``vision.*``,
    ``visual_projection.weight``). For a second, independently trained image
    encoder (CCAF's shielding stream) take ``copy.deepcopy(backbone.image_tower())``
    after the pretrained weights are loaded: the copy starts identical and
    trains on its own. Registering the shared view itself in a method would put
    the same weights under two names in the state dict; copy it.
    """

    def __init__(self, backbone: nn.Module, modules: Sequence[str], attributes: Sequence[str]) -> None:
        super().__init__()
        self.image_modules = tuple(modules)
        for name in modules:
            setattr(self, name, getattr(backbone, name))  # a Module, a Parameter, or None (an absent SIE)
        for name in attributes:
            setattr(self, name, getattr(backbone, name))
        # The backbone's own encode_image, unbound: it reads only the names copied above.
        self._encode = type(backbone).encode_image
        self._kind = type(backbone).__name__

    def forward(self, pixels: torch.Tensor, camids: torch.Tensor | None = None,
                return_hidden: bool = False) -> ImageFeatures:
        return self._encode(self, pixels, camids, return_hidden)

    def encode_image(self, pixels: torch.Tensor, camids: torch.Tensor | None = None,
                     return_hidden: bool = False) -> ImageFeatures:
        return self(pixels, camids, return_hidden)

    def extra_repr(self) -> str:
        return f"image tower of {self._kind}: {', '.join(self.image_modules)}"


__all__ = ["CameraEmbedding", "ImageFeatures", "ImageTower", "TextFeatures", "check_camids", "mask_through"]
