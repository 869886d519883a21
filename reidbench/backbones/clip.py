"""CLIP backbones for person re-identification, built from transformers' CLIP
towers (``CLIPVisionModel`` / ``CLIPTextModel``) and configs, never downloaded.

``build_clip(preset, pretrained, image_size, num_cameras, sie_coef)`` returns a
:class:`ReidCLIP`:

* presets: ``vit-b16`` (the ViT-B/16 CLIP of CLIP-ReID and the papers built on it,
  149.6M parameters at 224x224) and ``tiny`` (a CPU-sized CLIP for the embedded
  default, 128x64 input), each also with overlapping patches at stride 12
  (``vit-b16-s12``, ``tiny-s12``: CLIP-ReID's ``STRIDE_SIZE [12, 12]``, the starred
  rows of ProFD's tables and SCING's CLIP-ReID baseline; the same weights, a
  21x10 patch grid at 256x128, 10x5 at 128x64, the position table interpolated to it);
* person crops are not square (256x128, tiny 128x64): the vision tower gets a
  position table for the person grid (16x8 patches for ViT-B/16), resized from
  the pretrained one by interpolation when the grids differ, as CLIP-ReID does;
* optional SIE camera embedding (side-information embedding of TransReID, as
  CLIP-ReID uses it);
* ``pretrained``: ``None`` (random init), ``"synthetic"`` (the tiny CLIP pretrained
  contrastively on synthetic captions, see :mod:`reidbench.backbones.pretrain`),
  or a local Hugging Face-format CLIP directory.

Decisions (each a keyword of :func:`build_clip`):

* ``pos_interpolation="bilinear"``: CLIP-ReID's ``resize_pos_embed`` resizes the
  14x14 grid with ``F.interpolate(mode='bilinear')`` (align_corners=False);
  transformers' own ``interpolate_pos_encoding`` uses bicubic. Default follows
  CLIP-ReID's released code; ``"bicubic"`` is the switch.
* ``sie_tokens="cls"``: CLIP-ReID's released ``VisionTransformer.forward`` adds
  ``sie_coef * cv_embed[cam]`` to the CLS token only (``x[:,0] = x[:,0] + cv_emb``),
  while TransReID adds it to every token. Default follows CLIP-ReID; ``"all"`` is
  TransReID's variant.
* ``image_features.tokens`` are *all* last-layer tokens after ``post_layernorm``
  (CLIP-ReID applies ``ln_post`` to the whole sequence), so
  ``proj = visual_projection(post_layernorm(cls))`` is exactly CLIP's image embedding.
* Text pooling is always at an explicit EOS position (first EOS of each row), never
  transformers' ``eos_token_id == 2`` argmax fallback.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .api import ImageFeatures, ImageTower, TextFeatures, TowerPreset, check_camids, mask_through
from .registry import register_backbone
from .tokenizer import ClipTokenizer, default_word_tokenizer, has_tokenizer_files, load_tokenizer

# OpenAI CLIP's pixel statistics (the normalisation its weights were trained with).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_GRID_KEY = "reidbench_patch_grid"  # extra config.json field for non-square position tables
_HF_EXPORT_HINT = (
    "On a machine with internet, produce it with:\n"
    "    python -c \"from transformers import CLIPModel, CLIPTokenizer; "
    "m='openai/clip-vit-base-patch16'; "
    "CLIPModel.from_pretrained(m).save_pretrained('DIR'); "
    "CLIPTokenizer.from_pretrained(m).save_pretrained('DIR')\"\n"
    "then copy DIR to this machine and pass its path. For the embedded default use "
    "pretrained='synthetic' (the tiny CLIP pretrained on synthetic captions)."
)


class PretrainedCLIPNotFound(FileNotFoundError):
    """A named pretrained CLIP directory is missing or incomplete."""


# --------------------------------------------------------------- presets ---
@dataclass(frozen=True)
class ClipPreset(TowerPreset):
    """Architecture of a named CLIP. ``image_size`` is the person-crop input (H, W);
    ``pretrain_size`` is the square resolution the public weights were trained at
    (``None``: the table is trained at the person grid directly)."""

    pretrain_size: int | None = None
    mlp_ratio: int = 4
    hidden_act: str = "quick_gelu"

    @property
    def patch_stride(self) -> int | None:
        """Patchifying stride (None: the patch size, no overlap); kept out of the dataclass
        fields, which key the cached pretrained tiny CLIP."""
        return PATCH_STRIDES.get(self.name)

    def clip_config(self, vocab_size: int, eos_token_id: int, bos_token_id: int, pad_token_id: int, grid: tuple[int, int]):
        from transformers import CLIPConfig

        square = self.pretrain_size or grid[0] * self.patch_size
        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size,
                hidden_size=self.text_width,
                intermediate_size=self.mlp_ratio * self.text_width,
                num_hidden_layers=self.text_layers,
                num_attention_heads=self.text_heads,
                max_position_embeddings=self.context_length,
                hidden_act=self.hidden_act,
                projection_dim=self.embed_dim,
                eos_token_id=eos_token_id,
                bos_token_id=bos_token_id,
                pad_token_id=pad_token_id,
            ),
            vision_config=dict(
                hidden_size=self.vision_width,
                intermediate_size=self.mlp_ratio * self.vision_width,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
                patch_size=self.patch_size,
                image_size=square,
                hidden_act=self.hidden_act,
                projection_dim=self.embed_dim,
            ),
            projection_dim=self.embed_dim,
            **{_GRID_KEY: list(grid)},
        )


PRESETS: dict[str, ClipPreset] = {
    "vit-b16": ClipPreset(
        name="vit-b16",
        description="OpenAI CLIP ViT-B/16 (transformers' CLIPConfig with patch 16), 256x128 person crops",
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        patch_size=16,
        image_size=(256, 128),
        text_width=512,
        text_layers=12,
        text_heads=8,
        context_length=77,
        embed_dim=512,
        vocab_size=49408,
        pretrain_size=224,
    ),
    "tiny": ClipPreset(
        name="tiny",
        description="CPU-sized CLIP for the embedded default: ViT 192x4 on 128x64 (8x4 patches), text 128x3, 77 tokens",
        vision_width=192,
        vision_layers=4,
        vision_heads=3,
        patch_size=16,
        image_size=(128, 64),
        text_width=128,
        text_layers=3,
        text_heads=2,
        context_length=77,
        embed_dim=128,
        vocab_size=None,
    ),
}
# Overlapping-patch variants: same towers (and weights), patchified at stride 12.
PATCH_STRIDES: dict[str, int] = {f"{name}-s12": 12 for name in PRESETS}
PRESETS.update({
    f"{name}-s12": replace(spec, name=f"{name}-s12", description=f"{spec.description}; overlapping patches, stride 12")
    for name, spec in list(PRESETS.items())
})


def patch_grid_of(image_size: tuple[int, int], patch_size: int, stride: int | None = None) -> tuple[int, int]:
    """The (h, w) patch grid of a ``patch_size`` convolution at ``stride`` (default: no overlap)."""
    step = stride or patch_size
    return ((int(image_size[0]) - patch_size) // step + 1, (int(image_size[1]) - patch_size) // step + 1)


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ClipPreset:
    if name not in PRESETS:
        raise KeyError(f"unknown CLIP preset {name!r}; known presets: {', '.join(list_presets())}")
    return PRESETS[name]


# ------------------------------------------------ position interpolation ---
def interpolate_pos_embedding(
    table: torch.Tensor,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
    mode: Literal["bilinear", "bicubic"] = "bilinear",
) -> torch.Tensor:
    """Resize a ViT position table ``[1 + h*w, D]`` (CLS first, patches row-major)
    from ``src_grid`` to ``dst_grid``; the CLS entry is kept as is.

    Same recipe as CLIP-ReID's ``resize_pos_embed`` (and DINO / transformers):
    reshape the patch entries to the 2-D grid and resample it with
    ``F.interpolate(align_corners=False)``.
    """
    src_h, src_w = src_grid
    if table.shape[0] != 1 + src_h * src_w:
        raise ValueError(f"position table has {table.shape[0]} rows, expected 1 + {src_h}x{src_w} = {1 + src_h * src_w}")
    if tuple(src_grid) == tuple(dst_grid):
        return table.clone()
    cls, grid = table[:1], table[1:]
    dim = table.shape[1]
    grid = grid.reshape(1, src_h, src_w, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], dim).to(table.dtype)
    return torch.cat([cls, grid], dim=0)


# ------------------------------------------------------------- modules ---
class PersonPatchEmbeddings(nn.Module):
    """CLIP's vision embeddings (CLS + conv patches + learned positions) for a
    non-square patch grid, with an optional SIE camera table.

    Parameter names match transformers' ``CLIPVisionEmbeddings`` so Hugging Face
    checkpoints load into it unchanged (apart from the resized position table).
    """

    def __init__(
        self,
        width: int,
        patch_size: int,
        grid: tuple[int, int],
        num_cameras: int = 0,
        sie_coef: float = 3.0,
        sie_tokens: Literal["cls", "all"] = "cls",
        initializer_range: float = 0.02,
        num_channels: int = 3,
        stride: int | None = None,
    ) -> None:
        super().__init__()
        if sie_tokens not in ("cls", "all"):
            raise ValueError(f"sie_tokens must be 'cls' or 'all', got {sie_tokens!r}")
        self.embed_dim = width
        self.patch_size = patch_size
        self.stride = int(stride or patch_size)
        self.grid = tuple(grid)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.patch_embedding = nn.Conv2d(num_channels, width, kernel_size=patch_size, stride=self.stride, bias=False)
        self.position_embedding = nn.Embedding(1 + grid[0] * grid[1], width)
        nn.init.normal_(self.patch_embedding.weight, std=initializer_range)
        nn.init.normal_(self.position_embedding.weight, std=initializer_range)
        self.num_cameras = int(num_cameras)
        self.sie_coef = float(sie_coef)
        self.sie_tokens = sie_tokens
        if self.num_cameras > 0:
            # CLIP-ReID / TransReID: zeros then trunc_normal_(std=0.02).
            self.sie_embedding = nn.Parameter(nn.init.trunc_normal_(torch.zeros(self.num_cameras, width), std=0.02))
        else:
            self.register_parameter("sie_embedding", None)

    def extra_repr(self) -> str:
        sie = f", sie: {self.num_cameras} cameras x {self.sie_coef:g} on {self.sie_tokens}" if self.num_cameras else ""
        stride = f", stride={self.stride}" if self.stride != self.patch_size else ""
        return f"grid={self.grid}{stride}{sie}"

    def forward(self, pixel_values: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        batch = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(batch, 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        if self.sie_embedding is not None and camids is not None:
            camids = check_camids(camids, batch, self.num_cameras, tokens.device)
            camera = self.sie_coef * self.sie_embedding[camids].to(tokens.dtype)  # [B, D]
            if self.sie_tokens == "cls":
                tokens = torch.cat([tokens[:, :1] + camera[:, None], tokens[:, 1:]], dim=1)
            else:
                tokens = tokens + camera[:, None]
        return tokens + self.position_embedding.weight[None].to(tokens.dtype)


class ReidCLIP(nn.Module):
    """A CLIP (vision + text towers, projections, logit scale) for person ReID.

    Attributes: ``vision`` (``CLIPVisionModel`` whose ``embeddings`` is a
    :class:`PersonPatchEmbeddings`), ``text`` (``CLIPTextModel``),
    ``visual_projection``, ``text_projection``, ``logit_scale`` (log of the
    temperature's inverse, as in CLIP), ``tokenizer``, ``embed_dim``,
    ``vision_width``, ``text_width``, ``image_size`` (H, W), ``patch_grid`` (h, w),
    ``image_mean`` / ``image_std`` (the pixel normalisation the weights expect).
    The image side is ``image_modules`` (the SIE table lives in
    ``vision.embeddings``); ``image_tower()`` returns it as a module of its own.
    """

    kind = "clip"
    image_modules = ("vision", "visual_projection")
    # What encode_image reads besides image_modules (an ImageTower carries them too).
    image_attributes = ("image_size", "patch_grid", "patch_size", "patch_stride", "num_cameras", "vision_width",
                        "embed_dim", "image_mean", "image_std")

    def __init__(
        self,
        config,
        tokenizer: ClipTokenizer,
        image_size: tuple[int, int],
        num_cameras: int = 0,
        sie_coef: float = 3.0,
        sie_tokens: Literal["cls", "all"] = "cls",
        preset: str = "",
        patch_stride: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPVisionModel

        vcfg, tcfg = config.vision_config, config.text_config
        patch = vcfg.patch_size
        stride = int(patch_stride or patch)
        height, width = int(image_size[0]), int(image_size[1])
        if not 0 < stride <= patch:
            raise ValueError(f"patch stride must be in 1..{patch} (the patch size), got {patch_stride}")
        if stride == patch and (height % patch or width % patch):
            raise ValueError(f"image_size {height}x{width} must be a multiple of the patch size {patch}")
        if min(height, width) < patch:
            raise ValueError(f"image_size {height}x{width} is smaller than one {patch}-pixel patch")
        if tokenizer.vocab_size > tcfg.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the text tower's embedding table only {tcfg.vocab_size}"
            )
        if tokenizer.context_length > tcfg.max_position_embeddings:
            raise ValueError(
                f"tokenizer context {tokenizer.context_length} exceeds the text tower's "
                f"{tcfg.max_position_embeddings} positions"
            )
        self.config = config
        self.preset = preset
        self.tokenizer = tokenizer
        self.image_size = (height, width)
        self.patch_grid = patch_grid_of((height, width), patch, stride)
        self.patch_size = patch
        self.patch_stride = stride
        self.embed_dim = int(config.projection_dim)
        self.vision_width = int(vcfg.hidden_size)
        self.text_width = int(tcfg.hidden_size)
        self.num_cameras = int(num_cameras)
        self.image_mean = CLIP_IMAGE_MEAN
        self.image_std = CLIP_IMAGE_STD

        self.vision = CLIPVisionModel(vcfg)
        self.vision.embeddings = PersonPatchEmbeddings(
            self.vision_width,
            patch,
            self.patch_grid,
            num_cameras=num_cameras,
            sie_coef=sie_coef,
            sie_tokens=sie_tokens,
            initializer_range=vcfg.initializer_range * config.initializer_factor,
            num_channels=vcfg.num_channels,
            stride=stride,
        )
        self.text = CLIPTextModel(tcfg)
        self.visual_projection = nn.Linear(self.vision_width, self.embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text_width, self.embed_dim, bias=False)
        # transformers' CLIPModel init for the projections and the temperature.
        nn.init.normal_(self.visual_projection.weight, std=self.vision_width**-0.5 * config.initializer_factor)
        nn.init.normal_(self.text_projection.weight, std=self.text_width**-0.5 * config.initializer_factor)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    # ------------------------------------------------------------ image ---
    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.embeddings.token_embedding

    def encode_image(
        self, pixels: torch.Tensor, camids: torch.Tensor | None = None, return_hidden: bool = False
    ) -> ImageFeatures:
        """``pixels [B,3,H,W]`` normalised with ``image_mean``/``image_std``; ``camids``
        (0-based) add the SIE camera embedding when the model has one (ignored otherwise).
        ``hidden_states[0]`` is the first layer's input, after ``pre_layrnorm``."""
        if pixels.dim() != 4 or tuple(pixels.shape[-2:]) != self.image_size:
            raise ValueError(
                f"encode_image expects [B,3,{self.image_size[0]},{self.image_size[1]}] pixels "
                f"(this backbone's image_size), got {list(pixels.shape)}"
            )
        hidden = self.vision.embeddings(pixels, camids)
        hidden = self.vision.pre_layrnorm(hidden)
        states = [hidden] if return_hidden else None
        for layer in self.vision.encoder.layers:
            hidden = layer(hidden, None)
            if states is not None:
                states.append(hidden)
        tokens = self.vision.post_layernorm(hidden)
        cls = tokens[:, 0]
        return ImageFeatures(tokens=tokens, cls=cls, proj=self.visual_projection(cls),
                             hidden_states=tuple(states) if states is not None else None)

    def image_tower(self) -> ImageTower:
        """The image side (``vision`` with its SIE table, ``visual_projection``) as a
        module sharing this model's parameters; ``copy.deepcopy`` it for a second,
        independently trained image encoder (see :class:`ImageTower`)."""
        return ImageTower(self, self.image_modules, self.image_attributes)

    # ------------------------------------------------------------- text ---
    def eos_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Index of each row's first EOS token; rows without one fall back to their
        last attended token (needs ``attention_mask``)."""
        is_eos = input_ids == self.tokenizer.eos_token_id
        has_eos = is_eos.any(dim=1)
        index = is_eos.int().argmax(dim=1)
        if not bool(has_eos.all()):
            if attention_mask is None:
                rows = (~has_eos).nonzero().flatten().tolist()
                raise ValueError(
                    f"rows {rows} of input_ids contain no EOS id {self.tokenizer.eos_token_id}; "
                    f"tokenize with model.tokenizer or pass attention_mask"
                )
            last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
            index = torch.where(has_eos, index, last)
        return index

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP text embedding ``[B, embed_dim]`` pooled at each row's EOS.

        Attention is causal (as in CLIP), so the EOS state never sees the padding
        after it and ``attention_mask`` is only needed to locate EOS in rows that
        lack one.
        """
        return self.encode_text_tokens(input_ids, attention_mask).proj

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """:class:`TextFeatures` of token ids: every position's state after
        ``final_layer_norm``, and ``proj`` = :meth:`encode_text`. The returned mask
        is ``attention_mask`` when given, else 1 through each row's EOS."""
        eos_index = self.eos_positions(input_ids, attention_mask)
        return self.encode_text_embeddings_tokens(self.token_embedding(input_ids), eos_index, attention_mask)

    def encode_text_embeddings(self, token_embeds: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """Text tower on token embeddings ``[B, L, text_width]`` (prompt learners
        splice learnable vectors in): positions added, causal attention, final
        layer norm, pooled at ``eos_index [B]``, projected to ``[B, embed_dim]``."""
        return self.encode_text_embeddings_tokens(token_embeds, eos_index).proj

    def encode_text_embeddings_tokens(self, token_embeds: torch.Tensor, eos_index: torch.Tensor,
                                      attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """:meth:`encode_text_embeddings` keeping every position's state
        (:class:`TextFeatures`). ``attention_mask`` only fills the record (attention
        is causal either way); default: 1 through ``eos_index``."""
        from transformers.masking_utils import create_causal_mask

        batch, length, _ = token_embeds.shape
        if length > self.text.config.max_position_embeddings:
            raise ValueError(f"sequence of {length} tokens exceeds the text context of {self.text.config.max_position_embeddings}")
        eos_index = torch.as_tensor(eos_index, device=token_embeds.device).long().reshape(-1)
        if eos_index.numel() != batch:
            raise ValueError(f"eos_index has {eos_index.numel()} entries for a batch of {batch}")
        hidden = self.text.embeddings(inputs_embeds=token_embeds)
        mask = create_causal_mask(config=self.text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = self.text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = self.text.final_layer_norm(hidden)
        pooled = hidden[torch.arange(batch, device=hidden.device), eos_index]
        if attention_mask is None:
            attention_mask = mask_through(eos_index, length)
        return TextFeatures(tokens=hidden, proj=self.text_projection(pooled), attention_mask=attention_mask,
                            pool_index=eos_index)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Tokenize with this model's tokenizer and encode (convenience for prompts)."""
        batch = self.tokenizer(texts)
        device = self.logit_scale.device
        return self.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    # ------------------------------------------------------------- io ---
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under transformers' ``CLIPModel`` names (SIE table excluded:
        it is ReID-specific, not part of a CLIP)."""
        out = {}
        for key, value in self.state_dict().items():
            if key.endswith("sie_embedding"):
                continue
            if key.startswith("vision."):
                key = "vision_model." + key[len("vision."):]
            elif key.startswith("text."):
                key = "text_model." + key[len("text."):]
            out[key] = value.detach().contiguous()
        return out

    def save_pretrained(self, directory: str | os.PathLike, extra: dict | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (CLIPModel key names) + the
        tokenizer, i.e. a directory :func:`build_clip` accepts as ``pretrained``.

        The position table is saved at this model's patch grid, recorded in
        ``config.json`` as ``reidbench_patch_grid``; transformers' own ``CLIPModel``
        only loads it when that grid is square.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config[_GRID_KEY] = list(self.patch_grid)
        config["architectures"] = ["CLIPModel"]
        if extra:
            config.update(extra)
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        save_file(self.hf_state_dict(), str(directory / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save(directory)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], source_grid: tuple[int, int], interpolation: str) -> None:
        """Load a ``CLIPModel``-named state dict, resizing the position table from
        ``source_grid`` to this model's patch grid. Every CLIP weight must be
        present; extra keys are an error (they mean an architecture mismatch)."""
        mapped = {}
        for key, value in state.items():
            if key.endswith("position_ids"):
                continue  # non-persistent buffer some older checkpoints carry
            if key.startswith("vision_model."):
                key = "vision." + key[len("vision_model."):]
            elif key.startswith("text_model."):
                key = "text." + key[len("text_model."):]
            mapped[key] = value
        pos_key = "vision.embeddings.position_embedding.weight"
        if pos_key in mapped:
            mapped[pos_key] = interpolate_pos_embedding(mapped[pos_key], source_grid, self.patch_grid, interpolation)
        own = self.state_dict()
        missing = sorted(k for k in own if k not in mapped and not k.endswith("sie_embedding"))
        unexpected = sorted(k for k in mapped if k not in own)
        if missing or unexpected:
            raise ValueError(
                "pretrained CLIP weights do not fit this architecture: "
                f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
            )
        shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
        if shapes:
            raise ValueError(f"pretrained CLIP weight shapes differ (name, file, model): {shapes[:8]}")
        self.load_state_dict(mapped, strict=False)

    def extra_repr(self) -> str:
        return (
            f"preset={self.preset!r}, image_size={self.image_size}, patch_grid={self.patch_grid}, "
            f"patch_stride={self.patch_stride}, "
            f"embed_dim={self.embed_dim}, num_cameras={self.num_cameras}"
        )


# ------------------------------------------------------------- loading ---
def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise PretrainedCLIPNotFound(f"{directory}: shard {shard} listed in {index.name} is missing")
            state.update(load_file(str(directory / shard)))
        return state
    # weights_only: never unpickle arbitrary objects from a checkpoint.
    return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)


def check_pretrained_dir(directory: str | os.PathLike) -> Path:
    """Raise :class:`PretrainedCLIPNotFound` saying what belongs where if
    ``directory`` is not a complete Hugging Face CLIP directory."""
    path = Path(directory).expanduser()
    expected = (
        f"Expected a Hugging Face-format CLIP directory at {path} holding config.json, "
        f"model.safetensors (or pytorch_model.bin) and tokenizer files "
        f"(tokenizer.json, or vocab.json + merges.txt, with tokenizer_config.json)."
    )
    if not path.is_dir():
        raise PretrainedCLIPNotFound(f"pretrained CLIP directory {path} does not exist. {expected}\n{_HF_EXPORT_HINT}")
    problems = []
    if not (path / "config.json").is_file():
        problems.append("config.json is missing")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"no weights file (looked for {', '.join(WEIGHT_FILES)})")
    if not has_tokenizer_files(path):
        problems.append("no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    if problems:
        raise PretrainedCLIPNotFound(f"pretrained CLIP directory {path} is incomplete: {'; '.join(problems)}. {expected}\n{_HF_EXPORT_HINT}")
    return path


def _check_architecture(preset: ClipPreset, config) -> None:
    v, t = config.vision_config, config.text_config
    found = {
        "vision_width": v.hidden_size,
        "vision_layers": v.num_hidden_layers,
        "patch_size": v.patch_size,
        "text_width": t.hidden_size,
        "text_layers": t.num_hidden_layers,
        "embed_dim": config.projection_dim,
    }
    wrong = {k: (val, getattr(preset, k)) for k, val in found.items() if val != getattr(preset, k)}
    if wrong:
        detail = ", ".join(f"{k}: directory {a}, preset {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"the pretrained directory holds a different CLIP than preset {preset.name!r} ({detail})")


def _source_grid(config_dict: dict, config, num_positions: int) -> tuple[int, int]:
    if _GRID_KEY in config_dict:
        grid = tuple(int(x) for x in config_dict[_GRID_KEY])
    else:
        side = config.vision_config.image_size // config.vision_config.patch_size
        grid = (side, side)
    if grid[0] * grid[1] + 1 != num_positions:
        side = math.isqrt(num_positions - 1)
        if side * side + 1 != num_positions:
            raise ValueError(f"cannot infer the patch grid of a {num_positions}-entry position table")
        grid = (side, side)
    return grid


def build_clip(
    preset: str = "tiny",
    pretrained: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    num_cameras: int = 0,
    sie_coef: float = 3.0,
    *,
    sie_tokens: Literal["cls", "all"] = "cls",
    pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear",
    cache_dir: str | os.PathLike | None = None,
) -> ReidCLIP:
    """Build a :class:`ReidCLIP` from a named preset.

    ``pretrained``: ``None`` random init with the default word-level tokenizer;
    ``"synthetic"`` the cached tiny CLIP pretrained on synthetic captions (tiny
    preset only; pretrained on first use, which prints that it does so); or a path
    to a local Hugging Face CLIP directory (architecture must match the preset;
    weights and tokenizer come from it; nothing is downloaded).
    ``image_size`` (H, W) defaults to the preset's person crop; the pretrained
    position table is interpolated to it. ``num_cameras > 0`` adds an SIE camera
    table scaled by ``sie_coef`` (CLIP-ReID: 3.0).
    """
    spec = get_preset(preset)
    size = tuple(image_size) if image_size is not None else spec.image_size
    if len(size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    grid = patch_grid_of(size, spec.patch_size, spec.patch_stride)
    common = dict(image_size=size, num_cameras=num_cameras, sie_coef=sie_coef, sie_tokens=sie_tokens, preset=spec.name,
                  patch_stride=spec.patch_stride)

    if pretrained is None:
        tokenizer = default_word_tokenizer(spec.context_length, cache_dir=cache_dir)
        config = spec.clip_config(
            vocab_size=spec.vocab_size or tokenizer.vocab_size,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            grid=grid,
        )
        return ReidCLIP(config, tokenizer, **common)

    if str(pretrained) == "synthetic":
        if spec.name not in ("tiny", "tiny-s12"):
            raise ValueError(
                f"pretrained='synthetic' exists for the 'tiny' preset only (and tiny-s12; asked for {spec.name!r}); "
                f"for {spec.name!r} pass a local Hugging Face CLIP directory"
            )
        from .pretrain import ensure_pretrained_tiny

        pretrained = ensure_pretrained_tiny(cache_dir=cache_dir)

    from transformers import CLIPConfig

    directory = check_pretrained_dir(pretrained)
    config_dict = json.loads((directory / "config.json").read_text())
    if config_dict.get("model_type", "clip") != "clip" or "vision_config" not in config_dict:
        raise ValueError(f"{directory}/config.json is not a CLIPModel config (model_type={config_dict.get('model_type')!r})")
    config = CLIPConfig.from_dict(config_dict)
    _check_architecture(spec, config)
    tokenizer = load_tokenizer(directory, context_length=config.text_config.max_position_embeddings)
    state = _read_state_dict(directory)
    pos = state.get("vision_model.embeddings.position_embedding.weight")
    if pos is None:
        raise ValueError(f"{directory}: weights have no vision_model.embeddings.position_embedding.weight; not a CLIPModel checkpoint")
    source_grid = _source_grid(config_dict, config, pos.shape[0])
    model = ReidCLIP(config, tokenizer, **common)
    model.load_hf_state_dict(state, source_grid, pos_interpolation)
    return model


@register_backbone("clip")
def _clip_kind(preset: str, pretrained, image_size, num_cameras: int) -> ReidCLIP:
    return build_clip(preset, pretrained=pretrained, image_size=image_size, num_cameras=num_cameras)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "ClipPreset",
    "ImageFeatures",
    "PRESETS",
    "PersonPatchEmbeddings",
    "PretrainedCLIPNotFound",
    "ReidCLIP",
    "build_clip",
    "check_pretrained_dir",
    "count_parameters",
    "get_preset",
    "interpolate_pos_embedding",
    "list_presets",
    "patch_grid_of",
]
