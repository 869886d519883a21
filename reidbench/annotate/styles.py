"""``reidbench data styles``: the writing styles of a dataset's texts, as style prompts
for ``data describe`` (BDAM, Sec. III-B: "we use the CLIP text encoder to embed
original descriptions and then cluster these style embeddings with DBSCAN").

Steps: the texts of the chosen kinds on the chosen split (every variant of every
image, deduplicated) are embedded with a CLIP text encoder of the project's backbones
(``--encoder synthetic``: the cached tiny CLIP; or a local Hugging Face CLIP folder with
its ``--preset``), L2-normalised, and clustered by ``--method``:

* ``dbscan`` (the paper's): scikit-learn ``DBSCAN(eps, min_samples, metric="cosine")``;
  points it calls noise get no style;
* ``kmeans`` (the paper's comparison): ``KMeans(--clusters)``;
* ``random`` (the paper's other comparison): ``--clusters`` groups drawn uniformly.

Decisions where the paper is silent:

* The paper writes its prompts by hand from the clusters ("Use a very detailed,
  descriptive style"). Here each cluster's prompt is written from measurable form
  features of its texts, so the step is reproducible: the median word count picks the
  adjective (<= 12 very terse, <= 25 concise, <= 45 moderately detailed, else very
  detailed and descriptive), and the form is either key-value pairs / bracketed
  attributes (when most texts have two or more of ``; | = : [``) or the median number of
  sentences. Three texts nearest the cluster's centre are kept as examples (in the
  file, not in the prompt, which should not carry another person's attributes).
* Default kinds: every text kind the split carries (a real text-to-image set has
  captions only; the synthetic sets also carry descriptions in known styles).
* Purity (the share of texts whose cluster's majority style is their own, noise
  excluded and counted apart) is measured over the texts whose style the dataset
  records (``Sample.texts`` triples with a non-empty style: the synthetic generator's
  ``terse`` / ``detailed`` / ``list``). Real datasets record none, and then no purity is
  printed.

Output (``--out``, default ``DSET/reidbench_styles.json`` beside the dataset)::

    {"styles": [{"name": "style0", "prompt": "Use a concise style: ...", "size": 812,
                 "stats": {...}, "examples": [...], "true_styles": {"terse": 800, ...}}],
     "noise": 3, "purity": 0.98, "provenance": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter

import numpy as np

__all__ = ["METHODS", "add_styles_arguments", "cluster", "purity", "read_styles", "run_styles", "style_prompt"]

METHODS = ("dbscan", "kmeans", "random")
_LIST_MARKS = (";", "|", "=", ":", "[")


def embed_texts(texts: list[str], encoder: str = "synthetic", preset: str = "tiny", batch_size: int = 256) -> np.ndarray:
    """L2-normalised CLIP text embeddings ``[N, D]`` (float32)."""
    import torch

    from ..backbones import build_clip

    model = build_clip(preset, pretrained=encoder).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            out.append(torch.nn.functional.normalize(model.encode_texts(texts[i:i + batch_size]).float(), dim=-1))
    return torch.cat(out).numpy().astype(np.float32)


def cluster(embeddings: np.ndarray, method: str = "dbscan", eps: float = 0.1, min_samples: int = 5,
            clusters: int = 3, seed: int = 0) -> np.ndarray:
    """Cluster labels per row (``-1``: DBSCAN noise)."""
    if method == "dbscan":
        from sklearn.cluster import DBSCAN

        return DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(embeddings)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=clusters, random_state=seed, n_init=10).fit_predict(embeddings)
    if method == "random":
        return np.random.default_rng(seed).integers(clusters, size=len(embeddings))
    raise ValueError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def purity(labels: np.ndarray, truth: list[str]) -> float | None:
    """Share of the labelled, non-noise texts in their cluster's majority true style
    (``truth[i]`` ``""``: style unknown, not counted); None when nothing counts."""
    groups: dict[int, Counter] = {}
    for label, style in zip(labels.tolist(), truth):
        if style and label >= 0:
            groups.setdefault(label, Counter())[style] += 1
    total = sum(sum(c.values()) for c in groups.values())
    return sum(max(c.values()) for c in groups.values()) / total if total else None


def _stats(texts: list[str]) -> dict:
    words = [len(t.split()) for t in texts]
    sentences = [max(1, len(re.findall(r"[.!?](?:\s|$)", t))) for t in texts]
    list_like = [sum(t.count(m) > 0 for m in _LIST_MARKS) >= 2 or t.count(";") + t.count("|") >= 2 for t in texts]
    return {"median_words": float(np.median(words)), "median_sentences": float(np.median(sentences)),
            "list_like": float(np.mean(list_like))}


def style_prompt(stats: dict) -> str:
    """A style instruction from a cluster's form features (module docstring)."""
    words = stats["median_words"]
    adjective = ("very terse" if words <= 12 else "concise" if words <= 25 else "moderately detailed"
                 if words <= 45 else "very detailed, descriptive")
    if stats["list_like"] > 0.5:
        form = "as a list of key-value pairs or bracketed attributes, not sentences"
    else:
        n = int(round(stats["median_sentences"]))
        form = f"in {n} sentence{'s' if n != 1 else ''}"
    return f"Use a {adjective} style: about {int(round(words))} words, {form}."


def _texts(dataset, split: str, kinds: list[str]) -> tuple[list[str], list[str]]:
    """Distinct texts of ``kinds`` on ``split`` and each one's recorded style ("" when
    unknown or when one text is recorded under several styles)."""
    from ..datasets.records import TEXT_KINDS

    unknown = [k for k in kinds if k not in TEXT_KINDS]
    if unknown:
        raise ValueError(f"--kinds: unknown {', '.join(map(repr, unknown))}; expected from {', '.join(TEXT_KINDS)}")
    if split not in dataset.splits:
        raise ValueError(f"--split {split!r}: {dataset.name} has splits {', '.join(dataset.splits)}")
    styles: dict[str, set[str]] = {}
    for sample in dataset.splits[split]:
        for kind, style, text in sample.texts:
            if kind in kinds:
                styles.setdefault(text, set()).add(style)
    texts = sorted(styles)
    return texts, [next(iter(styles[t])) if len(styles[t]) == 1 else "" for t in texts]


def add_styles_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", default=None)
    parser.add_argument("--split", default="train", help="split whose texts are clustered (default %(default)s)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated text kinds to cluster (default: every kind the split carries)")
    parser.add_argument("--method", default="dbscan", choices=METHODS)
    parser.add_argument("--eps", type=float, default=0.1, help="DBSCAN radius, cosine distance (default %(default)s)")
    parser.add_argument("--min-samples", type=int, default=5, help="DBSCAN core size (default %(default)s)")
    parser.add_argument("--clusters", type=int, default=3, help="clusters for kmeans / random (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="synthetic",
                        help="'synthetic' (the cached tiny CLIP) or a local Hugging Face CLIP folder")
    parser.add_argument("--preset", default="tiny", help="backbone preset of --encoder (tiny, vit-b16)")
    parser.add_argument("--out", default=None, help="styles file (default DSET/reidbench_styles.json)")


def run_styles(args: argparse.Namespace) -> int:
    from ..datasets import build_dataset

    if args.eps <= 0 or args.min_samples < 1 or args.clusters < 1:
        raise ValueError(f"--eps must be > 0, --min-samples and --clusters >= 1; got {args.eps}, {args.min_samples}, "
                         f"{args.clusters}")
    if args.encoder != "synthetic" and not os.path.isdir(os.path.expanduser(args.encoder)):
        raise ValueError(f"--encoder {args.encoder!r}: expected 'synthetic' or a local CLIP model folder")
    dataset = build_dataset(args.dataset, args.root)
    from ..datasets.records import TEXT_KINDS

    present = [k for k in TEXT_KINDS if any(s.texts_of(k) for s in dataset.splits.get(args.split, []))]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else present
    texts, truth = _texts(dataset, args.split, kinds)
    if len(texts) < 2:
        raise ValueError(f"{dataset.name} [{args.split}]: {len(texts)} text(s) of kinds {', '.join(kinds) or '(none)'}; "
                         "styles need a dataset with captions or descriptions (or a data.texts file's)")
    encoder = args.encoder if args.encoder == "synthetic" else os.path.abspath(os.path.expanduser(args.encoder))
    embeddings = embed_texts(texts, encoder, args.preset)
    labels = cluster(embeddings, args.method, args.eps, args.min_samples, args.clusters, args.seed)
    styles = []
    for index, label in enumerate(sorted(set(labels.tolist()) - {-1})):
        members = np.flatnonzero(labels == label)
        centre = embeddings[members].mean(0)
        nearest = members[np.argsort(-(embeddings[members] @ centre))[:3]]
        stats = _stats([texts[i] for i in members])
        true = Counter(truth[i] for i in members if truth[i])
        styles.append({"name": f"style{index}", "prompt": style_prompt(stats), "size": int(len(members)),
                       "stats": stats, "examples": [texts[i] for i in nearest],
                       "true_styles": dict(sorted(true.items()))})
    if not styles:
        raise ValueError(f"{args.method} found no cluster among {len(texts)} texts (all noise); raise --eps or lower "
                         f"--min-samples (now {args.eps}, {args.min_samples})")
    score = purity(labels, truth)
    noise = int((labels == -1).sum())
    out = args.out or os.path.join(dataset.root, "reidbench_styles.json")
    result = {"styles": styles, "noise": noise, "purity": score, "provenance": {
        "command": "reidbench data styles", "dataset": dataset.name, "split": args.split, "kinds": kinds,
        "texts": len(texts), "encoder": encoder, "preset": args.preset, "method": args.method,
        "eps": args.eps, "min_samples": args.min_samples, "clusters": args.clusters, "seed": args.seed}}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(f"styles {dataset.name} [{args.split}, {', '.join(kinds)}]: {len(texts)} texts -> {len(styles)} "
          f"{args.method} clusters, {noise} noise -> {out}")
    for style in styles:
        true = ", ".join(f"{k} {v}" for k, v in style["true_styles"].items())
        print(f"  {style['name']:8s} {style['size']:6d}  {style['prompt']}" + (f"  [true: {true}]" if true else ""))
    labelled = sum(1 for t in truth if t)
    if score is not None:
        print(f"purity against the recorded styles: {score:.3f} ({labelled} texts with a recorded style, "
              f"{sum(1 for t, l in zip(truth, labels) if t and l == -1)} of them noise)")
    return 0


def read_styles(path: str) -> list[dict]:
    """The styles of a ``data styles`` file, checked: ``[{"name", "prompt", "size"}, ...]``."""
    where = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(where):
        raise ValueError(f"--styles {path!r} is not a file; make one with reidbench data styles")
    try:
        with open(where, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"--styles {where}: not valid JSON ({err.msg})") from None
    styles = data.get("styles") if isinstance(data, dict) else None
    good = isinstance(styles, list) and styles and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"] and isinstance(s.get("prompt"), str)
        and s["prompt"].strip() and isinstance(s.get("size"), int) and s["size"] > 0 for s in styles)
    if not good:
        raise ValueError(f"--styles {where}: expected {{\"styles\": [{{\"name\": str, \"prompt\": str, \"size\": "
                         "int > 0}, ...]}} as written by reidbench data styles")
    names = [s["name"] for s in styles]
    if len(set(names)) != len(names):
        raise ValueError(f"--styles {where}: style names repeat ({', '.join(names)})")
    return styles
