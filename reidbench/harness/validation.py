"""Model selection: which queries against which gallery, under which protocol, pick the epoch.

``plan_validation(dataset, fraction, seed)`` returns the training samples a run trains on
and a :class:`Validation` record that says what validates it. The rules (the spec left
them open; these are the decisions):

* **Protocol = the dataset's headline protocol** (:func:`headline_protocol`): ``t2i`` on a
  text-to-image set, ``cc`` on a set that reports a clothes-changing evaluation (PRCC,
  LTCC, VC-Clothes, ``synthetic_cc``: their *first* evaluation is the same-clothes /
  general one, but the number the cloth-changing papers rank by is ``cc``), ``standard``
  otherwise. Not "the first entry of ``dataset.evaluations``": that would validate PRCC
  on same-clothes matching, exactly the shortcut a cloth-changing model must not learn.
* **``data.val_fraction`` is the switch**: ``0`` (or less) means no validation, the last
  epoch is the model. Above ``0``, a dataset's **official validation split** is used when
  it has one (CUHK-PEDES, RSTPReid and ``synthetic_pedes``: ``val_texts`` against
  ``val_images``; DeepChange: ``val_query`` against ``val_gallery``; PRCC and
  ``synthetic_cc``: the identities of ``val``), the training split is left whole and the
  fraction's value is not used. Without one, ``fraction`` of the training identities is
  held out (the value matters). An official split with fewer than two identities is
  ignored (one identity ranks itself perfectly whatever the model), with the held-out
  split used instead.
* **Held-out identities, per protocol** (leave-one-out: every held-out image is gallery):

  - ``standard``: every image of an identity seen by two or more cameras is a query;
    its own image and same-camera matches are junk, so it ranks the identity's
    other-camera images among all held-out identities, as the test does. If no held-out
    identity has two cameras, the first image of each identity is a query with camera
    id -1 (nothing junk) and the rest are gallery.
  - ``cc``: every image that has a same-identity image in *other clothes from another
    camera* is a query; same-clothes and same-camera matches are junk, so an epoch is
    rewarded for matching the person across clothes, not the outfit. If no held-out
    image has such a match (identities held out in one outfit, or clothes unknown),
    validation falls back to ``standard`` on the same images, and the record says
    ``standard`` (a warning says why), so the MLflow run never claims ``cc``.
  - ``t2i``: one query per caption of a held-out image (:func:`caption_queries`), its
    gallery the held-out images; a held-out identity whose images carry no caption
    contributes gallery images only. No caption at all is an error.

With ~8 held-out identities, one query per (identity, camera) gave 15-31 queries, a val
mAP too coarse to pick an epoch (ProFD seed 1 on synthetic_occluded chose epoch 2 of
12); all images give ~100. With same-camera positives counted, validation mostly
measured how well a model matches a camera's background, not cross-camera matching.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field, replace

from ..datasets import ReidDataset, Sample
from ..datasets.records import relabel

OFFICIAL = "official val split"
HELD_OUT = "held-out identities"
NONE = "none (last epoch)"
# The metric that selects the epoch (logged per epoch as val/<name>).
SELECTION_METRIC = "mAP"


@dataclass(frozen=True)
class Validation:
    """What selects a run's model: ``query`` ranked against ``gallery`` under ``protocol``
    (``standard``, ``cc`` or ``t2i``; ``none`` without validation), from ``source``
    (:data:`OFFICIAL`, :data:`HELD_OUT` or :data:`NONE`)."""

    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)
    protocol: str = "none"
    source: str = NONE

    @property
    def enabled(self) -> bool:
        return bool(self.query)

    def tags(self) -> dict[str, str]:
        """What MLflow records about model selection (``validation.*`` tags)."""
        return {"validation.protocol": self.protocol, "validation.source": self.source,
                "validation.metric": f"val/{SELECTION_METRIC}" if self.enabled else "none",
                "validation.queries": str(len(self.query)), "validation.gallery": str(len(self.gallery))}


def headline_protocol(dataset: ReidDataset) -> str:
    """The protocol a dataset's models are ranked by (see the module docstring)."""
    if dataset.task == "text":
        return "t2i"
    if any(ev.protocol == "cc" for ev in dataset.evaluations):
        return "cc"
    return "standard"


def plan_validation(dataset: ReidDataset, fraction: float, seed: int) -> tuple[list[Sample], Validation]:
    """(training samples, validation) for ``dataset`` under ``data.val_fraction=fraction``.

    The training samples have pids and clothes ids relabelled densely (0..M-1, 0..K-1)
    after any identities were held out."""
    train = dataset.splits["train"]
    if fraction <= 0:
        return train, Validation()
    protocol = headline_protocol(dataset)
    official = _official(dataset, protocol)
    if official is not None:
        return train, official
    keep, held = hold_out(train, fraction, seed)
    if not held:
        return keep, Validation()
    query, gallery, protocol = build_queries(held, protocol)
    return keep, Validation(query, gallery, protocol, HELD_OUT)


def _official(dataset: ReidDataset, protocol: str) -> Validation | None:
    splits = dataset.splits
    if protocol == "t2i" and "val_texts" in splits and "val_images" in splits:
        query, gallery = splits["val_texts"], splits["val_images"]
    elif protocol != "t2i" and "val_query" in splits and "val_gallery" in splits:
        query, gallery = splits["val_query"], splits["val_gallery"]
    elif protocol != "t2i" and splits.get("val"):
        query, gallery, protocol = build_queries(splits["val"], protocol)
    else:
        return None
    if len({s.pid for s in gallery}) < 2 or not query:
        return None
    return Validation(query, gallery, protocol, OFFICIAL)


def hold_out(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(the kept identities' samples relabelled, the held-out identities' samples): ``fraction``
    of the identities, drawn with ``seed``; nothing is held out when that rounds to 0."""
    pids = sorted({s.pid for s in train})
    n_val = round(len(pids) * fraction)
    if fraction <= 0 or n_val == 0:
        return train, []
    if len(pids) - n_val < 2:
        raise ValueError(f"data.val_fraction={fraction} leaves fewer than 2 training identities out of {len(pids)}")
    val_pids = set(random.Random(seed).sample(pids, n_val))
    keep = relabel([s for s in train if s.pid not in val_pids])
    return keep, sorted((s for s in train if s.pid in val_pids), key=lambda s: s.path)


def build_queries(samples: list[Sample], protocol: str) -> tuple[list[Sample], list[Sample], str]:
    """(query, gallery, protocol actually used) from the images of some identities, leave-one-out."""
    if protocol == "t2i":
        query = caption_queries(samples)
        if not query:
            raise ValueError(f"text-to-image validation needs captions, but none of the {len(samples)} held-out "
                             f"training images has one (e.g. {samples[0].path if samples else '-'})")
        return query, list(samples), "t2i"
    by_pid: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path):
        by_pid.setdefault(s.pid, []).append(s)
    if protocol == "cc":
        query = [s for items in by_pid.values() for s in items if _has_cc_match(s, items)]
        if query:
            return query, [s for items in by_pid.values() for s in items], "cc"
        warnings.warn(f"cc validation: none of the {len(samples)} images of {len(by_pid)} identities has a match "
                      "in other clothes from another camera (or clothes ids are unknown); validating under the "
                      "standard protocol instead", stacklevel=3)
    return (*_standard_queries(by_pid), "standard")


def _has_cc_match(s: Sample, same_pid: list[Sample]) -> bool:
    return s.clothes_id is not None and any(
        o.clothes_id is not None and o.clothes_id != s.clothes_id and o.camid != s.camid for o in same_pid)


def _standard_queries(by_pid: dict[int, list[Sample]]) -> tuple[list[Sample], list[Sample]]:
    query, gallery = [], []
    if any(len({s.camid for s in items}) > 1 for items in by_pid.values()):
        for items in by_pid.values():
            if len({s.camid for s in items}) > 1:
                query.extend(items)
            gallery.extend(items)
        return query, gallery
    for items in by_pid.values():
        if len(items) < 2:
            continue
        query.append(replace(items[0], camid=-1))
        gallery.extend(items[1:])
    return query, gallery


def caption_queries(images: list[Sample]) -> list[Sample]:
    """One text query per caption of each image (the shape of a ``val_texts`` / ``test_texts``
    split: the image's path, pid and camera, and that one caption). The only place model
    selection reads a sample's captions."""
    return [replace(s, texts=(entry,)) for s in images for entry in s.texts if entry[0] == "caption"]


def split_validation(train: list[Sample], fraction: float, seed: int,
                     protocol: str = "standard") -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(kept samples relabelled, val query, val gallery) from held-out training identities
    under ``protocol`` (see the module docstring); the pieces of :func:`plan_validation`
    for a bare list of training samples."""
    keep, held = hold_out(train, fraction, seed)
    if not held:
        return keep, [], []
    query, gallery, _ = build_queries(held, protocol)
    return keep, query, gallery
