"""``reidbench data describe``: BDAM's decoupled identity and clothing descriptions
(Sec. III-B of the paper) from a local vision-language model, in the styles that
``data styles`` found.

Per image, two prompts go to the model, each the paper's content template followed by
one style prompt: :data:`IDENTITY_PROMPT` ("Describe the person's identity", biological
traits only) and :data:`CLOTHING_PROMPT` ("Describe the person's clothing", apparel,
colours, patterns, accessories only). Decoding and retries as in :mod:`.vlm`.

Decisions where the paper is silent:

* One style per image, drawn with probability proportional to its cluster's size
  (the descriptions then mirror the original texts' mix of styles) by a generator
  seeded with the image key, so every worker draws the same. Both descriptions of an
  image use that style, and the style's name is the style the texts file records.
* Checks (:func:`check_description`; the paper's "syntax checks and validation"):
  ``empty``; ``too_long`` (more than ``--max-words``, default 80); ``echoes_prompt``;
  ``unbalanced`` (brackets, parentheses or double quotes that do not pair);
  ``repetition`` (a word four times in a row, or one three-word phrase three times: a
  decoding loop); ``not_text`` (under half of the characters are letters); and the
  structure check of the decoupling, ``mentions_clothing``: an identity description
  that names a garment (:data:`GARMENT_WORDS`).
* An image counts as done when both descriptions pass; when either exhausts its
  retries the image goes to ``OUT.failed.jsonl`` with both last outputs and is not
  written to the texts file (a half-described image would mix sources in one draw).

Output: a texts file with ``id_descriptions`` and ``clothes_descriptions`` keyed by the
style name, and provenance (model, SHA-256 of both prompt templates and of the styles
file, generation settings, checks).
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass

import numpy as np

from .caption import (add_common_arguments, add_vlm_arguments, check_vlm_arguments, vlm_spec, annotate_to_jsonl)
from .vlm import VlmSpec
from .work import WorkItem, collect_items, sha256_text

__all__ = ["CLOTHING_PROMPT", "GARMENT_WORDS", "IDENTITY_PROMPT", "DescribeSpec", "add_describe_arguments",
           "check_description", "pick_style", "run_describe"]

IDENTITY_PROMPT = ("Describe the person's identity: biological traits such as gender, age, build, height, skin, "
                   "hair and glasses. Do not mention clothing or accessories.")
CLOTHING_PROMPT = ("Describe the person's clothing: apparel, colours, patterns and accessories. "
                   "Do not mention biological traits.")
MAX_WORDS = 80
GARMENT_WORDS = frozenset("""shirt t-shirt tshirt blouse top jacket coat hoodie sweater jumper vest dress skirt trousers
pants jeans shorts leggings shoes sneakers boots sandals heels socks hat cap scarf gloves backpack bag handbag
wearing wears worn outfit clothing clothes""".split())
_ECHO = ("describe the person's", "do not mention", "use a ")
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"))


def check_description(text: str, kind: str, max_words: int = MAX_WORDS) -> list[str]:
    """The names of the checks a ``kind`` (``identity`` / ``clothing``) output fails."""
    if not text.strip():
        return ["empty"]
    failed = []
    words = text.split()
    if len(words) > max_words:
        failed.append("too_long")
    if any(phrase in text.lower() for phrase in _ECHO):
        failed.append("echoes_prompt")
    if any(text.count(a) != text.count(b) for a, b in _PAIRS) or text.count('"') % 2:
        failed.append("unbalanced")
    lower = [re.sub(r"[^a-z'-]", "", w.lower()) for w in words]
    runs = any(lower[i] and lower[i] == lower[i + 1] == lower[i + 2] == lower[i + 3] for i in range(len(lower) - 3))
    trigrams = [tuple(lower[i:i + 3]) for i in range(len(lower) - 2) if all(lower[i:i + 3])]
    if runs or any(trigrams.count(t) >= 3 for t in set(trigrams)):
        failed.append("repetition")
    if sum(c.isalpha() for c in text) < 0.5 * len(text.replace(" ", "")):
        failed.append("not_text")
    if kind == "identity" and GARMENT_WORDS & set(lower):
        failed.append("mentions_clothing")
    return failed


def pick_style(key: str, styles: list[dict]) -> dict:
    """The style of image ``key``: drawn by cluster size, seeded by the key."""
    sizes = np.array([s["size"] for s in styles], dtype=float)
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
    return styles[int(rng.choice(len(styles), p=sizes / sizes.sum()))]


@dataclass(frozen=True)
class DescribeSpec:
    vlm: VlmSpec
    styles: tuple[tuple[str, str, int], ...]  # (name, prompt, size)
    retries: int = 2
    max_words: int = MAX_WORDS

    def build(self):
        model = self.vlm.load()
        styles = [{"name": n, "prompt": p, "size": s} for n, p, s in self.styles]

        def one(item: WorkItem, kind: str, template: str, style: dict) -> tuple[str, list[str], int]:
            checks_failed: list[str] = []
            text = ""
            for attempt in range(self.retries + 1):
                text = model.generate(item.path, f"{template} {style['prompt']}", f"{item.key}#{kind}", attempt)
                failed = check_description(text, kind, self.max_words)
                if not failed:
                    return text, checks_failed, attempt + 1
                checks_failed += [f"{kind}:{name}" for name in failed]
            return "", checks_failed, self.retries + 1

        def process(item: WorkItem) -> dict:
            style = pick_style(item.key, styles)
            identity, id_failed, id_attempts = one(item, "identity", IDENTITY_PROMPT, style)
            clothing, cl_failed, cl_attempts = one(item, "clothing", CLOTHING_PROMPT, style)
            attempts = id_attempts + cl_attempts
            checks_failed = id_failed + cl_failed
            common = {"attempts": attempts, "retries": attempts - 2, "checks_failed": checks_failed}
            if identity and clothing:
                return {"ok": True, **common, "record": {
                    "path": item.key, "id_descriptions": {style["name"]: identity},
                    "clothes_descriptions": {style["name"]: clothing}}}
            return {"ok": False, **common, "failure": {"path": item.key, "style": style["name"],
                                                       "identity": identity or None, "clothing": clothing or None,
                                                       "checks_failed": checks_failed, "attempts": attempts}}

        return process


def add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "all")
    parser.add_argument("--styles", required=True, help="styles file written by reidbench data styles")
    add_vlm_arguments(parser, MAX_WORDS)


def run_describe(args: argparse.Namespace) -> int:
    from ..datasets import build_dataset
    from .styles import read_styles
    from .vlm import model_provenance

    check_vlm_arguments(args)
    styles = read_styles(args.styles)
    spec = DescribeSpec(vlm_spec(args), tuple((s["name"], s["prompt"], s["size"]) for s in styles),
                        retries=args.retries, max_words=args.max_words)
    dataset = build_dataset(args.dataset, args.root)
    items = collect_items(dataset, args.split)
    provenance = {"command": "reidbench data describe", "model": model_provenance(spec.vlm.model),
                  "prompt_sha256": {"identity": sha256_text(IDENTITY_PROMPT), "clothing": sha256_text(CLOTHING_PROMPT)},
                  "styles_sha256": sha256_text("\n".join(f"{n}\t{p}\t{s}" for n, p, s in spec.styles)),
                  **spec.vlm.record(), "checks": {"max_words": spec.max_words}, "retries": spec.retries}
    return annotate_to_jsonl("describe", dataset.name, items, spec, provenance, args)
