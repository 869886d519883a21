"""Holistic image ReID: Market-1501, DukeMTMC-reID and MSMT17 (V1 and V2 layouts).

Official counts are torchreid's printed statistics (the same numbers the papers
quote), after dropping Market's junk pid -1; Market's gallery has 751 ids = 750 test
identities + pid 0, the distractors, which stay in the gallery as negatives.
"""

from __future__ import annotations

import os
import re

from ..records import DatasetLayoutError, EvalSplit, ReidDataset, Sample, basename, relabel
from ..registry import register_dataset
from ._common import Layout, SideCars, locate, parse_folder, require_files, require_nonempty

STANDARD = [EvalSplit("standard", "query", "gallery", "standard")]

# Market: <pid>_c<cam>s<seq>_<frame>_<box>.jpg, pid -1 = junk, 0000 = distractor.
MARKET_NAME = re.compile(r"(-1|\d+)_c([1-9]\d*)s\d+_\d+_\d+\.\w+")
MARKET_EXPECTED = "'<pid>_c<cam>s<seq>_<frame>_<box>.jpg' (e.g. 0002_c1s1_000451_03.jpg; pid -1 = junk, cameras from 1)"
# Duke (and Occluded-Duke): <pid>_c<cam>_f<frame>.jpg.
DUKE_NAME = re.compile(r"(-1|\d+)_c([1-9]\d*)_f\d+\.\w+")
DUKE_EXPECTED = "'<pid>_c<cam>_f<frame>.jpg' (e.g. 0001_c2_f0046182.jpg; cameras from 1)"

BBOX_SPLITS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))


def bbox_diagram(folder: str, example: str) -> str:
    return (
        f"  ROOT/{folder}/\n"
        f"    bounding_box_train/   {example} ...\n"
        f"    query/\n"
        f"    bounding_box_test/"
    )


def bbox_folder_dataset(
    name: str,
    root: str | None,
    folder_names: tuple[str, ...],
    pattern: re.Pattern[str],
    expected: str,
    example: str,
    official: dict[str, dict[str, int]],
    notes: str,
) -> ReidDataset:
    """Market/Duke-style layout: three folders of images whose names give pid and camera.

    pid -1 (Market's junk boxes) is dropped at parse time in every split; every
    other pid, including 0 (Market's distractors), is kept. Cameras become 0-based.
    """
    layout = Layout(name, folder_names, tuple(folder for _, folder in BBOX_SPLITS), bbox_diagram(folder_names[0], example))
    _, dset = locate([layout], root)
    side_cars = SideCars(dset)
    splits: dict[str, list[Sample]] = {}
    for split, folder in BBOX_SPLITS:
        where = os.path.join(dset, folder)
        samples = [
            Sample(path=path, pid=int(m.group(1)), camid=int(m.group(2)) - 1)
            for path, m in parse_folder(name, where, pattern, expected)
            if m.group(1) != "-1"
        ]
        require_nonempty(name, split, samples, where, example)
        samples = side_cars.attach(samples)
        splits[split] = relabel(samples) if split == "train" else samples
    return ReidDataset(name, dset, "image", splits, list(STANDARD), official, notes)


@register_dataset("market1501")
def market1501(root: str | None) -> ReidDataset:
    """Market-1501 (Zheng et al., ICCV 2015): 6 cameras, 1,501 identities."""
    return bbox_folder_dataset(
        "market1501",
        root,
        ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "market1501", "Market-1501"),
        MARKET_NAME,
        MARKET_EXPECTED,
        "0002_c1s1_000451_03.jpg",
        {
            "train": {"images": 12936, "ids": 751, "cameras": 6},
            "query": {"images": 3368, "ids": 750, "cameras": 6},
            "gallery": {"images": 15913, "ids": 751, "cameras": 6},
        },
        "pid -1 (junk) dropped at parse time; pid 0 (distractors) kept in the gallery as negatives. "
        "Official counts: torchreid's Market1501 statistics.",
    )


@register_dataset("dukemtmc")
def dukemtmc(root: str | None) -> ReidDataset:
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 8 cameras; the gallery holds 408 distractor ids."""
    return bbox_folder_dataset(
        "dukemtmc",
        root,
        ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid", "dukemtmc"),
        DUKE_NAME,
        DUKE_EXPECTED,
        "0001_c2_f0046182.jpg",
        {
            "train": {"images": 16522, "ids": 702, "cameras": 8},
            "query": {"images": 2228, "ids": 702, "cameras": 8},
            "gallery": {"images": 17661, "ids": 1110, "cameras": 8},
        },
        "Official counts: torchreid's DukeMTMCreID statistics.",
    )


# MSMT17 list files: "<pid folder>/<name> <label>" relative to the train/test folder;
# names "<pid>_<index>_<camera>_<date><time>_<...>.jpg", camera 1..15 in the third field.
MSMT_NAME = re.compile(r"(\d+)_(\d+)_(\d+)_.+\.\w+")
MSMT_EXPECTED = "'<pid>_<index>_<camera>_<...>.jpg' (e.g. 0000_000_01_0303morning_0015_0.jpg, camera 01..15)"


def _msmt_layout(version: str, train_dir: str, test_dir: str) -> Layout:
    lists = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
    diagram = (
        f"  ROOT/{version}/\n"
        f"    {train_dir}/<pid>/0000_000_01_0303morning_0015_0.jpg ...\n"
        f"    {test_dir}/<pid>/...\n"
        f"    list_train.txt  list_val.txt  list_query.txt  list_gallery.txt   (lines '<pid>/<name>.jpg <label>')"
    )
    return Layout("msmt17", (version, f"msmt17/{version}"), (train_dir, test_dir) + lists, diagram, variant=version)


MSMT_LAYOUTS = (
    (_msmt_layout("MSMT17_V1", "train", "test"), "train", "test"),
    (_msmt_layout("MSMT17_V2", "mask_train_v2", "mask_test_v2"), "mask_train_v2", "mask_test_v2"),
)


def _read_msmt_list(dset: str, list_name: str, image_dir: str) -> list[Sample]:
    """pid = the list's label (the official annotation, as torchreid/fast-reid/TransReID
    read it); camera = third field of the file's basename, made 0-based."""
    list_path = os.path.join(dset, list_name)
    samples, bad = [], []
    with open(list_path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.split()
            match = MSMT_NAME.fullmatch(basename(fields[0])) if fields else None
            if len(fields) != 2 or not fields[1].isdigit() or match is None or int(match.group(3)) < 1:
                bad.append(f"line {number}: {line.strip()}")
                continue
            samples.append(Sample(os.path.join(dset, image_dir, fields[0]), int(fields[1]), int(match.group(3)) - 1))
    if bad:
        raise DatasetLayoutError(
            f"msmt17: {len(bad)} line(s) of {list_path!r} do not parse; expected '<pid>/<name> <label>' with "
            f"names {MSMT_EXPECTED}: " + "; ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        )
    require_files("msmt17", (s.path for s in samples), list_path)
    return samples


@register_dataset("msmt17")
def msmt17(root: str | None, join_val: bool = True) -> ReidDataset:
    """MSMT17 (Wei et al., CVPR 2018), V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``,
    ``mask_test_v2/``, faces masked); V1 is used when both are present, as torchreid does.

    Decision: ``list_val.txt`` joins training by default (``join_val=True``). The
    published training set is train + val = 32,621 images of 1,041 identities (what the
    papers, torchreid's statistics and TransReID/CLIP-ReID's loader use); the val list is
    a subset of the training identities, not a held-out set. With ``join_val=False``
    the val images become a separate ``val`` split (original labels) for model selection.
    """
    layout, dset = locate([layout for layout, _, _ in MSMT_LAYOUTS], root)
    train_dir, test_dir = next((tr, te) for lay, tr, te in MSMT_LAYOUTS if lay is layout)
    side_cars = SideCars(dset)
    train = _read_msmt_list(dset, "list_train.txt", train_dir)
    val = _read_msmt_list(dset, "list_val.txt", train_dir)
    splits: dict[str, list[Sample]] = {"train": train + val if join_val else train}
    if not join_val:
        splits["val"] = val
    splits["query"] = _read_msmt_list(dset, "list_query.txt", test_dir)
    splits["gallery"] = _read_msmt_list(dset, "list_gallery.txt", test_dir)
    for split, samples in splits.items():
        list_name = {"train": "list_train.txt", "val": "list_val.txt"}.get(split, f"list_{split}.txt")
        require_nonempty("msmt17", split, samples, os.path.join(dset, list_name), "0000/0000_000_01_0303morning_0015_0.jpg 0")
        samples = side_cars.attach(samples)
        splits[split] = relabel(samples) if split == "train" else samples
    official = {
        "query": {"images": 11659, "ids": 3060, "cameras": 15},
        "gallery": {"images": 82161, "ids": 3060, "cameras": 15},
    }
    if join_val:
        official = {"train": {"images": 32621, "ids": 1041, "cameras": 15}, **official}
    notes = (
        f"{layout.variant}; list_val.txt {'joined to' if join_val else 'kept apart from'} training. "
        "Official counts: MSMT17 paper / torchreid statistics (train = train + val lists)."
    )
    return ReidDataset("msmt17", dset, "image", splits, list(STANDARD), official, notes)
