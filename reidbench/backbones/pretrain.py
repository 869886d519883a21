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
colour words of the captions). The images are pre-rendered into memory (uint8), so
the steps are compute-bound.

Decisions:

* Captions are drawn afresh each time an image enters a batch (:class:`CaptionSampler`):
  half of the draws are one of the generator's caption forms for that person (SCGI
  template, CUHK-PEDES style, identity + clothing description; every wording variant,
  in ``pretraining_pairs``' mix), half a short random subset of the person's attribute
  phrases ("a red and white striped t-shirt, black shoes"), so each attribute word is
  also seen apart from a 50-word template. ``short_caption_fraction=0`` trains on
  the generator's forms only.
* Attribute anchors (:class:`AttributeAnchors`, ``attribute_anchor_weight``, 25 x the
  contrastive loss by default): image
  embeddings and the embeddings of short captions are also classified, per attribute
  factor, against one shared set of learnable class embeddings in the joint space (a
  caption only on the factors it names). Both towers get the same targets from the
  first step instead of waiting for each other (see "What holds it back" below); the
  anchors are dropped after pretraining, and zero-shot evaluation uses prompts only.
  The generator's attribute labels are used here and nowhere else.
* Every generator text must fit the 77-token context (:func:`check_text_lengths`, run
  before training): until this check, a sixth of the pretraining captions (identity
  + clothing description, both detailed: up to 99 tokens) lost their clothing half
  to truncation.
* Text batches are encoded in two length buckets (:func:`_encode_caption_batch`):
  same embeddings, less padding.
* Pretraining and held-out images are rendered at the embedded default's difficulty
  (0.0), the images the methods see.
* Templated captions repeat (two people in the same outfit get the same sentence),
  and plain InfoNCE would push identical captions apart as negatives. The loss
  therefore treats every pair in the batch with an *identical caption* as a positive
  (targets spread uniformly over them, both directions); with unique captions it is
  exactly CLIP's symmetric cross-entropy. ``dedupe_captions=False`` restores plain InfoNCE.

Budget: ``steps`` (the default: 2000 batches of 32, lr 5e-4, anchor weight 25;
machine-independent and deterministic for a given seed) or ``minutes`` (warmup and cosine
follow wall-clock progress, so a faster machine does more steps and a loaded one fewer). The
budget is part of the cache key; the steps actually done are recorded in ``pretrain.json``.
Rendering the pairs is not counted in the budget.

Why these numbers (issue 16; every probe in ``results/pretrain_recipe_probes.csv``, made
with ``scripts/pretrain_probe.py``): the image tower is what limits the result. Under the
previous default (900 of 64, lr 1e-3, anchor weight 1: held-out R@1 0.197, upper / lower
colour 0.585 / 0.400) a linear probe on its image embeddings found lower colour only 46 % of
the time, and the image tower trained on the attribute labels alone (no text; a throwaway
diagnostic) reached only 0.70 / 0.77 in 750 steps of 64, at lr 3e-4 and 1e-3 alike. So the
recipe spends the budget where the image tower learns fastest: a stronger anchor loss (weight
1 -> 25 at 900 of 64: lower colour 0.436 -> 0.643), more and smaller steps (batch 32 costs
10 % more time per image than 64 and learns more per image; 16 adds nothing), and as many
steps as 8 minutes of first use allow (2000 since AdamW runs fused: 8 % of a step was its
per-tensor loop). lr 5e-4 matched or beat 1e-3 at both batch sizes. Upper colour was then
bounded by its labels, not by the model: a striped or checked top showed its two colours in
equal bands and was labelled with the first by the stripes' phase, and the model named one of
the two colours for 92 % of all tops but the labelled one only half the time on patterned tops
(0.741 overall, 0.963 on plain tops). Since the renderer draws the first colour as the dominant
one (``raster.STRIPE_SHARE``, ``CHECK_SHARE``), the label is what most of the garment shows and
the same recipe reaches 0.844 (``results/pretrain_quality.txt``); zero-shot results still report
``plain_accuracy`` apart.

Measured before this recipe (main, 300 steps of 128 at lr 5e-4, difficulty 0.5, one
fixed caption per image, 2 idle cores): 468 s, loss 5.22 -> 3.40, held-out zero-shot
upper / lower colour 0.433 / 0.205 (chance 0.10 / 0.125), image-to-caption R@1 0.029
among 966 captions. What holds it back (notes/s25-clip16.md): the loss sits at ln(batch)
for the first 100-150 steps whatever the captions; even with captions that only name
the top's colour ("a red top", 10 classes, batch 32, lr 1e-3) it did not leave ln(32)
in 70 steps, while a linear probe trained through the image tower on the same labels
learned from the first steps. Two towers from scratch have to break their symmetry
together (neither has features the other can align to). With the attribute anchors on
the same toy task, the CLIP part of the loss fell from 3.47 to 3.29 by step 20 and
3.04 by step 50.
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

PRETRAIN_VERSION = 3  # bump when the recipe below changes: it is part of the cache key

# Zero-shot prompt ensembles per attribute factor ("{}" = the attribute value, in the
# words of VALUE_WORDS when it has an entry). The first template of the colours is the
# generator's own (ATTRIBUTE_VOCAB["prompt_templates"]); the others name each garment
# type the captions use. Embeddings of a class's prompts are averaged (CLIP's prompt
# ensembling), so no garment type is favoured.
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
    "upper_pattern": (
        "a person wearing a {} t-shirt",
        "a person wearing a {} shirt",
        "a person wearing a {} jacket",
        "a person wearing a {} coat",
    ),
    "shoes_colour": ("a person wearing {} shoes",),
    "hair_colour": ("a person with {} hair",),
    "bag": ("a person carrying {}",),
    "gender": ("a {} is wearing", "the {} has"),
}
# Value -> words where the value itself is not what a caption says.
VALUE_WORDS: dict[str, dict[str, str]] = {
    "bag": {"none": "nothing", "backpack": "a backpack", "handbag": "a handbag"},
}
# Colour factors whose garment may carry a second colour (the label is the first, dominant one:
# two thirds of a striped or checked garment, the upper part of a two-tone top), so zero-shot
# results also report the accuracy on plain garments, where only one colour shows.
PATTERN_OF: dict[str, str] = {"upper_colour": "upper_pattern", "lower_colour": "lower_pattern"}


def value_words(factor: str, value) -> str:
    return VALUE_WORDS.get(factor, {}).get(str(value), str(value).replace("_", " "))


def zero_shot_classes(prompts: dict | None = None) -> dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]]:
    """``{factor: (templates, [(value, words), ...])}`` over every value the generator knows."""
    from reidbench.datasets.synthetic import ATTRIBUTE_VOCAB

    out = {}
    for factor, templates in (prompts or DEFAULT_PROMPTS).items():
        templates = (templates,) if isinstance(templates, str) else tuple(templates)
        out[factor] = (templates, [(str(v), value_words(factor, v)) for v in ATTRIBUTE_VOCAB[factor]])
    return out


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


def load_pairs(n_images: int, seed: int, image_size: tuple[int, int], difficulty: float = 0.5):
    from reidbench.datasets import synthetic

    # The bytes do not depend on the number of render workers (see pretraining_pairs).
    workers = max(1, min(4, os.cpu_count() or 1))
    images, captions, attributes = synthetic.pretraining_pairs(
        n_images=n_images, seed=seed, image_size=tuple(image_size), difficulty=difficulty, workers=workers
    )
    images = torch.as_tensor(np.ascontiguousarray(images))
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise TypeError(f"pretraining_pairs must return uint8 [N,H,W,3] images, got {images.dtype} {list(images.shape)}")
    if tuple(images.shape[1:3]) != tuple(image_size):
        raise ValueError(f"pretraining_pairs returned {tuple(images.shape[1:3])} images, asked for {tuple(image_size)}")
    return images, list(captions), list(attributes)


def heldout_pairs(cfg: PretrainConfig):
    """The held-out evaluation pairs of ``cfg`` (other seed, so other identities): images,
    the generator's captions (one per image, as ``pretraining_pairs`` writes them) and attributes."""
    return load_pairs(cfg.heldout_images, cfg.heldout_seed, cfg.image_size, cfg.difficulty)


# --------------------------------------------------------------- captions ---
def attribute_phrases(identity, outfit) -> list[str]:
    """Short attribute phrases of one person, in the generator's own wording
    (``upper_phrase`` / ``lower_phrase``): top, bottom, shoes, hair, gender, bag
    and, when worn, the cap."""
    from reidbench.datasets import synthetic as S

    bottom = S.lower_phrase(outfit, article=outfit.lower_type == "skirt")
    phrases = [S.upper_phrase(outfit), bottom, f"{outfit.shoes_colour} shoes",
               f"{identity.hair_length} {identity.hair_colour} hair", f"a {identity.gender}",
               "no bag" if outfit.bag == "none" else S._a(f"{outfit.bag_colour} {outfit.bag}")]
    if outfit.hat != "none":
        phrases.append(S._a(f"{outfit.hat} cap"))
    return phrases


# The factors each phrase of attribute_phrases names, in its order (the cap names none
# of ANCHOR_FACTORS).
PHRASE_FACTORS = (("upper_colour", "upper_pattern", "upper_type"), ("lower_colour", "lower_type"),
                  ("shoes_colour",), ("hair_colour",), ("gender",), ("bag",), ())
# Factors the attribute anchors classify (see AttributeAnchors).
ANCHOR_FACTORS = ("upper_colour", "upper_pattern", "upper_type", "lower_colour", "lower_type", "shoes_colour",
                  "hair_colour", "bag", "gender")


def _short_draw(phrases: Sequence[str], rng: np.random.Generator) -> tuple[str, list[int]]:
    k = int(rng.integers(1, len(phrases) + 1))
    chosen = [int(j) for j in rng.permutation(len(phrases))[:k]]
    return ", ".join(phrases[j] for j in chosen), chosen


def short_caption(phrases: Sequence[str], rng: np.random.Generator) -> str:
    """A random non-empty subset of ``phrases`` in random order, comma-separated: every
    attribute word is seen apart from the others (a caption naming only the top ties
    its colour word to the top, which a 50-word template sentence does not do early on)."""
    return _short_draw(phrases, rng)[0]


def attribute_labels(attributes: Sequence[dict]) -> torch.Tensor:
    """``[N, len(ANCHOR_FACTORS)]`` class indices (in ``ATTRIBUTE_VOCAB`` order) of each image."""
    from reidbench.datasets.synthetic import ATTRIBUTE_VOCAB

    vocab = {f: [str(v) for v in ATTRIBUTE_VOCAB[f]] for f in ANCHOR_FACTORS}
    return torch.tensor([[vocab[f].index(str(a[f])) for f in ANCHOR_FACTORS] for a in attributes], dtype=torch.long)


class AttributeAnchors(torch.nn.Module):
    """One learnable class embedding per attribute value, in CLIP's joint space.

    Decision (what holds plain CLIP pretraining back here, see the module docstring):
    both towers start from scratch, and the contrastive loss stays at ln(batch) until
    they happen to agree on some feature. Classifying image embeddings *and* the
    embeddings of short captions against the same anchors (cosine x ``scale``,
    cross-entropy per factor) gives both towers the same targets from the first step.
    A caption is only classified on the factors it names (the phrases it drew); the
    generator's long captions only enter the contrastive loss. The anchors are
    discarded after pretraining: zero-shot evaluation uses text prompts only.
    """

    def __init__(self, embed_dim: int, scale: float = 10.0) -> None:
        from reidbench.datasets.synthetic import ATTRIBUTE_VOCAB

        super().__init__()
        self.scale = float(scale)
        self.classes = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(len(ATTRIBUTE_VOCAB[f]), embed_dim) * embed_dim**-0.5)
             for f in ANCHOR_FACTORS])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over factors of the cross-entropy of ``embeddings`` against each factor's
        anchors; ``labels`` ``[B, factors]``, -1 where a row does not name the factor."""
        z = F.normalize(embeddings, dim=-1)
        losses = []
        for k, anchors in enumerate(self.classes):
            named = labels[:, k] >= 0
            if bool(named.any()):
                logits = self.scale * z[named] @ F.normalize(anchors, dim=-1).T
                losses.append(F.cross_entropy(logits, labels[named, k]))
        return torch.stack(losses).mean() if losses else embeddings.sum() * 0.0


class CaptionSampler:
    """Draws a fresh caption for every image each time it enters a batch.

    ``pretraining_pairs`` writes one caption per image; this sampler instead draws,
    per use, either (probability ``short_fraction``) a :func:`short_caption` of the
    person's attribute phrases, or a generator caption of the image's identity and
    outfit drawn as ``pretraining_pairs`` draws one (``synthetic.pretraining_caption``
    over ``World.texts``, every wording variant the generator can write).
    Deterministic for a seed.
    """

    def __init__(self, attributes: Sequence[dict], world_seed: int, difficulty: float,
                 image_size: tuple[int, int], short_fraction: float, seed: int) -> None:
        from reidbench.datasets import synthetic as S

        world = S.World(S.WorldConfig(seed=int(world_seed), difficulty=float(difficulty),
                                      height=int(image_size[0]), width=int(image_size[1])))
        ns = S._PRETRAIN_NS
        self.labels = attribute_labels(attributes)
        self.forms, self.phrases = [], []
        cache: dict = {}
        for a in attributes:
            key = (int(a["pid"]), int(a["clothes_id"]))
            if key not in cache:
                identity, outfit = world.identity(ns, key[0]), world.outfit(ns, key[1])
                cache[key] = (world.texts(ns, key[0], ns, key[1]), attribute_phrases(identity, outfit))
            forms, phrases = cache[key]
            self.forms.append(forms)
            self.phrases.append(phrases)
        self.short_fraction = float(short_fraction)
        self.rng = np.random.default_rng(seed)

    def draw(self, index: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        """Captions for ``index`` and the ``[B, len(ANCHOR_FACTORS)]`` labels each one names
        (-1 where it names none: every factor of a generator caption, which is not parsed)."""
        from reidbench.datasets.synthetic import pretraining_caption

        captions, named = [], torch.full((len(index), len(ANCHOR_FACTORS)), -1, dtype=torch.long)
        for row, j in enumerate(map(int, index)):
            if self.rng.random() < self.short_fraction:
                text, chosen = _short_draw(self.phrases[j], self.rng)
                for phrase in chosen:
                    for factor in PHRASE_FACTORS[phrase]:
                        k = ANCHOR_FACTORS.index(factor)
                        named[row, k] = self.labels[j, k]
            else:
                text = pretraining_caption(self.forms[j], self.rng)
            captions.append(text)
        return captions, named

    def __call__(self, index: Sequence[int]) -> list[str]:
        return self.draw(index)[0]


def generator_texts(n_people: int = 200, seed: int = 12345) -> dict[str, list[str]]:
    """Every text the generator can write for ``n_people`` random (identity, outfit)
    pairs, by kind: the SCGI caption, the CUHK-PEDES caption, the identity and clothing
    descriptions per style, the pretraining captions (identity + clothing description
    of one style, every pairing), the longest short caption (all attribute phrases) and
    the zero-shot prompts filled with every value."""
    from reidbench.datasets import render as R
    from reidbench.datasets import synthetic as S

    texts: dict[str, list[str]] = {}

    def add(kind: str, items) -> None:
        texts.setdefault(kind, []).extend(items)

    for j in range(n_people):
        rng = np.random.default_rng([seed, j])
        identity, outfit = R.sample_identity(rng), R.sample_outfit(rng)
        ids, clothes = S.id_description_variants(identity), S.clothes_description_variants(outfit)
        add("caption (SCGI)", S.scgi_caption_variants(identity, outfit))
        add("caption (CUHK-PEDES)", S.pedes_caption_variants(identity, outfit))
        for style in ("terse", "detailed", "list"):
            add(f"id description ({style})", ids[style])
            add(f"clothes description ({style})", clothes[style])
            # synthetic.pretraining_caption's pairings: one detailed half at most
            pairs = (("detailed", "terse"), ("terse", "detailed")) if style == "detailed" else ((style, style),)
            add(f"pretraining caption ({style})", [a + " " + b for i, c in pairs for a in ids[i] for b in clothes[c]])
        add("pretraining caption (short)", [", ".join(attribute_phrases(identity, outfit))])
    for templates, values in zero_shot_classes().values():
        add("zero-shot prompt", [t.format(words) for _, words in values for t in templates])
    return texts


def text_token_lengths(tokenizer, texts: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Token count of every text (BOS and EOS included: what occupies the context), by kind."""
    texts = texts if texts is not None else generator_texts()
    out = {}
    for kind, items in texts.items():
        words = tokenizer.hf(list(items), add_special_tokens=False, verbose=False)["input_ids"]
        out[kind] = np.array([len(w) + 2 for w in words])
    return out


def check_text_lengths(tokenizer, texts: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Raise ``ValueError`` if any generator text would be truncated by the text context
    (EOS pooling would then read a mid-sentence state); return the lengths by kind."""
    texts = texts if texts is not None else generator_texts()
    lengths = text_token_lengths(tokenizer, texts)
    context = tokenizer.context_length
    too_long = {kind: int(v.argmax()) for kind, v in lengths.items() if v.max() > context}
    if too_long:
        detail = "; ".join(f"{kind}: {lengths[kind][i]} tokens, e.g. {texts[kind][i]!r}" for kind, i in too_long.items())
        raise ValueError(f"generator texts exceed the {context}-token text context (BOS and EOS included): {detail}")
    return lengths


def format_text_lengths(lengths: dict[str, np.ndarray], context: int) -> str:
    lines = [f"token lengths per text kind (BOS/EOS included; context {context}):"]
    for kind, v in lengths.items():
        lines.append(f"  {kind:34s} n={len(v):5d}  min {v.min():3d}  median {int(np.median(v)):3d}  "
                     f"p95 {int(np.percentile(v, 95)):3d}  max {v.max():3d}")
    return "\n".join(lines)


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
        fused=True,  # one kernel per step instead of a loop over the tensors: 8 % of a step -> 2 %
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


@torch.no_grad()
def zero_shot_attribute_accuracy(
    model: ReidCLIP,
    images,
    attributes: Sequence[dict],
    prompts: dict[str, str | Sequence[str]] | None = None,
    image_embeddings: torch.Tensor | None = None,
) -> dict[str, dict]:
    """Zero-shot classification of attribute factors by prompt retrieval.

    For each factor (default: ``DEFAULT_PROMPTS``: upper and lower colour, upper
    pattern, shoes colour, hair colour, bag, gender) and each value present in
    ``attributes``, the prompt templates are filled with the value's words
    (``VALUE_WORDS``: "a person in a red top", "a person carrying nothing", ...), encoded, L2-normalised and averaged into one class
    embedding; each image gets the value whose class embedding has the highest
    cosine similarity with its image embedding. ``prompts`` maps a factor to a
    template or a tuple of templates. Returns ``{factor: {"accuracy", "chance"
    (1 / classes), "majority" (share of the most frequent value), "classes",
    "n"}}``; colour factors of ``PATTERN_OF`` also get ``"plain_accuracy"`` and
    ``"plain_n"``: the same, over the images whose garment is plain (one colour).
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
        filled = [t.format(value_words(factor, v)) for v in values for t in templates]
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
        if factor in PATTERN_OF and all(PATTERN_OF[factor] in a for a in attributes):
            plain = torch.tensor([a[PATTERN_OF[factor]] == "plain" for a in attributes])
            results[factor]["plain_accuracy"] = float((predicted == truth)[plain].float().mean()) if plain.any() else None
            results[factor]["plain_n"] = int(plain.sum())
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
def _encode_caption_batch(model: ReidCLIP, captions: Sequence[str], buckets: int = 2) -> torch.Tensor:
    """Text embeddings of a batch, in its order. Rows are sorted by length and encoded in
    ``buckets`` chunks, each cut after its own longest caption: attention is causal and
    pooled at EOS, so the padding after a row's EOS never reaches its embedding, and a
    batch mixing 10-token phrases with 60-token sentences no longer pays 60 tokens for all."""
    ids = model.tokenizer(list(captions))["input_ids"]
    eos = model.eos_positions(ids)
    order = torch.argsort(eos)
    parts = []
    for chunk in torch.tensor_split(order, min(buckets, len(order))):
        chunk_eos = eos[chunk]
        chunk_ids = ids[chunk, : int(chunk_eos.max()) + 1]
        parts.append(model.encode_text_embeddings(model.token_embedding(chunk_ids), chunk_eos))
    return torch.cat(parts)[torch.argsort(order)]


def train_clip(model: ReidCLIP, images: torch.Tensor, captions: Sequence[str] | CaptionSampler, cfg: PretrainConfig,
               log_every: int = 25, stream=sys.stdout) -> dict:
    """Contrastive training loop (in place). ``captions``: one fixed caption per image,
    or a :class:`CaptionSampler` drawing a fresh one per use. Returns a summary of the run."""
    generator = torch.Generator().manual_seed(cfg.seed)
    fixed = None if isinstance(captions, CaptionSampler) else np.asarray(list(captions), dtype=object)
    anchors = None
    if cfg.attribute_anchor_weight > 0:
        if fixed is not None:
            raise ValueError("attribute_anchor_weight > 0 needs a CaptionSampler (short_caption_fraction > 0)")
        anchors = AttributeAnchors(model.embed_dim)
        model.add_module("attribute_anchors", anchors)  # trained with the model, removed below
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
        if fixed is not None:
            batch_captions, named = list(fixed[index.numpy()]), None
        else:
            batch_captions, named = captions.draw(index.tolist())
        image_emb = model.encode_image(pixels).proj
        text_emb = _encode_caption_batch(model, batch_captions)
        groups = None
        if cfg.dedupe_captions:
            _, groups = np.unique(np.asarray(batch_captions, dtype=object).astype(str), return_inverse=True)
            groups = torch.as_tensor(groups)
        loss = clip_loss(image_emb, text_emb, model.logit_scale, groups)
        if anchors is not None:
            loss = loss + cfg.attribute_anchor_weight * 0.5 * (
                anchors(image_emb, captions.labels[index]) + anchors(text_emb, named))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(loss.item())  # with anchors: CLIP loss + weighted anchor loss
        step += 1
        if stream is not None and (step % log_every == 0 or step == 1):
            if cfg.minutes is not None:
                eta = max(0.0, 60.0 * cfg.minutes - (time.perf_counter() - start))
            else:
                eta = (time.perf_counter() - start) / step * (cfg.steps - step)
            print(f"  pretrain step {step:5d}  loss {np.mean(losses[-log_every:]):.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  scale {model.logit_scale.exp().item():.1f}  eta {eta:.0f}s",
                  file=stream, flush=True)
    if anchors is not None:
        del model.attribute_anchors  # not part of the CLIP: never saved
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
        check_text_lengths(model.tokenizer)  # no generator text may be truncated by the context
        images, captions, attributes = load_pairs(cfg.n_images, cfg.seed, cfg.image_size, cfg.difficulty)
        if cfg.short_caption_fraction > 0:
            captions = CaptionSampler(attributes, cfg.seed, cfg.difficulty, cfg.image_size,
                                      cfg.short_caption_fraction, seed=cfg.seed)
        data_seconds = time.perf_counter() - started
        summary = train_clip(model, images, captions, cfg, stream=stream)
        del images, captions
        held_images, held_captions, held_attributes = heldout_pairs(cfg)
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
    """The summary ``reidbench pretrain`` prints: budget, wall time, loss, and the held-out
    zero-shot accuracy per attribute and image-to-caption R@1, each beside its chance level."""
    head = (f"pretrained {record['config']['preset']} CLIP: {record['steps']} steps of {record['config']['batch_size']}, "
            f"{record['total_seconds']:.0f}s in all (data {record['data_seconds']:.0f}s, training "
            f"{record['train_seconds']:.0f}s), loss {record['first_loss']:.2f} -> {record['final_loss']:.2f}")
    lines = [head]
    held = record["heldout"]
    order = list(DEFAULT_PROMPTS)  # pretrain.json stores the factors sorted by name
    for factor in sorted(held["zero_shot"], key=lambda f: order.index(f) if f in order else len(order)):
        r = held["zero_shot"][factor]
        plain = (f"; plain garments {r['plain_accuracy']:.3f}, n={r['plain_n']}"
                 if r.get("plain_accuracy") is not None else "")
        lines.append(f"  zero-shot {factor:<13s} {r['accuracy']:.3f} (chance {r['chance']:.3f}, majority {r['majority']:.3f}, "
                     f"{r['classes']} classes, n={r['n']}{plain})")
    lines.append(f"  image->caption R@1: {held['image_to_caption_R1']:.3f} among {held['caption_candidates']} captions "
                 f"(chance {1 / held['caption_candidates']:.3f})")
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
    "PATTERN_OF",
    "VALUE_WORDS",
    "CaptionSampler",
    "PretrainConfig",
    "add_pretrain_arguments",
    "attribute_phrases",
    "check_text_lengths",
    "clip_loss",
    "ensure_pretrained_tiny",
    "evaluate_pretraining",
    "format_text_lengths",
    "generator_texts",
    "heldout_pairs",
    "image_to_caption_recall",
    "pretrain_tiny",
    "pretrained_dir",
    "run_pretrain",
    "short_caption",
    "text_token_lengths",
    "zero_shot_attribute_accuracy",
    "zero_shot_classes",
]
