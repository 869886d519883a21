"""Model selection: the validation split carved from the training identities."""

from __future__ import annotations

import random
from dataclasses import replace

from ..datasets import Sample
from ..datasets.records import relabel


def split_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Hold out ``fraction`` of the training identities for model selection.

    Returns (train with pids and clothes ids relabelled densely, 0..M-1 and 0..K-1,
    val query, val gallery). Validation mirrors the
    test protocol (``standard``: same-camera positives are junk): with same-camera
    positives counted, validation mostly measured how well a model matches a camera's
    background (on the synthetic benchmarks an image's nearest neighbours are other
    images from its camera), not the cross-camera matching the test scores.

    Every held-out image of an identity seen by two or more cameras is a query, and
    the gallery is every held-out image: under the standard protocol a query's own
    image and its same-camera matches are junk, so each query ranks the identity's
    other-camera images among all held-out identities (leave-one-out). With ~8
    held-out identities one query per (identity, camera) gave 15-31 queries, a val
    mAP too coarse to pick an epoch (ProFD seed 1 on synthetic_occluded chose epoch
    2 of 12); all images give ~100. If no held-out identity has two cameras, the first
    image of each identity is a query with camera id -1 (no junk) and the rest are
    gallery.
    """
    pids = sorted({s.pid for s in train})
    n_val = int(round(len(pids) * fraction))
    if fraction <= 0 or n_val == 0:
        return train, [], []
    if len(pids) - n_val < 2:
        raise ValueError(f"val_fraction={fraction} leaves fewer than 2 training identities out of {len(pids)}")
    rng = random.Random(seed)
    val_pids = set(rng.sample(pids, n_val))
    keep = relabel([s for s in train if s.pid not in val_pids])
    by_pid: dict[int, list[Sample]] = {}
    for s in sorted((s for s in train if s.pid in val_pids), key=lambda s: s.path):
        by_pid.setdefault(s.pid, []).append(s)
    query, gallery = [], []
    if any(len({s.camid for s in items}) > 1 for items in by_pid.values()):
        for items in by_pid.values():
            if len({s.camid for s in items}) > 1:
                query.extend(items)
            gallery.extend(items)
        return keep, query, gallery
    for items in by_pid.values():
        if len(items) < 2:
            continue
        query.append(replace(items[0], camid=-1))
        gallery.extend(items[1:])
    return keep, query, gallery
