"""Cloth-changing image ReID: PRCC, LTCC, VC-Clothes and DeepChange.

Clothes ids: on ``train`` they are relabelled 0..C-1 over (pid, clothes) pairs by
``records.relabel``; on query/gallery they keep the dataset's own per-person values
(LTCC/VC-Clothes: the clothes field of the name; PRCC: 0 for cameras A and B, 1 for
camera C) and are only meaningful together with the pid, which is how every protocol
uses them (the cc/same_clothes junk rules only compare clothes of the same person).

Human-parsing maps (CCAF's shielding and clothes images): for an image at ``DSET/REL``
the adapters read ``DSET/parsing/REL`` with the extension replaced by ``.png``, in
SCHP's output format (palette PNG, the 20 LIP classes), ``DSET`` being the dataset
folder found under the root. ``reidbench data parse --dataset NAME --root DIR --model
MODEL_DIR`` writes them there. No maps at all is allowed (only a method that requires
``parsing`` stops, and says how to make them); a split where some images have a map and
others have none is an interrupted or partial parse, and the adapter stops with how
to finish it (:func:`check_parsing_maps`).

Protocols, as CCAF (MM'24, Tables 1 and 2) reports them: LTCC ``general`` and ``cc``,
PRCC ``same_clothes`` and ``cc``, VC-Clothes ``general`` and ``cc``, DeepChange one
``standard`` evaluation.
"""

from __future__ import annotations

import os
import re

from ..records import DatasetLayoutError, EvalSplit, ReidDataset, Sample, basename, relabel
from ..registry import register_dataset
from ._common import (
    Layout,
    SideCars,
    list_images,
    list_subfolders,
    locate,
    parse_folder,
    require_files,
    require_nonempty,
    unparsable_error,
)

PARSE_COMMAND = "reidbench data parse --dataset {name} --root {root} --model MODEL_DIR"


def check_parsing_maps(name: str, dset: str, splits: dict[str, list[Sample]]) -> None:
    """Stop when a split is partly parsed: some of its images have a map under
    ``DSET/parsing`` and others have none (an interrupted ``reidbench data parse``).
    A split with no maps, or with every map, passes."""
    for split, samples in splits.items():
        lacking = [s for s in samples if not s.parsing_path]
        if lacking and len(lacking) < len(samples):
            first = ", ".join(repr(os.path.relpath(s.path, dset).replace(os.sep, "/")) for s in lacking[:3])
            raise DatasetLayoutError(
                f"{name}: {len(lacking)} of {len(samples)} images of split {split!r} have no parsing map under "
                f"{os.path.join(dset, 'parsing')!r} (first: {first}); finish them with "
                f"{PARSE_COMMAND.format(name=name, root=os.path.dirname(dset))} (it skips the maps already made)"
            )


# ----------------------------------------------------------------------------- PRCC

PRCC_CAMERAS = {"A": 0, "B": 1, "C": 2}
PRCC_DIAGRAM = (
    "  ROOT/prcc/rgb/\n"
    "    train/<pid>/{A,B,C}_cropped_rgb001.jpg ...   (first letter = camera)\n"
    "    val/<pid>/{A,B,C}*.jpg                        (optional)\n"
    "    test/A/<pid>/*.jpg   test/B/<pid>/*.jpg   test/C/<pid>/*.jpg"
)


def _prcc_train_like(folder: str, split: str) -> list[Sample]:
    """``folder/<pid>/{A,B,C}*.jpg``: camera from the file's first letter; A and B share
    one outfit (clothes 0), camera C shows another (clothes 1), as in CAL's PRCC loader."""
    bad_dirs = [d for d in list_subfolders(folder) if not d.isdigit()]
    if bad_dirs:
        raise unparsable_error("prcc", folder, bad_dirs, "'<pid>/' folders named by digits (e.g. 001/)")
    samples, bad = [], []
    for pid in list_subfolders(folder):
        for name in list_images(os.path.join(folder, pid)):
            cam = name[:1]
            if cam not in PRCC_CAMERAS:
                bad.append(f"{pid}/{name}")
                continue
            clothes = 1 if cam == "C" else 0
            samples.append(Sample(os.path.join(folder, pid, name), int(pid), PRCC_CAMERAS[cam], clothes_id=clothes))
    if bad:
        raise unparsable_error("prcc", folder, bad, "'<pid>/<A|B|C>*.jpg' (first letter = camera A, B or C)")
    require_nonempty("prcc", split, samples, folder, "001/A_cropped_rgb001.jpg")
    return samples


@register_dataset("prcc")
def prcc(root: str | None) -> ReidDataset:
    """PRCC (Yang et al., TPAMI 2019), RGB images, CAL's split and protocols.

    Test: gallery = camera A; ``query_same`` = camera B (same clothes as A);
    ``query_diff`` = camera C (other clothes). Evaluations: ``same_clothes`` runs the
    standard protocol on query_same vs gallery, ``cc`` runs the cc protocol on
    query_diff vs gallery. CAL's ``test_prcc`` calls its plain evaluate() for both; the
    numbers agree because every positive of a B query is another camera in the same
    clothes, and every positive of a C query is another camera in other clothes.
    ``rgb/val`` (optional) becomes a ``val`` split with original ids.
    """
    layout = Layout("prcc", ("prcc", "PRCC"), ("rgb/train", "rgb/test/A", "rgb/test/B", "rgb/test/C"), PRCC_DIAGRAM)
    _, dset = locate([layout], root)
    side_cars = SideCars(dset)
    rgb = os.path.join(dset, "rgb")
    splits: dict[str, list[Sample]] = {"train": relabel(side_cars.attach(_prcc_train_like(os.path.join(rgb, "train"), "train")))}
    if os.path.isdir(os.path.join(rgb, "val")):
        splits["val"] = side_cars.attach(_prcc_train_like(os.path.join(rgb, "val"), "val"))
    for split, cam in (("gallery", "A"), ("query_same", "B"), ("query_diff", "C")):
        folder = os.path.join(rgb, "test", cam)
        bad_dirs = [d for d in list_subfolders(folder) if not d.isdigit()]
        if bad_dirs:
            raise unparsable_error("prcc", folder, bad_dirs, "'<pid>/' folders named by digits (e.g. 001/)")
        samples = [
            Sample(os.path.join(folder, pid, name), int(pid), PRCC_CAMERAS[cam], clothes_id=1 if cam == "C" else 0)
            for pid in list_subfolders(folder)
            for name in list_images(os.path.join(folder, pid))
        ]
        require_nonempty("prcc", split, samples, folder, "001/cropped_rgb001.jpg")
        splits[split] = side_cars.attach(samples)
    evaluations = [
        EvalSplit("same_clothes", "query_same", "gallery", "standard"),
        EvalSplit("cc", "query_diff", "gallery", "cc"),
    ]
    official = {
        "train": {"images": 17896, "ids": 150, "cameras": 3},
        "query_same": {"images": 3543, "ids": 71, "cameras": 1},
        "query_diff": {"images": 3873, "ids": 71, "cameras": 1},
        "gallery": {"images": 3384, "ids": 71, "cameras": 1},
    }
    notes = "camid A=0, B=1, C=2; clothes 0 = cameras A/B, 1 = camera C. Official counts: CAL's PRCC statistics."
    check_parsing_maps("prcc", dset, splits)
    return ReidDataset("prcc", dset, "image", splits, evaluations, official, notes)


# ----------------------------------------------------------------------------- LTCC

LTCC_NAME = re.compile(r"(\d+)_(\d+)_c([1-9]\d*)(?:_[^.]*)?\.\w+")
LTCC_EXPECTED = "'<pid>_<clothes>_c<cam>_<frame>.png' (e.g. 001_1_c11_015909.png, cameras from 1)"
GENERAL_AND_CC = [EvalSplit("general", "query", "gallery", "standard"), EvalSplit("cc", "query", "gallery", "cc")]


def _named_splits(
    name: str,
    dset: str,
    folders: tuple[tuple[str, str], ...],
    pattern: re.Pattern[str],
    expected: str,
    example: str,
    fields: tuple[int, int, int],
    keep_cameras: frozenset[int] | None = None,
) -> dict[str, list[Sample]]:
    """Folders of images whose names give pid, camera and clothes (group numbers in
    ``fields``). ``keep_cameras`` (1-based) restricts query/gallery to some cameras."""
    side_cars = SideCars(dset)
    pid_g, cam_g, clothes_g = fields
    splits = {}
    for split, folder in folders:
        where = os.path.join(dset, folder)
        samples = [
            Sample(path, int(m.group(pid_g)), int(m.group(cam_g)) - 1, clothes_id=int(m.group(clothes_g)))
            for path, m in parse_folder(name, where, pattern, expected)
            if split == "train" or keep_cameras is None or int(m.group(cam_g)) in keep_cameras
        ]
        require_nonempty(name, split, samples, where, example)
        samples = side_cars.attach(samples)
        splits[split] = relabel(samples) if split == "train" else samples
    check_parsing_maps(name, dset, splits)
    return splits


@register_dataset("ltcc")
def ltcc(root: str | None) -> ReidDataset:
    """LTCC (Qian et al., ACCV 2020): 12 cameras, names give pid, clothes and camera.
    Evaluations as in the papers: ``general`` (standard protocol) and ``cc``."""
    layout = Layout(
        "ltcc",
        ("LTCC_ReID", "LTCC-reID", "ltcc"),
        ("train", "query", "test"),
        "  ROOT/LTCC_ReID/\n    train/001_1_c11_015909.png ...\n    query/\n    test/      (the gallery)",
    )
    _, dset = locate([layout], root)
    splits = _named_splits(
        "ltcc", dset, (("train", "train"), ("query", "query"), ("gallery", "test")),
        LTCC_NAME, LTCC_EXPECTED, "001_1_c11_015909.png", (1, 3, 2),
    )
    official = {
        "train": {"images": 9576, "ids": 77},
        "query": {"images": 493, "ids": 75},
        "gallery": {"images": 7050, "ids": 75},
    }
    notes = "Clothes = the name's second field (per person). Official counts: CAL's LTCC statistics."
    return ReidDataset("ltcc", dset, "image", splits, list(GENERAL_AND_CC), official, notes)


# ----------------------------------------------------------------------------- VC-Clothes

VC_NAME = re.compile(r"(\d+)-0*([1-9]\d*)-(\d+)-(\d+)\.\w+")
VC_EXPECTED = "'<pid>-<cam>-<clothes>-<frame>.jpg' (e.g. 0001-01-01-01.jpg, cameras 1..4)"
VC_LAYOUT = Layout(
    "vc_clothes",
    ("VC-Clothes", "vc_clothes", "VC_Clothes"),
    ("train", "query", "gallery"),
    "  ROOT/VC-Clothes/\n    train/0001-01-01-01.jpg ...\n    query/\n    gallery/",
)
VC_FOLDERS = (("train", "train"), ("query", "query"), ("gallery", "gallery"))
VC_TRAIN_OFFICIAL = {"images": 9449, "ids": 256, "cameras": 4}


def _vc_clothes(name: str, root: str | None, keep: frozenset[int] | None) -> tuple[str, dict[str, list[Sample]]]:
    _, dset = locate([Layout(name, VC_LAYOUT.folder_names, VC_LAYOUT.required, VC_LAYOUT.diagram)], root)
    return dset, _named_splits(name, dset, VC_FOLDERS, VC_NAME, VC_EXPECTED, "0001-01-01-01.jpg", (1, 2, 3), keep)


@register_dataset("vc_clothes")
def vc_clothes(root: str | None) -> ReidDataset:
    """VC-Clothes (Wan et al., CVPR-W 2020; synthetic, GTA5), all four cameras.

    Decision: as CAL's default ``vcclothes`` mode (and CCAF's Table 1): ``general`` =
    standard protocol over all cameras, ``cc`` = cc protocol over all cameras. CAL's
    camera-subset modes are the separate datasets ``vc_clothes_sc`` (cameras 2 and 3)
    and ``vc_clothes_cc`` (cameras 3 and 4)."""
    dset, splits = _vc_clothes("vc_clothes", root, None)
    official = {
        "train": dict(VC_TRAIN_OFFICIAL),
        "query": {"images": 1020, "ids": 256, "cameras": 4},
        "gallery": {"images": 8591, "ids": 256, "cameras": 4},
    }
    notes = "All cameras. Official counts: VC-Clothes paper / CAL's statistics."
    return ReidDataset("vc_clothes", dset, "image", splits, list(GENERAL_AND_CC), official, notes)


@register_dataset("vc_clothes_sc")
def vc_clothes_sc(root: str | None) -> ReidDataset:
    """VC-Clothes, CAL's ``vcclothes_sc`` mode: query and gallery restricted to cameras 2
    and 3 (people keep their clothes there), standard protocol; training uses all."""
    dset, splits = _vc_clothes("vc_clothes_sc", root, frozenset({2, 3}))
    evaluations = [EvalSplit("same_clothes", "query", "gallery", "standard")]
    notes = "Query/gallery from cameras 2 and 3 only (CAL's vcclothes_sc)."
    return ReidDataset("vc_clothes_sc", dset, "image", splits, evaluations, {"train": dict(VC_TRAIN_OFFICIAL)}, notes)


@register_dataset("vc_clothes_cc")
def vc_clothes_cc(root: str | None) -> ReidDataset:
    """VC-Clothes, CAL's ``vcclothes_cc`` mode: query and gallery restricted to cameras 3
    and 4 (clothes change between them), standard protocol; training uses all."""
    dset, splits = _vc_clothes("vc_clothes_cc", root, frozenset({3, 4}))
    evaluations = [EvalSplit("cc", "query", "gallery", "standard")]
    notes = "Query/gallery from cameras 3 and 4 only (CAL's vcclothes_cc)."
    return ReidDataset("vc_clothes_cc", dset, "image", splits, evaluations, {"train": dict(VC_TRAIN_OFFICIAL)}, notes)


# ----------------------------------------------------------------------------- DeepChange

DEEPCHANGE_NAME = re.compile(r"P(\d+)_C(\d+)_([^_.]+)(?:_[^.]*)?\.\w+")
DEEPCHANGE_EXPECTED = "'P<pid>_C<camera>_<day>_...jpg' (e.g. P00001_C01_D20190511_H09_..._....jpg)"
DEEPCHANGE_SPLITS = (
    ("train", "train-set"),
    ("val_query", "val-set-query"),
    ("val_gallery", "val-set-gallery"),
    ("query", "test-set-query"),
    ("gallery", "test-set-gallery"),
)


def _read_deepchange_list(dset: str, folder: str) -> list[tuple[str, re.Match[str], int]]:
    list_path = os.path.join(dset, f"{folder}-bbox.txt")
    entries, bad = [], []
    with open(list_path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            name, _, tracklet = line.partition(",")
            match = DEEPCHANGE_NAME.fullmatch(basename(name.strip()))
            if match is None or not tracklet.strip().isdigit():
                bad.append(f"line {number}: {line}")
                continue
            entries.append((os.path.join(dset, folder, name.strip()), match, int(tracklet)))
    if bad:
        raise DatasetLayoutError(
            f"deepchange: {len(bad)} line(s) of {list_path!r} do not parse; expected '<name>,<tracklet id>' with "
            f"names {DEEPCHANGE_EXPECTED}: " + "; ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        )
    require_files("deepchange", (path for path, _, _ in entries), list_path)
    return entries


@register_dataset("deepchange")
def deepchange(root: str | None, test_camid: str = "tracklet", clothes_from_day: bool = False) -> ReidDataset:
    """DeepChange (Xu & Zhu, ICCV 2023): 17 cameras over a year; ``*-bbox.txt`` lists give
    ``<name>,<tracklet id>``; names give pid (``P...``), camera (``C...``) and day.

    Decisions (switches):
    * ``test_camid="tracklet"`` (default): in val/test query and gallery, camid is the
      tracklet id, as in CAL's loader, because DeepChange's protocol counts a match from
      the same camera but another tracklet as a true match; the standard protocol then
      discards only the query's own tracklet. ``"camera"`` keeps the camera there too
      (needed by camera-embedding (SIE) models at test time; stricter protocol). The
      train split always carries the camera, 0-based (C01 -> 0; kept as is when a C00 exists).
    * clothes are not annotated: ``clothes_id`` is None. ``clothes_from_day=True`` uses
      CAL's surrogate instead, one outfit per (person, day field).
    """
    if test_camid not in ("tracklet", "camera"):
        raise ValueError(f"deepchange: test_camid must be 'tracklet' or 'camera', got {test_camid!r}")
    required = tuple(folder for _, folder in DEEPCHANGE_SPLITS) + tuple(f"{f}-bbox.txt" for _, f in DEEPCHANGE_SPLITS)
    diagram = "  ROOT/DeepChangeDataset/\n" + "".join(
        f"    {folder}/   {folder}-bbox.txt   (lines 'P00001_C01_<day>_....jpg,<tracklet>')\n" for _, folder in DEEPCHANGE_SPLITS
    )
    _, dset = locate([Layout("deepchange", ("DeepChangeDataset", "DeepChange", "deepchange"), required, diagram)], root)
    side_cars = SideCars(dset)
    parsed = {split: _read_deepchange_list(dset, folder) for split, folder in DEEPCHANGE_SPLITS}
    camera_offset = 0 if any(int(m.group(2)) == 0 for entries in parsed.values() for _, m, _ in entries) else 1
    days: dict[tuple[int, str], int] = {}
    splits: dict[str, list[Sample]] = {}
    for (split, folder), entries in zip(DEEPCHANGE_SPLITS, parsed.values()):
        samples = []
        for path, m, tracklet in entries:
            pid = int(m.group(1))
            clothes = days.setdefault((pid, m.group(3)), len(days)) if clothes_from_day else None
            camid = tracklet if (split != "train" and test_camid == "tracklet") else int(m.group(2)) - camera_offset
            samples.append(Sample(path, pid, camid, clothes_id=clothes))
        require_nonempty("deepchange", split, samples, os.path.join(dset, f"{folder}-bbox.txt"), "P00001_C01_....jpg,1")
        samples = side_cars.attach(samples)
        splits[split] = relabel(samples) if split == "train" else samples
    official = {
        "train": {"images": 75083, "ids": 450},
        "val_query": {"images": 4976},
        "val_gallery": {"images": 17308},
        "query": {"images": 17527},
        "gallery": {"images": 63513},
    }
    notes = (
        f"test camid = {test_camid}; clothes {'= (pid, day) surrogate' if clothes_from_day else 'unknown'}; "
        "val_query/val_gallery are for model selection. "
        + ("Query/gallery 'cameras' count tracklets. " if test_camid == "tracklet" else "")
        + "Official counts: DeepChange paper."
    )
    check_parsing_maps("deepchange", dset, splits)
    return ReidDataset("deepchange", dset, "image", splits, [EvalSplit("standard", "query", "gallery", "standard")], official, notes)
