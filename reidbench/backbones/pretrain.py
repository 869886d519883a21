"""Contrastive (CLIP-style) pretraining of the tiny CLIP on synthetic image-caption
pairs, cached under a key derived from its config.

The embedded default has no real CLIP weights, yet the methods assume a
*pretrained* CLIP (frozen-encoder prompt learning only means something on top of
one). So the tiny preset is pretrained here, once per config, on captioned
synthetic people whose identities are disjoint from every benchmark split
(``reidbench.datasets.synthetic.pretraining_pairs``), and every later
``build_clip("tiny", pretrained="synthetic")`` loads the cached result.

Recipe (CLIP's, scaled to a CPU): AdamW (betas 0.9/0.98, eps 1e-6, weight decay
on matrices only), linear warmup then cosine decay, learnable temperature clamped
at 100, fp32 (bf16 autocast was slower on the 2-core CPU this was sized on),
horizontal flips as the only augmentation (colour jitter would contradict the
colour words of the captions).

Decision: templated captions repeat (two people in the same outfit get the same
sentence), and plain InfoNCE would push identical captions apart as negatives.
The loss therefore treats every pair in the batch with an *identical caption* as
a positive (targets spread uniformly over them, both directions); with unique
captions it is exactly CLIP's symmetric cross-entropy. ``dedupe_captions=False``
restores plain InfoNCE.

Budget: ``steps`` (the default, 300 batches of 128: about 5 minutes on 2 idle
cores; machine-independent and deterministic for a given seed) or ``minutes``
(warmup and cosine follow wall-clock progress, so a faster machine does more
steps and a loaded one fewer). The budget is part of the cache key; the steps
actually done are recorded in ``pretrain.json``. Rendering the pairs is not
counted in the budget.

Measured (the default config: 20,000 pairs, 300 steps of 128, 2 idle cores):
training 315 s plus 28 s rendering; the loss sits at ln(128) = 4.85 for the first
~100 steps, then falls to 3.55; held-out zero-shot upper / lower colour accuracy
0.39 / 0.21 (chance 0.10 / 0.13, majority class 0.12 / 0.17), image-to-caption
R@1 0.013 among 976 captions (chance 0.001); 6,000 pairs gave 0.37 / 0.22.
Shorter runs (100-200 steps at batch 64 or 128, lr 5e-4 or 1e-3, temperature
0.07 or 0.03) stayed at chance: do not shorten the budget to save time in tests.
A temperature initialised at 0.25 with a 20x learning rate collapsed to uniform
logits (scale 3.5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .pretrain_config import PretrainConfig, add_pretrain_arguments, config_from_args  # noqa: F401
from .clip import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, ReidCLIP, build_clip, get_preset
from .tokenizer import cache_root, cached_directory, config_key, is_complete, synthetic_fingerprint

PRETRAIN_VERSION = 2  # bump when the recipe below changes: it is part of the cache key

# Zero-shot prompt ensembles per attribute factor ("{}" = the attribute value).
# The first template of each is the generator's own (ATTRIBUTE_VOCAB["prompt_templates"]);
# the others name each garment type the captions use. Embeddings of a class's
# prompts are averaged (CLIP's prompt ensembling), so no garment type is favoured.
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "upper_colour": (
        "a person in a {} top",
        "a person wearing a {} t-shirt",
        "a person wearing a {} shirt",
        "a person wearing a {} jacket",
        "a person wearing a {} coat",
    ),
    "lower_colour": (
        "a person wearing {} on the bottom",
        "a person wearing {} trousers",
        "a person wearing {} shorts",
        "a person wearing a {} skirt",
    ),
}


# -------------------------------------------------------------- cache key ---
def pretrain_key(cfg: PretrainConfig) -> str:
    payload = {
        "version": PRETRAIN_VERSION,
        "config": asdict(cfg),
        "architecture": asdict(get_preset(cfg.preset)),
        "synthetic": synthetic_fingerprint(),
    }
    return config_key(payload)


def pretrained_dir(cfg: PretrainConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "clip" / f"{cfg.preset}-synthetic-{pretrain_key(cfg)}"


# ------------------------------------------------------------------ data ---
def _pixels(images_uint8: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] normalised with CLIP's statistics."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    if flip is not None and bool(flip.any()):
        x[flip] = x[flip].flip(-1)
    mean = torch.tensor(CLIP_IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_pairs(n_images: int, seed: int, image_size: tuple[int, int]):
    from reidbench.datasets import synthetic

    # The bytes do not depend on the number of render workers (see pretraining_pairs).
    workers = max(1, min(4, os.cpu_count() or 1))
    images, captions, attributes = synthetic.pretraining_pairs(
        n_images=n_images, seed=seed, image_size=tuple(image_size), workers=workers
    )
    images = torch.as_tensor(np.ascontiguousarray(images))
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise TypeError(f"pretraining_pairs must return uint8 [N,H,W,3] images, got {images.dtype} {list(images.shape)}")
    if tuple(images.shape[1:3]) != tuple(image_size):
        raise ValueError(f"pretraining_pairs returned {tuple(images.shape[1:3])} images, asked for {tuple(image_size)}")
    return images, list(captions), list(attributes)


# ------------------------------------------------------------------ loss ---
def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric image-text cross-entropy. With ``groups`` (caption ids), every
    pair with the same caption counts as a positive (uniform soft targets)."""
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.T
    if groups is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    positive = (groups[:, None] == groups[None, :]).float()
    target = positive / positive.sum(dim=1, keepdim=True)  # symmetric, so rows and columns agree
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def _lr_factor(progress: float, warmup: float) -> float:
    if warmup > 0 and progress < warmup:
        return progress / warmup
    span = max(1e-8, 1.0 - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))


def _optimizer(model: ReidCLIP, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # CLIP / open_clip: no weight decay on gains, biases, the temperature (all < 2-D).
        (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )


# ------------------------------------------------------------- evaluation ---
@torch.no_grad()
def _image_embeddings(model: ReidCLIP, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    out = [model.encode_image(_pixels(images[i:i + batch_size])).proj for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def _text_embeddings(model: ReidCLIP, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    out = [model.encode_texts(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


def _format_value(value) -> str:
    return str(value).replace("_", " ")


@torch.no_grad()
def zero_shot_attribute_accuracy(
    model: ReidCLIP,
    images,
    attributes: Sequence[dict],
    prompts: dict[str, str | Sequence[str]] | None = None,
    image_embeddings: torch.Tensor | None = None,
) -> dict[str, dict]:
    """Zero-shot classification of attribute factors by prompt retrieval.

    For each factor (default: upper and lower clothing colour) and each value
    present in ``attributes``, the prompt templates are filled ("a person in a
    red top", ...), encoded, L2-normalised and averaged into one class
    embedding; each image gets the value whose class embedding has the highest
    cosine similarity with its image embedding. ``prompts`` maps a factor to a
    template or a tuple of templates. Returns ``{factor: {"accuracy", "chance"
    (1 / classes), "majority" (share of the most frequent value), "classes",
    "n"}}``.
    """
    was_training = model.training
    model.eval()
    prompts = prompts or DEFAULT_PROMPTS
    images = torch.as_tensor(images)
    img = image_embeddings if image_embeddings is not None else _image_embeddings(model, images)
    results = {}
    for factor, templates in prompts.items():
        templates = (templates,) if isinstance(templates, str) else tuple(templates)
        labels = [a.get(factor) for a in attributes]
        if any(label is None for label in labels):
            raise KeyError(f"attribute {factor!r} missing from some attribute dicts (keys: {sorted(attributes[0])})")
        values = sorted({str(v) for v in labels})
        filled = [t.format(_format_value(v)) for v in values for t in templates]
        text = _text_embeddings(model, filled).view(len(values), len(templates), -1).mean(dim=1)
        predicted = (img @ F.normalize(text, dim=-1).T).argmax(dim=1)
        truth = torch.tensor([values.index(str(v)) for v in labels])
        counts = torch.bincount(truth, minlength=len(values))
        results[factor] = {
            "accuracy": float((predicted == truth).float().mean()),
            "chance": 1.0 / len(values),
            "majority": float(counts.max()) / len(labels),
            "classes": len(values),
            "n": len(labels),
        }
    model.train(was_training)
    return results


@torch.no_grad()
def image_to_caption_recall(model: ReidCLIP, images, captions: Sequence[str],
                            image_embeddings: torch.Tensor | None = None) -> float:
    """R@1 of image -> caption retrieval among the given captions. A hit is a top
    caption whose text equals the image's own caption (duplicates of a templated
    caption are indistinguishable, so matching by index would be a coin toss)."""
    was_training = model.training
    model.eval()
    img = image_embeddings if image_embeddings is not None else _image_embeddings(model, torch.as_tensor(images))
    unique = sorted(set(captions))
    position = {c: i for i, c in enumerate(unique)}
    text = _text_embeddings(model, unique)
    best = (img @ text.T).argmax(dim=1)
    truth = torch.tensor([position[c] for c in captions])
    model.train(was_training)
    return float((best == truth).float().mean())


def evaluate_pretraining(model: ReidCLIP, images, captions, attributes, prompts=None) -> dict:
    images = torch.as_tensor(images)
    emb = _image_embeddings(model.eval(), images)
    zero_shot = zero_shot_attribute_accuracy(model, images, attributes, prompts, image_embeddings=emb)
    return {
        "zero_shot": zero_shot,
        "image_to_caption_R1": image_to_caption_recall(model, images, captions, image_embeddings=emb),
        "caption_candidates": len(set(captions)),
    }


# ---------------------------------------------------------------- training ---
def train_clip(model: ReidCLIP, images: torch.Tensor, captions: Sequence[str], cfg: PretrainConfig,
               log_every: int = 25, stream=sys.stdout) -> dict:
    """Contrastive training loop (in place). Returns a summary of the run."""
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens = model.tokenizer(list(captions))
    ids = tokens["input_ids"]
    eos = model.eos_positions(ids)
    _, groups = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    groups = torch.as_tensor(groups)
    opt = _optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    n = len(images)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    start = time.perf_counter()
    step, losses = 0, []
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        if cfg.minutes is not None:
            progress = elapsed / (60.0 * cfg.minutes)
        else:
            progress = step / cfg.steps
        if progress >= 1.0:
            break
        factor = _lr_factor(progress, cfg.warmup_fraction)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        if cursor + cfg.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        flip = (torch.rand(len(index), generator=generator) < 0.5) if cfg.hflip else None
        pixels = _pixels(images[index], flip)
        image_emb = model.encode_image(pixels).proj
        # Causal attention + EOS pooling: padding after a batch's longest caption
        # never reaches a pooled state, so it is cut.
        batch_eos = eos[index]
        batch_ids = ids[index, : int(batch_eos.max()) + 1]
        text_emb = model.encode_text_embeddings(model.token_embedding(batch_ids), batch_eos)
        loss = clip_loss(image_emb, text_emb, model.logit_scale, groups[index] if cfg.dedupe_captions else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(loss.item())
        step += 1
        if stream is not None and (step % log_every == 0 or step == 1):
            if cfg.minutes is not None:
                eta = max(0.0, 60.0 * cfg.minutes - (time.perf_counter() - start))
            else:
                eta = (time.perf_counter() - start) / step * (cfg.steps - step)
            print(f"  pretrain step {step:5d}  loss {np.mean(losses[-log_every:]):.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  scale {model.logit_scale.exp().item():.1f}  eta {eta:.0f}s",
                  file=stream, flush=True)
    model.eval()
    return {
        "steps": step,
        "train_seconds": time.perf_counter() - start,
        "samples_seen": step * cfg.batch_size,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "first_loss": losses[0] if losses else None,
        "logit_scale": float(model.logit_scale.detach().exp()),
    }


def pretrain_tiny(cfg: PretrainConfig | None = None, cache_dir: str | os.PathLike | None = None,
                  force: bool = False, stream=sys.stdout) -> Path:
    """Pretrain the tiny CLIP with ``cfg`` unless the cache already holds it; return
    its directory (a Hugging Face-format CLIP directory plus ``pretrain.json``
    with the config, timings and held-out zero-shot metrics)."""
    cfg = cfg or PretrainConfig()
    final = pretrained_dir(cfg, cache_dir)

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        if stream is not None:
            print(f"pretraining the {cfg.preset} CLIP on {cfg.n_images} synthetic image-caption pairs "
                  f"({cfg.budget()}, cached at {final})", file=stream, flush=True)
        torch.manual_seed(cfg.seed)
        model = build_clip(cfg.preset, pretrained=None, image_size=cfg.image_size, cache_dir=cache_dir)
        images, captions, _ = load_pairs(cfg.n_images, cfg.seed, cfg.image_size)
        data_seconds = time.perf_counter() - started
        summary = train_clip(model, images, captions, cfg, stream=stream)
        del images
        held_images, held_captions, held_attributes = load_pairs(cfg.heldout_images, cfg.heldout_seed, cfg.image_size)
        metrics = evaluate_pretraining(model, held_images, held_captions, held_attributes)
        record = {
            "config": asdict(cfg),
            "key": pretrain_key(cfg),
            "data_seconds": data_seconds,
            **summary,
            "total_seconds": time.perf_counter() - started,
            "heldout": metrics,
            "torch_threads": torch.get_num_threads(),
        }
        model.save_pretrained(tmp, extra={"reidbench_pretrain_key": pretrain_key(cfg)})
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        if stream is not None:
            print(format_report(record), file=stream, flush=True)

    path, _ = cached_directory(final, build, force=force)
    return path


def ensure_pretrained_tiny(cache_dir: str | os.PathLike | None = None) -> Path:
    """The default pretrained tiny CLIP (``PretrainConfig()``), pretraining it on first use."""
    return pretrain_tiny(PretrainConfig(), cache_dir=cache_dir)


def read_record(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "pretrain.json").read_text())


def format_report(record: dict) -> str:
    lines = [f"pretrained {record['config']['preset']} CLIP: {record['steps']} steps of {record['config']['batch_size']} "
             f"in {record['train_seconds']:.0f}s (data {record['data_seconds']:.0f}s), loss {record['first_loss']:.2f} -> "
             f"{record['final_loss']:.2f}"]
    held = record["heldout"]
    for factor, r in held["zero_shot"].items():
        lines.append(f"  zero-shot {factor}: {r['accuracy']:.3f} (chance {r['chance']:.3f}, majority {r['majority']:.3f}, "
                     f"{r['classes']} classes, n={r['n']})")
    lines.append(f"  image->caption R@1: {held['image_to_caption_R1']:.3f} among {held['caption_candidates']} captions")
    return "\n".join(lines)


# --------------------------------------------------------------------- CLI ---
def run_pretrain(args: argparse.Namespace) -> int:
    """``reidbench pretrain``: pretrain (or find in the cache) and print the held-out metrics and the path."""
    cfg = config_from_args(args)
    cached = is_complete(pretrained_dir(cfg, args.cache_dir)) and not args.force
    path = pretrain_tiny(cfg, cache_dir=args.cache_dir, force=args.force)
    if cached:
        print("already in the cache (--force pretrains again)")
        print(format_report(read_record(path)))
    print(path)
    return 0


__all__ = [
    "DEFAULT_PROMPTS",
    "PretrainConfig",
    "add_pretrain_arguments",
    "clip_loss",
    "ensure_pretrained_tiny",
    "evaluate_pretraining",
    "image_to_caption_recall",
    "pretrain_tiny",
    "pretrained_dir",
    "run_pretrain",
    "zero_shot_attribute_accuracy",
]
