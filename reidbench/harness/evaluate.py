"""The evaluation engine: CMC, mAP and mINP under every ReID protocol, streamed.

Definitions (docs/design.md, "Evaluation"): they are torchreid's ``eval_market1501``
for ``standard``, CAL's ``evaluate_with_clothes`` for ``cc`` / ``same_clothes`` and
IRRA's ``rank`` for text-to-image, so a number from here equals theirs on the same
features. Per query, the gallery is ranked by distance (smaller is closer) and
split into *positives*, *junk* (removed from the ranking as if absent) and
negatives; with ``r_1 < ... < r_n`` the ranks of the ``n`` positives among the
non-junk items:

* CMC at rank ``k`` = 1 if ``r_1 <= k`` (first-hit curve, clipped at 1);
* AP = ``mean_i(i / r_i)`` (precision at each positive, not interpolated);
* INP = ``n / r_n`` (Ye et al.'s inverse negative penalty; mINP is its mean);
* a query without any positive is skipped (``standard`` / ``cc`` /
  ``same_clothes``; torchreid and CAL do the same) and the means run over the
  valid queries. If no query is valid the engine raises and says why, where other
  toolkits assert or print nothing.

Protocols (every gallery item with the query's pid is a positive or junk):

==============  =========================================  ==================================================
protocol        positive (same pid and ...)                junk (same pid and ...)
==============  =========================================  ==================================================
standard        other camera                               same camera
cc              other camera and other clothes             same camera or same clothes
same_clothes    other camera and same clothes              same camera or other clothes
(t2i)           (any)                                      (none; no query is skipped)
==============  =========================================  ==================================================

Ties in distance are broken by gallery index (the earlier gallery item ranks
first): the order ``np.argsort(d, kind="stable")`` gives. torchreid and CAL call
``np.argsort`` with its default introsort, whose order among equal distances is
unspecified; with the stable order the result is defined, and the brute-force
and streaming paths agree exactly, ties included.

How it is computed: torchreid and fast-reid argsort the whole Q x G matrix
(MSMT17: 3.8 GB of distances plus 7.7 GB of int64 indices). Here query rows are
streamed in chunks, and a positive's rank is found by *counting*: the order
after a query's last positive does not matter, so per row only the gallery items
no farther than that row's farthest positive are kept (one comparison and one
``nonzero`` over the chunk); only those candidates are sorted, by (row,
distance, gallery index), and a positive's rank is its place among them minus
the junk ahead of it. On the MSMT17-shaped benchmark (``bench/eval_speed.py``,
mAP ~64 %) that is ~390 candidates per query instead of 82,161; on
unrealistically poor features it degrades gracefully to sorting whole rows. The
matrix product itself then dominates the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PROTOCOLS",
    "RankResult",
    "flip_average",
    "l2_normalize",
    "pairwise_distance",
    "prepare_distance",
    "rank_metrics",
    "rank_metrics_from_features",
    "retrieval_metrics",
    "sample_visibility",
    "visibility_curve",
    "visibility_metrics",
]

PROTOCOLS = ("standard", "cc", "same_clothes")
Protocol = Literal["standard", "cc", "same_clothes"]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]
Features = Union[np.ndarray, torch.Tensor, Mapping[str, Any]]
MetricFn = Callable[[Any, Any], torch.Tensor]

# Rows x gallery elements per streamed chunk: 2**25 float32 distances = 128 MiB,
# plus a bool mask of the same shape; small enough for a laptop, large enough
# that the matrix multiply runs at full speed.
_CHUNK_ELEMENTS = 2**25


# ----------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RankResult:
    """Metrics as fractions in [0, 1].

    ``cmc[k-1]`` is the fraction of valid queries whose first positive is within
    rank ``k``; its length is ``max_rank`` even when the gallery is smaller (the
    curve is then flat at its last value, which is 1). ``num_valid`` counts the
    queries with at least one positive, ``num_queries`` all of them. ``query_ap`` and
    ``query_first`` hold each query's AP and the rank of its first positive (NaN for a
    skipped query), for metrics over query subsets (:func:`visibility_curve`).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_queries: int = 0
    query_ap: np.ndarray | None = field(default=None, repr=False, compare=False)
    query_first: np.ndarray | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, float]:
        """``{"R1", "R5", "R10", "mAP", "mINP"}`` in percent. A rank beyond
        ``len(cmc)`` (``max_rank`` below 10) is left out rather than guessed."""
        out = {f"R{k}": 100.0 * float(self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)}
        out["mAP"] = 100.0 * self.mAP
        out["mINP"] = 100.0 * self.mINP
        return out


# ----------------------------------------------------------------------------
# Occlusion robustness: metrics over query subsets binned by visible body fraction
# ----------------------------------------------------------------------------
def sample_visibility(samples: Sequence[Any], root: str | None) -> np.ndarray | None:
    """Each sample's visible body fraction (the synthetic generator's ``visible_fraction``
    attribute in ``reidbench_meta.jsonl``, 1 = unoccluded), or None when ``root`` holds no
    such record for one of them (real benchmarks annotate no visibility)."""
    import os

    from ..datasets.adapters._common import read_side_car_meta

    if not root or not samples:
        return None
    base = os.path.abspath(os.path.expanduser(str(root)))
    folders = [base] + [os.path.join(base, d) for d in sorted(os.listdir(base))
                        if os.path.isdir(os.path.join(base, d))] if os.path.isdir(base) else []
    found: dict[str, float] = {}
    for folder in folders:
        for rel, record in read_side_car_meta(folder).items():
            fraction = (record.get("attributes") or {}).get("visible_fraction")
            if fraction is not None:
                found[os.path.normpath(os.path.join(folder, rel))] = float(fraction)
    if not found:
        return None
    values = [found.get(os.path.normpath(os.path.abspath(s.path))) for s in samples]
    return None if any(v is None for v in values) else np.asarray(values, dtype=np.float64)


def visibility_curve(result: RankResult, visible: np.ndarray, bins: int = 4) -> list[dict[str, float]]:
    """mAP and R1 (percent) over the valid queries of ``bins`` equal-count bins of the
    queries' visible fraction ``visible [Q]``, least visible first: ``[{"from", "to",
    "visible_mean", "queries", "mAP", "R1"}, ...]``. Each query keeps the AP it has in the
    whole evaluation, so the bins' query-weighted mean is the overall mAP. The edges are
    quantiles of the queries' fractions: the same for every method on one benchmark."""
    if result.query_ap is None or result.query_first is None:
        raise ValueError("visibility_curve needs a RankResult with per-query AP (query_ap / query_first)")
    visible = np.asarray(visible, dtype=np.float64)
    if visible.shape != result.query_ap.shape:
        raise ValueError(f"visibility_curve: {visible.shape[0]} visible fractions for {result.query_ap.shape[0]} "
                         "queries")
    if bins < 1:
        raise ValueError(f"visibility bins must be >= 1, got {bins}")
    valid = ~np.isnan(result.query_ap)
    order = np.argsort(visible[valid], kind="stable")
    ap, first, vis = result.query_ap[valid][order], result.query_first[valid][order], visible[valid][order]
    curve = []
    for part in np.array_split(np.arange(len(vis)), min(bins, len(vis))):
        if len(part) == 0:
            continue
        curve.append({"from": float(vis[part[0]]), "to": float(vis[part[-1]]),
                      "visible_mean": float(vis[part].mean()), "queries": float(len(part)),
                      "mAP": 100.0 * float(ap[part].mean()), "R1": 100.0 * float((first[part] <= 1).mean())})
    return curve


def visibility_metrics(name: str, curve: list[dict[str, float]]) -> dict[str, float]:
    """``test/<name>/visibility/bin<i>/<key>`` for every bin of :func:`visibility_curve`
    (five path parts, so the leaderboard's ``test/<protocol>/<metric>`` columns ignore them)."""
    return {f"test/{name}/visibility/bin{i}/{key}": value for i, row in enumerate(curve) for key, value in row.items()}


# ----------------------------------------------------------------------------
# Test-time helpers
# ----------------------------------------------------------------------------
def l2_normalize(x: Any, dim: int = -1, eps: float = 1e-12) -> Any:
    """L2-normalise along ``dim`` (torch's ``F.normalize``; a zero vector stays
    zero). numpy in, numpy out; a dict is normalised entry by entry for its
    floating tensors."""
    if isinstance(x, Mapping):
        return {k: l2_normalize(v, dim, eps) if _is_float(v) else v for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return F.normalize(torch.from_numpy(x), p=2.0, dim=dim, eps=eps).numpy()
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def flip_average(embed_fn: Callable[[Any], Any], images: Any,
                 flip_keys: Sequence[str] = ("image", "mask", "parsing")) -> Any:
    """Average the embeddings of a batch and of its horizontal mirror.

    ``images`` is an image tensor ``[B, C, H, W]`` or a batch dict; in a dict the
    entries named in ``flip_keys`` are mirrored along their last axis, and the
    ``parsing`` map also swaps its LIP left/right labels (a mirrored left arm is
    a right arm), as the training flip does. ProFD part masks are horizontal
    bands, so part visibility does not change.

    The mean of the two, not their sum as in CLIP-ReID's ``feat + feat_flip``:
    rankings are identical for cosine and Euclidean distances (a common scale),
    and the mean keeps feature norms comparable to single-pass ones. For a dict
    output every floating entry is averaged; non-floating entries (e.g. part
    visibility flags) must agree between the two passes, else this raises.
    """
    out = embed_fn(images)
    flipped = embed_fn(_flip_batch(images, flip_keys))
    if isinstance(out, Mapping):
        merged = {}
        for k, v in out.items():
            w = flipped[k]
            if _is_float(v):
                merged[k] = (v + w) / 2
            elif torch.equal(torch.as_tensor(v), torch.as_tensor(w)):
                merged[k] = v
            else:
                raise ValueError(
                    f"flip_average: output {k!r} is not floating and differs between the image and its mirror, "
                    "so it cannot be averaged; make it flip-invariant or evaluate without flipping"
                )
        return merged
    return (out + flipped) / 2


def _flip_batch(images: Any, flip_keys: Sequence[str]) -> Any:
    if isinstance(images, torch.Tensor):
        return images.flip(-1)
    if not isinstance(images, Mapping):
        raise TypeError(f"flip_average: expected an image tensor or a batch dict, got {type(images).__name__}")
    from ..datasets.transforms import LIP_FLIP_PAIRS

    out = dict(images)
    for key in flip_keys:
        v = images.get(key)
        if not isinstance(v, torch.Tensor) or v.dim() < 2:
            continue
        v = v.flip(-1)
        if key == "parsing":
            lut = torch.arange(max(256, int(v.max()) + 1), device=v.device)
            for left, right in LIP_FLIP_PAIRS:
                lut[left], lut[right] = right, left
            v = lut[v.long()].to(v.dtype)
        out[key] = v
    return out


# ----------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------
def _to_distance(values: torch.Tensor, kind: str) -> torch.Tensor:
    """The engine works on the raw values a metric produces and converts only
    the candidates it keeps (two passes fewer over each chunk): ``kind`` is
    "distance" (as is), "one_minus" (1 - v: cosine distance from a cosine
    similarity) or "negated" (-v: IRRA's descending similarity)."""
    if kind == "distance":
        return values
    if kind == "one_minus":
        return 1.0 - values  # bit-identical to torchreid's ``1 - mm(...)``
    return -values


class _BuiltinScorer:
    """Cosine or squared-Euclidean values of query rows against the gallery, with
    the per-gallery work (normalising, squared norms) done once."""

    def __init__(self, gallery: torch.Tensor, metric: str, cosine_kind: str = "one_minus") -> None:
        if metric == "cosine":
            self.g, self.gg, self.kind = F.normalize(gallery, p=2.0, dim=1), None, cosine_kind
        elif metric == "euclidean":
            self.g, self.gg, self.kind = gallery, gallery.pow(2).sum(1), "distance"
        else:
            raise ValueError(f"metric must be 'cosine', 'euclidean' or a callable (query, gallery) -> distances, "
                             f"got {metric!r}")

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        q = q.to(device=self.g.device, dtype=self.g.dtype)
        if self.gg is None:
            return torch.mm(F.normalize(q, p=2.0, dim=1), self.g.T)
        return (q.pow(2).sum(1, keepdim=True) + self.gg[None, :]).addmm_(q, self.g.T, beta=1, alpha=-2)


def _callable_values(metric: MetricFn, gallery: Any) -> Callable[[Any], torch.Tensor]:
    return lambda q: metric(q, gallery)


def prepare_distance(gallery: Features, metric: str | MetricFn = "cosine") -> Callable[[Any], torch.Tensor]:
    """Return ``fn(query_chunk) -> [q, G]`` distances to ``gallery``, with the
    per-gallery work (normalising, squared norms) done once.

    * ``"cosine"``: ``1 - <q/|q|, g/|g|>``, torchreid's ``cosine_distance``
      (equal directions give 0, opposite ones 2).
    * ``"euclidean"``: the *squared* Euclidean distance
      ``|q|^2 + |g|^2 - 2 q.g``, torchreid's ``euclidean_squared_distance``, formed
      with the same ``addmm_``; it ranks exactly like the Euclidean distance and
      skips a square root per pair. Features are used as given (normalise them
      first with :func:`l2_normalize` if the method's protocol does).
    * a callable ``metric(query_chunk, gallery) -> [q, G]`` (smaller is closer),
      e.g. a method's own ``distance``; features may then be dicts of tensors.

    Row-chunked matrix products are not bit-identical to one big product (BLAS
    picks its blocking by shape), so anything that must reproduce the engine's
    distances exactly (the benchmark's reference) computes them through this
    function with the same query chunks.
    """
    if callable(metric):
        return _callable_values(metric, gallery)
    scorer = _BuiltinScorer(_float_tensor(gallery, "gallery_feats"), metric)
    return lambda q: _to_distance(scorer(torch.as_tensor(q)), scorer.kind)


def pairwise_distance(query: Features, gallery: Features, metric: str | MetricFn = "cosine") -> torch.Tensor:
    """The full ``[Q, G]`` distance matrix (see :func:`prepare_distance`); for small problems."""
    q = query if callable(metric) else _float_tensor(query, "query_feats")
    return prepare_distance(gallery, metric)(q)


# ----------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------
def rank_metrics(
    distmat: np.ndarray | torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    q_clothes: ArrayLike | None = None,
    g_clothes: ArrayLike | None = None,
    protocol: Protocol = "standard",
    max_rank: int = 50,
) -> RankResult:
    """CMC / mAP / mINP from a precomputed ``[Q, G]`` distance matrix (smaller is
    closer). Rows are evaluated in chunks by the same counting engine as
    :func:`rank_metrics_from_features`, so the matrix is never argsorted or
    copied whole."""
    if not isinstance(distmat, (np.ndarray, torch.Tensor)):
        distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {tuple(distmat.shape)}")
    dm = torch.from_numpy(distmat) if isinstance(distmat, np.ndarray) else distmat.detach()
    if not dm.is_floating_point():
        dm = dm.double()
    num_q, num_g = dm.shape
    ev = _Evaluator(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol, max_rank,
                    num_q, num_g, dm.device, f"distmat has {num_q} rows (queries)",
                    f"distmat has {num_g} columns (gallery)")
    step = _chunk_rows(num_g, None)
    for start in range(0, num_q, step):
        d = dm[start:start + step]
        if d.dtype in (torch.float16, torch.bfloat16):
            d = d.float()
        _check_finite_distances(d, start, "distmat")
        ev.add_values(start, d.contiguous(), "distance")
    return ev.result()


def rank_metrics_from_features(
    query_feats: Features,
    gallery_feats: Features,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    q_clothes: ArrayLike | None = None,
    g_clothes: ArrayLike | None = None,
    protocol: Protocol = "standard",
    metric: str | MetricFn = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """The same numbers as :func:`rank_metrics` on ``pairwise_distance(query,
    gallery, metric)``, without ever holding the ``[Q, G]`` matrix.

    Features are numpy arrays or torch tensors ``[N, D]``; the work runs on the
    gallery features' device (CUDA when they are there). With a callable
    ``metric`` they may also be dicts of tensors sharing their first dimension
    (e.g. part features plus visibility): each query chunk is the dict with every
    entry sliced, and the gallery dict is passed whole. ``chunk_size`` is the
    number of query rows per chunk (default: 512, fewer for galleries over 65,536).
    """
    query, gallery, num_q, num_g = _features_pair(query_feats, gallery_feats, metric, "query_feats", "gallery_feats")
    device = _device_of(gallery)
    ev = _Evaluator(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol, max_rank,
                    num_q, num_g, device, f"query_feats has {num_q} rows", f"gallery_feats has {num_g} rows")
    if callable(metric):
        _stream(ev, query, _callable_values(metric, gallery), "distance", num_q, num_g, device, chunk_size, True)
    else:
        scorer = _BuiltinScorer(gallery, metric)
        _stream(ev, query, scorer, scorer.kind, num_q, num_g, device, chunk_size, False)
    return ev.result()


def retrieval_metrics(
    text_feats: Features,
    image_feats: Features,
    text_pids: ArrayLike,
    image_pids: ArrayLike,
    metric: str | MetricFn = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> RankResult:
    """Text-to-image retrieval metrics, IRRA's definitions: every caption is a
    query against every test image; positives are the images of the caption's
    pid; there is no junk and no skipped query (a caption whose pid has no image
    is an error, since IRRA's AP would be 0/0).

    With ``metric="cosine"`` the ranking is by similarity ``<t/|t|, i/|i|>``,
    descending, exactly as IRRA sorts it (not by ``1 - similarity``, which can
    round two different similarities to one distance). Streams query chunks like
    :func:`rank_metrics_from_features`.
    """
    text, image, num_q, num_g = _features_pair(text_feats, image_feats, metric, "text_feats", "image_feats")
    device = _device_of(image)
    zeros_q, zeros_g = np.zeros(num_q, np.int64), np.zeros(num_g, np.int64)
    ev = _Evaluator(text_pids, image_pids, zeros_q, zeros_g, None, None, "t2i", max_rank, num_q, num_g, device,
                    f"text_feats has {num_q} rows", f"image_feats has {num_g} rows",
                    names=("text_pids", "image_pids", "", ""))
    if callable(metric):
        _stream(ev, text, _callable_values(metric, image), "distance", num_q, num_g, device, chunk_size, True)
    else:
        scorer = _BuiltinScorer(image, metric, cosine_kind="negated")
        _stream(ev, text, scorer, scorer.kind, num_q, num_g, device, chunk_size, False)
    return ev.result()


def _features_pair(query_feats: Any, gallery_feats: Any, metric: Any, q_name: str, g_name: str):
    if callable(metric):
        num_q, num_g = _num_rows(query_feats, q_name), _num_rows(gallery_feats, g_name)
        return _to_torch_features(query_feats, q_name), _to_torch_features(gallery_feats, g_name), num_q, num_g
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine', 'euclidean' or a callable, got {metric!r}")
    query, gallery = _float_tensor(query_feats, q_name), _float_tensor(gallery_feats, g_name)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"{q_name} have dimension {query.shape[1]} but {g_name} have {gallery.shape[1]}")
    if metric == "euclidean":
        _check_euclidean_range(query, gallery)
    return query, gallery, query.shape[0], gallery.shape[0]


# ----------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------
def _stream(ev: "_Evaluator", query: Any, values_fn: Callable[[Any], torch.Tensor], kind: str, num_q: int,
            num_g: int, device: torch.device, chunk_size: int | None, check: bool) -> None:
    """Feed the evaluator one query chunk's ``[c, G]`` values at a time. Built-in
    metrics on finite, range-checked features give finite values; a user's
    metric (``check``) is checked chunk by chunk."""
    step = _chunk_rows(num_g, chunk_size)
    for start in range(0, num_q, step):
        q = _slice_rows(query, start, start + step)
        q = {k: v.to(device) for k, v in q.items()} if isinstance(q, dict) else q.to(device)
        v = values_fn(q)
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        rows = min(step, num_q - start)
        if tuple(v.shape) != (rows, num_g):
            raise ValueError(f"the distance metric returned shape {tuple(v.shape)} for {rows} query rows "
                             f"against {num_g} gallery rows; expected ({rows}, {num_g})")
        if v.dtype in (torch.float16, torch.bfloat16) or not v.is_floating_point():
            v = v.float()
        if check:
            _check_finite_distances(v, start, "the distance metric's output")
        ev.add_values(start, v.to(device).contiguous(), kind)


def _masked_extreme(values: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Row-wise max (or min) over ``mask``; rows with nothing get -inf (+inf),
    which selects nothing."""
    fill = -math.inf if largest else math.inf
    filled = torch.where(mask, values, torch.full((), fill, dtype=values.dtype, device=values.device))
    return filled.amax(1) if largest else filled.amin(1)


def _one_minus_slack(s: torch.Tensor) -> torch.Tensor:
    """``fl(1 - s) <= fl(1 - s_min)`` only implies ``s >= s_min - 1 ulp``: a few ulps of
    slack (zero where ``s`` is infinite, i.e. rows without positives)."""
    eps = torch.finfo(s.dtype).eps
    return torch.where(torch.isfinite(s), 4 * eps * (1 + s.abs()), torch.zeros_like(s))


def _chunk_rows(num_g: int, chunk_size: int | None) -> int:
    """Query rows per chunk: at most 512, and at most 2**25 values."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of query rows, got {chunk_size}")
        return int(chunk_size)
    return max(1, min(512, _CHUNK_ELEMENTS // max(num_g, 1)))


@dataclass
class _Chunk:
    """A query chunk's pid groups: ``same [c, W]`` gallery indices (padded,
    ``in_group`` marks real ones), their ``pos`` / ``junk`` masks, ``n_pos``."""

    start: int
    c: int
    in_group: torch.Tensor
    same: torch.Tensor
    pos: torch.Tensor
    junk: torch.Tensor
    n_pos: torch.Tensor


class _Evaluator:
    """Validates the labels once, keeps the gallery grouped by pid on the device,
    and accumulates per-query AP / INP / first-hit rank over streamed chunks."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, protocol: str, max_rank: int,
                 num_q: int, num_g: int, device: torch.device, q_what: str, g_what: str,
                 names: tuple[str, str, str, str] = ("q_pids", "g_pids", "q_camids", "g_camids")) -> None:
        if protocol not in PROTOCOLS + ("t2i",):
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
        if num_q == 0 or num_g == 0:
            raise ValueError(f"nothing to evaluate: {num_q} queries and {num_g} gallery items")
        self.protocol, self.max_rank, self.num_q, self.num_g = protocol, int(max_rank), num_q, num_g
        qp = _labels(q_pids, names[0], num_q, q_what)
        gp = _labels(g_pids, names[1], num_g, g_what)
        qc = _labels(q_camids, names[2], num_q, q_what)
        gc = _labels(g_camids, names[3], num_g, g_what)
        if protocol in ("cc", "same_clothes"):
            if q_clothes is None or g_clothes is None:
                missing = " and ".join(n for n, v in (("q_clothes", q_clothes), ("g_clothes", g_clothes)) if v is None)
                raise ValueError(f"protocol {protocol!r} needs clothes ids for query and gallery; {missing} not given")
            qk = _labels(q_clothes, "q_clothes", num_q, q_what)
            gk = _labels(g_clothes, "g_clothes", num_g, g_what)
            unknown = [f"{int((a < 0).sum())} {n}" for n, a in (("query", qk), ("gallery", gk)) if (a < 0).any()]
            if unknown:
                raise ValueError(f"protocol {protocol!r} needs known clothes ids, but {' and '.join(unknown)} items "
                                 "have a negative (unknown) clothes id")
        else:
            qk, gk = np.zeros(num_q, np.int64), np.zeros(num_g, np.int64)
        self.q_pids_np, self.q_cams_np, self.g_cams_np = qp, qc, gc
        to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        self.q_pids, self.q_cams, self.q_clothes = to(qp), to(qc), to(qk)
        self.g_cams, self.g_clothes = to(gc), to(gk)
        # The gallery grouped by pid; the stable sort keeps each group in gallery order.
        order = np.argsort(gp, kind="stable")
        uniq, starts, counts = np.unique(gp[order], return_index=True, return_counts=True)
        self.g_order, self.g_uniq, self.g_starts, self.g_counts = to(order), to(uniq), to(starts), to(counts)
        self.ap = np.zeros(num_q, np.float64)
        self.inp = np.zeros(num_q, np.float64)
        self.first = np.zeros(num_q, np.int64)
        self.n_pos = np.zeros(num_q, np.int64)
        self.n_same = np.zeros(num_q, np.int64)  # gallery items sharing the query's pid
        self.filled = 0

    def _classify(self, valid, same_cam, same_clothes):
        """(positive, junk) masks for gallery items that share the query's pid."""
        p = self.protocol
        if p == "standard":
            return valid & ~same_cam, valid & same_cam
        if p == "cc":
            return valid & ~same_cam & ~same_clothes, valid & (same_cam | same_clothes)
        if p == "same_clothes":
            return valid & ~same_cam & same_clothes, valid & (same_cam | ~same_clothes)
        return valid, torch.zeros_like(valid)  # t2i: every match counts, nothing is junk

    def begin_chunk(self, start: int, c: int, device: torch.device) -> "_Chunk | None":
        """Find, for query rows ``start:start+c``, the gallery items sharing their
        pid (padded to the largest group, in gallery order) and split them into
        positives and junk. ``None`` when no row has a positive."""
        G = self.num_g
        rows = slice(start, start + c)
        qp, qc, qk = self.q_pids[rows], self.q_cams[rows], self.q_clothes[rows]
        u = torch.searchsorted(self.g_uniq, qp).clamp_(max=len(self.g_uniq) - 1)
        cnt = torch.where(self.g_uniq[u] == qp, self.g_counts[u], torch.zeros_like(u))
        self.n_same[rows] = cnt.cpu().numpy()
        self.filled += c
        width = int(cnt.max())
        if width == 0:
            return None
        ar = torch.arange(width, device=device)
        in_group = ar[None, :] < cnt[:, None]
        same = self.g_order[(self.g_starts[u][:, None] + ar[None, :]).clamp_(max=G - 1)]
        pos, junk = self._classify(in_group, self.g_cams[same] == qc[:, None], self.g_clothes[same] == qk[:, None])
        n_pos = pos.sum(1)
        if not bool(n_pos.any()):
            return None
        return _Chunk(start, c, in_group, same, pos, junk, n_pos)

    def add_values(self, start: int, values: torch.Tensor, kind: str) -> None:
        """Evaluate query rows ``start:start+c`` from their ``[c, G]`` values
        (distances, or similarities that ``kind`` turns into distances)."""
        c, G = values.shape
        chunk = self.begin_chunk(start, c, values.device)
        if chunk is None:
            return
        v_same = values.gather(1, chunk.same)
        # Candidates: only items no farther than the row's farthest positive can
        # precede a positive (a row without positives selects nothing).
        if kind == "distance":
            select = values <= _masked_extreme(v_same, chunk.pos, largest=True)[:, None]
        else:
            s_min = _masked_extreme(v_same, chunk.pos, largest=False)
            if kind == "one_minus":
                s_min = s_min - _one_minus_slack(s_min)
            select = values >= s_min[:, None]
        flat = select.view(-1).nonzero().squeeze(1)  # row-major: within a row, gallery order
        self.finish_chunk(chunk, flat, _to_distance(values.view(-1).index_select(0, flat), kind))

    def finish_chunk(self, chunk: "_Chunk", flat: torch.Tensor, cand_d: torch.Tensor) -> None:
        """Rank the positives of a chunk from its candidates: ``flat`` (row * G +
        gallery index, ascending) and their distances ``cand_d``. Every gallery
        item not farther than its row's farthest positive must be a candidate;
        extra candidates farther than that are harmless."""
        c, G, dev = chunk.c, self.num_g, flat.device
        rows_ids = torch.arange(c, device=dev)[:, None]
        # 1. Sort the candidates by (row, distance), ties in gallery order, and
        #    note where each lands and where each row starts.
        cand_row = torch.div(flat, G, rounding_mode="floor")
        perm = _row_value_order(cand_row, cand_d)
        landed = torch.empty_like(perm)
        landed[perm] = torch.arange(len(perm), device=dev)
        per_row = torch.bincount(cand_row, minlength=c)
        row_start = per_row.cumsum(0) - per_row
        # 2. The pid group's distances, looked up among the candidates; a member
        #    that is not a candidate lies beyond every positive (+inf will do).
        same_flat = rows_ids * G + chunk.same
        slot = torch.searchsorted(flat, same_flat).clamp_(max=max(len(flat) - 1, 0))
        found = chunk.in_group & (flat[slot] == same_flat) if len(flat) else torch.zeros_like(chunk.in_group)
        if not bool(found[chunk.pos].all()):
            raise RuntimeError("internal error: a positive is missing from its query's candidates")
        inf = torch.full((), math.inf, dtype=cand_d.dtype, device=dev)
        d_same = torch.where(found, cand_d[slot], inf)
        # 3. In (distance, gallery index) order, the pid group gives each positive
        #    its ordinal among positives and the junk ahead of it ...
        order = torch.sort(d_same, dim=1, stable=True).indices
        pos_o, junk_o, slot_o = chunk.pos.gather(1, order), chunk.junk.gather(1, order), slot.gather(1, order)
        ordinal = pos_o.long().cumsum(1)
        junk_ahead = junk_o.long().cumsum(1)
        # ... and the candidates its place in the row, junk included.
        pos_rows = rows_ids.expand_as(pos_o)[pos_o]
        place = landed.index_select(0, slot_o[pos_o]) - row_start.index_select(0, pos_rows) + 1
        rank = torch.zeros_like(ordinal)
        rank[pos_o] = place
        rank = rank - junk_ahead  # rank among non-junk items (junk removed as if absent)
        # 4. Per query: AP = mean(ordinal / rank), INP = n / rank of the last positive.
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        ap_sum = torch.where(pos_o, ordinal.double() / rank.clamp(min=1).double(), zero).sum(1)
        last = torch.where(pos_o, rank, torch.zeros_like(rank)).amax(1)
        first = torch.where(pos_o, rank, torch.full_like(rank, G + 1)).amin(1)
        n = chunk.n_pos.cpu().numpy()
        ok = n > 0
        ap_sum, last, first = ap_sum.cpu().numpy(), last.cpu().numpy(), first.cpu().numpy()
        rows = slice(chunk.start, chunk.start + c)
        self.n_pos[rows] = n
        ap_rows, inp_rows, first_rows = self.ap[rows], self.inp[rows], self.first[rows]  # views
        ap_rows[ok] = ap_sum[ok] / n[ok]
        inp_rows[ok] = n[ok] / last[ok]
        first_rows[ok] = first[ok]

    def result(self) -> RankResult:
        assert self.filled == self.num_q, "internal: not every query row was evaluated"
        valid = self.n_pos > 0
        num_valid = int(valid.sum())
        if self.protocol == "t2i" and num_valid < self.num_q:
            bad = np.flatnonzero(~valid)
            raise ValueError(
                f"text-to-image evaluation has no skipped queries, but {len(bad)} of {self.num_q} captions have no "
                f"image of their pid among the {self.num_g} test images (e.g. caption {bad[0]}, pid "
                f"{self.q_pids_np[bad[0]]}); the text and image splits must cover the same identities"
            )
        if num_valid == 0:
            raise ValueError(self._no_valid_query_message())
        ranks = np.arange(1, self.max_rank + 1)
        cmc = (self.first[valid][:, None] <= ranks[None, :]).sum(0) / num_valid
        return RankResult(cmc=cmc.astype(np.float64), mAP=float(np.mean(self.ap[valid])),
                          mINP=float(np.mean(self.inp[valid])), num_valid=num_valid, num_queries=self.num_q,
                          query_ap=np.where(valid, self.ap, np.nan),
                          query_first=np.where(valid, self.first.astype(np.float64), np.nan))

    def _no_valid_query_message(self) -> str:
        no_match = int((self.n_same == 0).sum())
        only_junk = self.num_q - no_match
        rule = {
            "standard": "gallery items with the query's pid AND camera are junk (removed)",
            "cc": "gallery items with the query's pid and its camera OR its clothes are junk (removed)",
            "same_clothes": "gallery items with the query's pid and its camera OR other clothes are junk (removed)",
        }[self.protocol]
        msg = (f"no valid query under protocol {self.protocol!r}: none of the {self.num_q} queries has a positive "
               f"gallery item. {no_match} queries have no gallery item of their pid at all; {only_junk} have "
               f"matches, but every one of them is junk ({rule}).")
        cams = np.unique(np.concatenate([self.q_cams_np, self.g_cams_np]))
        if len(cams) == 1:
            msg += (f" Every query and gallery item has camera id {cams[0]}: camera ids were probably not parsed "
                    "(parse them from the file's basename, e.g. Market-1501 '0001_c1s1_...' -> camera 1).")
        elif only_junk:
            msg += " Check that query and gallery camera ids come from the same parser and convention."
        if no_match == self.num_q:
            msg += " Check that query and gallery pids use the same labelling (test pids must not be relabelled)."
        return msg


def _row_value_order(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by (row, value), stable: equal keys keep their input
    order (here: gallery order).

    float32 values map to order-preserving 32-bit integers packed under the row
    into one int64 key: one integer sort, which torch does faster than a float
    sort. Wider floats take two stable sorts (value, then row).
    """
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    if values.dtype == torch.float32:
        key = _ordered_bits(values).to(torch.int64).add_(2**31).add_(rows << 32)  # low 32 bits in [0, 2**32)
        return torch.sort(key, stable=True).indices
    by_value = torch.sort(_ordered_bits(values), stable=True).indices
    return by_value[torch.sort(rows[by_value], stable=True).indices]


def _ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """Signed integers in the same order as the floats (IEEE sign-magnitude
    turned two's complement); ``+ 0.0`` first folds -0.0 into +0.0 so the two
    zeros stay tied, as they are as floats."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}[values.dtype]
    bits = (values + 0.0).view(ints)
    return torch.where(bits < 0, bits ^ torch.iinfo(ints).max, bits)


# ----------------------------------------------------------------------------
# Input checking and conversion
# ----------------------------------------------------------------------------
def _labels(x: ArrayLike | None, name: str, expected: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if len(a) != expected:
        raise ValueError(f"{name} has {len(a)} entries but {what}")
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{name} must hold integer ids, got dtype {a.dtype}")


def _is_float(v: Any) -> bool:
    return (isinstance(v, torch.Tensor) and v.is_floating_point()) or (
        isinstance(v, np.ndarray) and v.dtype.kind == "f")


def _float_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, Mapping):
        raise TypeError(f"{name} is a dict; dict features need a callable metric that knows how to compare them")
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_items, dim], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    _check_finite_features(t, name)
    return t.detach()


def _to_torch_features(x: Any, name: str) -> Any:
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.as_tensor(v)
            if t.is_floating_point():
                _check_finite_features(t, f"{name}[{k!r}]")
            out[k] = t.detach()
        return out
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.is_floating_point():
        _check_finite_features(t, name)
    return t.detach()


def _check_finite_features(t: torch.Tensor, name: str) -> None:
    # The sum is a cheap screen (20x faster than isfinite): finite whenever every
    # entry is, unless it overflows; only then look entry by entry.
    if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().squeeze(1)
        raise ValueError(f"{name} contain NaN or infinite values in {len(bad)} rows (first: row {int(bad[0])}); "
                         "the model produced invalid features")


def _check_finite_distances(d: torch.Tensor, start: int, what: str) -> None:
    if bool(torch.isfinite(d.sum())) or bool(torch.isfinite(d).all()):
        return
    bad = (~torch.isfinite(d)).any(1).nonzero().squeeze(1)
    raise ValueError(f"{what} has NaN or infinite distances for query row {start + int(bad[0])} "
                     f"({len(bad)} rows in rows {start}..{start + d.shape[0] - 1})")


def _check_euclidean_range(q: torch.Tensor, g: torch.Tensor) -> None:
    """Squared distances of finite features can still overflow the float type:
    ``|q|^2 + |g|^2 - 2 q.g`` stays below ``2 (|q|^2 + |g|^2)``."""
    if not q.numel() or not g.numel():
        return
    limit = float(torch.finfo(g.dtype).max)
    norm = lambda x: float(torch.linalg.vector_norm(x, dim=1).max())  # noqa: E731
    biggest = norm(q) ** 2 + norm(g) ** 2
    if not biggest < limit / 4:
        raise ValueError(f"features are too large for squared Euclidean distances in {g.dtype} "
                         f"(squared norms up to {biggest:.3g}); normalise them or use float64")


def _num_rows(x: Any, name: str) -> int:
    if isinstance(x, Mapping):
        sizes = {k: len(v) for k, v in x.items()}
        if not sizes:
            raise ValueError(f"{name} is an empty dict")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{name} entries must share their first dimension, got {sizes}")
        return next(iter(sizes.values()))
    return len(x)


def _slice_rows(x: Any, a: int, b: int) -> Any:
    if isinstance(x, Mapping):
        return {k: v[a:b] for k, v in x.items()}
    return x[a:b]


def _device_of(x: Any) -> torch.device:
    if isinstance(x, Mapping):
        for v in x.values():
            if isinstance(v, torch.Tensor):
                return v.device
        return torch.device("cpu")
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
