"""Occluded image ReID: Occluded-Duke, Occluded-REID and P-DukeMTMC-reID.

Occluded-REID and P-DukeMTMC keep images in ``<pid>/`` folders under
``occluded_body_images/`` and ``whole_body_images/``; there the camera is the kind of
image (occluded = camid 0, whole body = camid 1), the convention of the occluded-ReID
literature (PVPM, HOReID, ProFD, SCING): queries are occluded, the gallery is whole
body, and the standard protocol then never discards a true match as same-camera junk.
"""

from __future__ import annotations

import os

from ..records import EvalSplit, ReidDataset, Sample, relabel
from ..registry import register_dataset
from ._common import Layout, SideCars, list_images, list_subfolders, locate, require_nonempty, unparsable_error
from .holistic import DUKE_EXPECTED, DUKE_NAME, bbox_folder_dataset

STANDARD = [EvalSplit("standard", "query", "gallery", "standard")]
OCCLUDED, WHOLE = "occluded_body_images", "whole_body_images"


@register_dataset("occluded_duke")
def occluded_duke(root: str | None) -> ReidDataset:
    """Occluded-Duke (Miao et al., ICCV 2019): DukeMTMC-reID re-split so that every query
    is occluded; Duke file names, 8 cameras."""
    return bbox_folder_dataset(
        "occluded_duke",
        root,
        ("Occluded_Duke", "occluded_duke/Occluded_Duke", "Occluded-DukeMTMC-Dataset/Occluded_Duke"),
        DUKE_NAME,
        DUKE_EXPECTED,
        "0001_c2_f0046182.jpg",
        {
            "train": {"images": 15618, "ids": 702},
            "query": {"images": 2210, "ids": 519},
            "gallery": {"images": 17661, "ids": 1110},
        },
        "All queries are occluded (the file layout does not mark it; side-car meta may). "
        "Official counts: Miao et al. (PGFA) as quoted by ProFD/SCING.",
    )


def _pid_folders(dataset: str, split: str, folder: str, camid: int, occluded: bool, example: str) -> list[Sample]:
    """Images in ``folder/<pid>/``; the pid is the sub-folder's name (digits)."""
    bad = [name for name in list_subfolders(folder) if not name.isdigit()]
    if bad:
        raise unparsable_error(dataset, folder, bad, "'<pid>/' folders named by digits (e.g. 001/)")
    samples = [
        Sample(os.path.join(folder, pid, name), int(pid), camid, occluded=occluded)
        for pid in list_subfolders(folder)
        for name in list_images(os.path.join(folder, pid))
    ]
    require_nonempty(dataset, split, samples, folder, example)
    return samples


@register_dataset("occluded_reid")
def occluded_reid(root: str | None) -> ReidDataset:
    """Occluded-REID (Zhuo et al., ICME 2018): 200 people x (5 occluded + 5 whole-body)
    images. There is no training split: the papers train on Market-1501 and test here."""
    layout = Layout(
        "occluded_reid",
        ("Occluded_REID", "occluded_reid/Occluded_REID", "OccludedREID"),
        (OCCLUDED, WHOLE),
        f"  ROOT/Occluded_REID/\n    {OCCLUDED}/<pid>/001_01.tif ...\n    {WHOLE}/<pid>/...",
    )
    _, dset = locate([layout], root)
    side_cars = SideCars(dset)
    splits = {
        "query": side_cars.attach(_pid_folders("occluded_reid", "query", os.path.join(dset, OCCLUDED), 0, True, "001/001_01.tif")),
        "gallery": side_cars.attach(_pid_folders("occluded_reid", "gallery", os.path.join(dset, WHOLE), 1, False, "001/001_01.tif")),
    }
    official = {"query": {"images": 1000, "ids": 200, "cameras": 1}, "gallery": {"images": 1000, "ids": 200, "cameras": 1}}
    notes = "No training split (train on market1501). Official counts: Zhuo et al. 2018, as quoted by ProFD."
    return ReidDataset("occluded_reid", dset, "image", splits, list(STANDARD), official, notes)


@register_dataset("p_dukemtmc")
def p_dukemtmc(root: str | None) -> ReidDataset:
    """P-DukeMTMC-reID (Zhuo et al., 2019): occluded and whole-body images of Duke people.
    Training uses both kinds (camid 0 occluded, 1 whole); test queries are the occluded
    images, the gallery the whole-body ones."""
    required = tuple(f"{part}/{kind}" for part in ("train", "test") for kind in (OCCLUDED, WHOLE))
    layout = Layout(
        "p_dukemtmc",
        ("P-DukeMTMC-reID", "p_dukemtmc/P-DukeMTMC-reID", "P-DukeMTMC-reid"),
        required,
        f"  ROOT/P-DukeMTMC-reID/\n    train/{OCCLUDED}/<pid>/*.jpg  train/{WHOLE}/<pid>/*.jpg\n"
        f"    test/{OCCLUDED}/<pid>/*.jpg   test/{WHOLE}/<pid>/*.jpg",
    )
    _, dset = locate([layout], root)
    side_cars = SideCars(dset)
    example = "0005/0005_c2_f0046985.jpg"
    train = _pid_folders("p_dukemtmc", "train", os.path.join(dset, "train", OCCLUDED), 0, True, example) + _pid_folders(
        "p_dukemtmc", "train", os.path.join(dset, "train", WHOLE), 1, False, example
    )
    splits = {
        "train": relabel(side_cars.attach(train)),
        "query": side_cars.attach(_pid_folders("p_dukemtmc", "query", os.path.join(dset, "test", OCCLUDED), 0, True, example)),
        "gallery": side_cars.attach(_pid_folders("p_dukemtmc", "gallery", os.path.join(dset, "test", WHOLE), 1, False, example)),
    }
    official = {
        "train": {"images": 12927, "ids": 665},
        "query": {"images": 2163, "ids": 634},
        "gallery": {"images": 9053, "ids": 634},
    }
    notes = "camid 0 = occluded_body_images, 1 = whole_body_images. Official counts: Zhuo et al., as quoted by ProFD."
    return ReidDataset("p_dukemtmc", dset, "image", splits, list(STANDARD), official, notes)
