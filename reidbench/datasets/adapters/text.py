"""Text-to-image person retrieval: CUHK-PEDES, ICFG-PEDES and RSTPReid (IRRA's loaders).

Splits: ``train`` (one Sample per image carrying all its captions as ``caption`` texts
of style ``""``; pids relabelled),
``test_images`` (one Sample per image, no captions) and ``test_texts`` (one Sample per
caption, ``path`` = its image); ``val_images`` / ``val_texts`` likewise where the set
has a validation split. The single evaluation is ``t2i``: every test caption queries
the test images. There are no cameras: camid is 0 throughout.
"""

from __future__ import annotations

import json
import os

from ..records import DatasetLayoutError, EvalSplit, ReidDataset, Sample, relabel
from ..registry import register_dataset
from ._common import Layout, SideCars, load_json, locate, require_files, require_nonempty

T2I = [EvalSplit("t2i", "test_texts", "test_images", "t2i")]


def _captions(captions: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """An annotation's captions as ``Sample.texts`` (the annotations name no style)."""
    return tuple(("caption", "", c) for c in captions)


def _pedes(
    name: str,
    root: str | None,
    folder_names: tuple[str, ...],
    annotation: str,
    path_key: str,
    split_of,
    official: dict[str, dict[str, int]],
    notes: str,
) -> ReidDataset:
    """Read an IRRA-style annotation list: entries with ``id``, ``captions``, ``split`` and
    the image path under ``imgs/`` in ``path_key``. ``split_of`` maps the split field to
    ``train``/``val``/``test`` (or None for a value the dataset does not have)."""
    diagram = (
        f"  ROOT/{folder_names[0]}/\n"
        f"    {annotation}   [{{\"id\": 1, \"{path_key}\": \"...jpg\", \"captions\": [\"...\"], \"split\": \"train\"}}, ...]\n"
        f"    imgs/..."
    )
    _, dset = locate([Layout(name, folder_names, (annotation, "imgs"), diagram)], root)
    annotation_path = os.path.join(dset, annotation)
    entries = load_json(name, annotation_path)
    if not isinstance(entries, list):
        raise DatasetLayoutError(f"{name}: {annotation_path!r} must hold a JSON list of entries, got {type(entries).__name__}")
    parts: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {"train": [], "val": [], "test": []}
    for index, entry in enumerate(entries):
        missing = [k for k in ("id", path_key, "captions", "split") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r} lacks {', '.join(repr(k) for k in missing)}")
        part = split_of(entry["split"])
        if part is None:
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r} has unknown split {entry['split']!r}")
        raw = entry["captions"]
        if not isinstance(raw, list) or not all(isinstance(c, str) and c.strip() for c in raw):
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r}: \"captions\" must be a list of "
                                     f"non-empty strings, got {json.dumps(raw)[:80]}")
        captions = tuple(c.strip() for c in raw)
        rel = entry[path_key]
        if not isinstance(rel, str) or not rel.strip() or os.path.isabs(rel):
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r}: \"{path_key}\" must be an image "
                                     f"path relative to {os.path.join(dset, 'imgs')!r}, got {json.dumps(rel)[:80]}")
        path = os.path.normpath(os.path.join(dset, "imgs", rel))
        if os.path.commonpath([path, dset]) != dset:
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r}: \"{path_key}\" {rel!r} leaves the "
                                     f"dataset folder {dset!r}; expected a path below its imgs/ folder")
        pid = entry["id"]
        if isinstance(pid, bool) or not isinstance(pid, int) and not (isinstance(pid, str) and pid.strip().isdigit()):
            raise DatasetLayoutError(f"{name}: entry {index} of {annotation_path!r}: \"id\" must be an integer, "
                                     f"got {json.dumps(pid)[:40]}")
        parts[part].append((path, int(pid), captions))
    require_files(name, (path for rows in parts.values() for path, _, _ in rows), annotation_path)

    side_cars = SideCars(dset, captions=False)
    example = f"an entry with \"split\": \"{{}}\" in {annotation}"
    train = [Sample(path, pid, 0, texts=_captions(caps)) for path, pid, caps in parts["train"]]
    require_nonempty(name, "train", train, annotation_path, example.format("train"))
    splits: dict[str, list[Sample]] = {"train": relabel(side_cars.attach(train))}
    for part in ("val", "test"):
        if not parts[part] and part == "val":
            continue
        images = [Sample(path, pid, 0) for path, pid, _ in parts[part]]
        texts = [Sample(path, pid, 0, texts=_captions((caption,))) for path, pid, caps in parts[part] for caption in caps]
        require_nonempty(name, f"{part}_images", images, annotation_path, example.format(part))
        require_nonempty(name, f"{part}_texts", texts, annotation_path, example.format(part) + " with captions")
        splits[f"{part}_images"] = side_cars.attach(images)
        splits[f"{part}_texts"] = texts  # a query is its caption: no side-car texts or maps
    return ReidDataset(name, dset, "text", splits, list(T2I), official, notes)


@register_dataset("cuhk_pedes", task="text")
def cuhk_pedes(root: str | None) -> ReidDataset:
    """CUHK-PEDES (Li et al., CVPR 2017): ``reid_raw.json`` with ``file_path``; split field
    ``train`` / ``test`` / anything else = val (IRRA's rule)."""
    return _pedes(
        "cuhk_pedes",
        root,
        ("CUHK-PEDES", "cuhk_pedes", "CUHK-PEDES/CUHK-PEDES"),
        "reid_raw.json",
        "file_path",
        lambda s: s if s in ("train", "test") else "val",
        {
            "train": {"images": 34054, "ids": 11003, "captions": 68126},
            "val_images": {"images": 3078, "ids": 1000},
            "val_texts": {"ids": 1000, "captions": 6158},
            "test_images": {"images": 3074, "ids": 1000},
            "test_texts": {"images": 3074, "ids": 1000, "captions": 6156},
        },
        "Official counts: IRRA's CUHK-PEDES statistics (40,206 images, 80,440 captions in all).",
    )


@register_dataset("icfg_pedes", task="text")
def icfg_pedes(root: str | None) -> ReidDataset:
    """ICFG-PEDES (Ding et al., 2021): ``ICFG-PEDES.json`` with ``file_path``; splits
    ``train`` and ``test`` only (no validation split); one caption per image."""
    return _pedes(
        "icfg_pedes",
        root,
        ("ICFG-PEDES", "icfg_pedes"),
        "ICFG-PEDES.json",
        "file_path",
        lambda s: s if s in ("train", "test") else None,
        {
            "train": {"images": 34674, "ids": 3102, "captions": 34674},
            "test_images": {"images": 19848, "ids": 1000},
            "test_texts": {"images": 19848, "ids": 1000, "captions": 19848},
        },
        "No validation split. Official counts: ICFG-PEDES paper / IRRA's statistics.",
    )


@register_dataset("rstpreid", task="text")
def rstpreid(root: str | None) -> ReidDataset:
    """RSTPReid (Zhu et al., ACM MM 2021): ``data_captions.json`` with ``img_path``;
    splits ``train`` / ``val`` / ``test``; two captions per image."""
    return _pedes(
        "rstpreid",
        root,
        ("RSTPReid", "rstpreid"),
        "data_captions.json",
        "img_path",
        lambda s: s if s in ("train", "val", "test") else None,
        {
            "train": {"images": 18505, "ids": 3701, "captions": 37010},
            "val_images": {"images": 1000, "ids": 200},
            "val_texts": {"ids": 200, "captions": 2000},
            "test_images": {"images": 1000, "ids": 200},
            "test_texts": {"images": 1000, "ids": 200, "captions": 2000},
        },
        "Official counts: RSTPReid paper / IRRA's statistics.",
    )
