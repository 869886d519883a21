"""A tiny stand-in for ``reidbench.backbones.ReidCLIP`` with the same API, for
fast method tests that must not depend on the real backbone's size or weights."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

WORDS = ["a", "photo", "of", "person", ".", "head", "torso", "legs", "feet", "upper", "arms", "and", "clothes",
         "red", "blue", "green", "shirt", "pants"]


@dataclass
class FakeImageFeatures:
    tokens: torch.Tensor
    cls: torch.Tensor
    proj: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class FakeTokenizer:
    """Word-level: ids 0 pad, 1 bos, 2 eos, 3 unk, then ``WORDS``."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    def __init__(self, context_length: int = 16) -> None:
        self.context_length = context_length
        self.vocab = {w: i + 4 for i, w in enumerate(WORDS)}
        self.vocab_size = len(self.vocab) + 4

    def encode_words(self, text: str) -> list[int]:
        return [self.vocab.get(w, self.unk_token_id) for w in re.findall(r"\w+|[^\w\s]", text.lower())]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), self.context_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            row = [self.bos_token_id, *self.encode_words(t)][: self.context_length - 1] + [self.eos_token_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class FakeCLIP(nn.Module):
    """Patchify + one transformer layer per tower; 32x16 images, patch 8 (4x2 grid)."""

    image_modules = ("vision", "visual_projection", "camera_embedding")
    image_attributes = ("image_size", "patch_grid", "num_cameras", "vision_width", "embed_dim")

    def __init__(self, vision_width: int = 32, text_width: int = 24, embed_dim: int = 16, num_cameras: int = 0,
                 context_length: int = 16, image_size: tuple[int, int] = (32, 16)) -> None:
        super().__init__()
        self.tokenizer = FakeTokenizer(context_length)
        self.vision_width, self.text_width, self.embed_dim = vision_width, text_width, embed_dim
        self.image_size = image_size
        self.patch_grid = (image_size[0] // 8, image_size[1] // 8)
        n_tokens = 1 + self.patch_grid[0] * self.patch_grid[1]
        self.vision = nn.ModuleDict({
            "patch": nn.Conv2d(3, vision_width, 8, 8),
            "cls": nn.Embedding(1, vision_width),
            "pos": nn.Embedding(n_tokens, vision_width),
            "layer": nn.TransformerEncoderLayer(vision_width, 2, 2 * vision_width, dropout=0.0, batch_first=True),
            "post_ln": nn.LayerNorm(vision_width),
        })
        self.num_cameras = num_cameras
        self.camera_embedding = nn.Parameter(torch.randn(num_cameras, vision_width) * 0.02) if num_cameras else None
        self.visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
        self.text = nn.ModuleDict({
            "token_embedding": nn.Embedding(self.tokenizer.vocab_size, text_width),
            "pos": nn.Embedding(context_length, text_width),
            "layer": nn.TransformerEncoderLayer(text_width, 2, 2 * text_width, dropout=0.0, batch_first=True),
            "final_ln": nn.LayerNorm(text_width),
        })
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        nn.init.normal_(self.text["token_embedding"].weight, std=0.02)  # CLIP's init scale
        nn.init.normal_(self.text["pos"].weight, std=0.01)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text["token_embedding"]

    def encode_image(self, pixels: torch.Tensor, camids: torch.Tensor | None = None,
                     return_hidden: bool = False) -> FakeImageFeatures:
        v = self.vision
        x = v["patch"](pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v["cls"].weight.expand(x.shape[0], 1, -1), x], dim=1) + v["pos"].weight
        if camids is not None and self.camera_embedding is not None:
            x = x + self.camera_embedding[camids][:, None]
        hidden = v["layer"](x)
        tokens = v["post_ln"](hidden)
        return FakeImageFeatures(tokens, tokens[:, 0], self.visual_projection(tokens[:, 0]),
                                 (x, hidden) if return_hidden else None)

    def encode_text_embeddings(self, token_embeds: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        t = self.text
        length = token_embeds.shape[1]
        x = token_embeds + t["pos"].weight[:length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        x = t["final_ln"](t["layer"](x, src_mask=causal, is_causal=True))
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), eos_index])

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        eos_index = attention_mask.sum(1) - 1
        return self.encode_text_embeddings(self.token_embedding(input_ids), eos_index)


    def image_tower(self):
        """The image side as a module sharing these parameters (deep-copy it for a second encoder)."""
        from reidbench.backbones.api import ImageTower

        return ImageTower(self, self.image_modules, self.image_attributes)

    def encode_text_embeddings_tokens(self, token_embeds: torch.Tensor, eos_index: torch.Tensor,
                                      attention_mask: torch.Tensor | None = None):
        from reidbench.backbones.api import TextFeatures, mask_through

        t = self.text
        length = token_embeds.shape[1]
        x = token_embeds + t["pos"].weight[:length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        x = t["final_ln"](t["layer"](x, src_mask=causal, is_causal=True))
        eos_index = torch.as_tensor(eos_index, device=x.device).long().reshape(-1)
        if attention_mask is None:
            attention_mask = mask_through(eos_index, length)
        return TextFeatures(x, self.text_projection(x[torch.arange(x.shape[0], device=x.device), eos_index]),
                            attention_mask, eos_index)

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.encode_text_embeddings_tokens(self.token_embedding(input_ids), attention_mask.sum(1) - 1,
                                                  attention_mask)


def identity_batch(num_classes: int = 4, size: tuple[int, int] = (32, 16), seed: int = 0, n_per_id: int = 2) -> dict:
    """A training batch as the loaders yield it, with identity-dependent images (something to learn)."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_classes).repeat_interleave(n_per_id)
    n = pids.numel()
    base = torch.randn(num_classes, 3, *size, generator=g)
    images = base[pids] + 0.3 * torch.randn(n, 3, *size, generator=g)
    return {"image": images, "pid": pids, "camid": torch.arange(n) % 2, "index": torch.arange(n),
            "clothes_id": torch.full((n,), -1)}


def chunks(batch: dict, size: int = 3):
    """What the harness's ``train_batches()`` yields: the split in order, un-augmented."""
    n = batch["pid"].numel()
    for s in range(0, n, size):
        yield {k: v[s: s + size] for k, v in batch.items()}


# ----------------------------------------------------------- contract batches

FAKE_TEXTS = {
    "caption": ["a person in a red shirt and blue pants", "a person in a green shirt", "a person in blue clothes",
                "a photo of a person in red pants"],
    "id_description": ["a person", "a photo of a person", "a person .", "person"],
    "clothes_description": ["red shirt and blue pants", "green shirt", "blue clothes", "red pants"],
}


def part_bands(n: int, size: tuple[int, int]) -> torch.Tensor:
    """``[n,H,W]`` part labels as horizontal bands (head at the top, feet at the bottom)
    with a background column on each side, so every label 0..5 is present."""
    h, w = size
    rows = (torch.arange(h) * 5 // h + 1).view(h, 1).expand(h, w).clone()
    rows[:, 0] = 0
    rows[:, -1] = 0
    return rows.expand(n, h, w).clone()


def requirement_batch(requires=(), num_classes: int = 4, size: tuple[int, int] = (32, 16), seed: int = 0,
                      n_per_id: int = 2) -> dict:
    """A training batch as the loaders yield it for a method that ``requires`` these
    names (``reidbench.methods.REQUIREMENTS``): part masks and parsing maps are real
    (``has_*`` True) only when required, clothes ids are known (>= 0) only when
    required, and a ``list[str]`` per sample is there for each required text kind only."""
    batch = identity_batch(num_classes, size, seed, n_per_id)
    n = batch["pid"].numel()
    label_maps = bool({"mask", "parsing"} & set(requires))
    mask = part_bands(n, size) if label_maps else torch.zeros(n, *size, dtype=torch.long)
    batch.update(mask=mask, parsing=mask * 2, visible=torch.stack([(mask == k).flatten(1).any(1) for k in range(1, 6)], 1),
                 has_mask=torch.full((n,), label_maps), has_parsing=torch.full((n,), label_maps))
    if "clothes_id" in requires:
        batch["clothes_id"] = (batch["pid"] * 2 + torch.arange(n) % 2) % 6
    for kind, texts in FAKE_TEXTS.items():
        if kind in requires:
            batch[kind] = [texts[int(p) % len(texts)] for p in batch["pid"]]
    return batch


def text_query_batch(num_classes: int = 4, n_per_id: int = 2) -> dict:
    """A text-query batch of a text-to-image test split: one caption per row."""
    pids = torch.arange(num_classes).repeat_interleave(n_per_id)
    n = pids.numel()
    return {"caption": [FAKE_TEXTS["caption"][(int(p) + i) % 4] for i, p in enumerate(pids)], "pid": pids,
            "camid": torch.zeros(n, dtype=torch.long), "index": torch.arange(n)}
