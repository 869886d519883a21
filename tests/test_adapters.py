"""Every dataset adapter on small trees in the real layouts: exact records and counts,
root-path robustness, side-cars, and the layout errors users see."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from reidbench.datasets import DatasetLayoutError, build_dataset, list_datasets
from reidbench.datasets.adapters import read_side_car_meta

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 0)]


def img(path: Path, index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".tif": "TIFF"}.get(path.suffix.lower(), "JPEG")
    Image.new("RGB", (8, 16), COLORS[index % len(COLORS)]).save(path, fmt)
    return path


def names(samples):
    return [os.path.basename(s.path) for s in samples]


def records(samples):
    return [(os.path.basename(s.path), s.pid, s.camid, s.clothes_id) for s in samples]


# --------------------------------------------------------------------------- Market / Duke

MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s3_000100_00.jpg",
        "0011_c6s2_000200_02.jpg",
        "-1_c1s1_000001_00.jpg",
    ],
    "query": ["0002_c5s1_000001_00.jpg", "0007_c6s1_000002_00.jpg"],
    "bounding_box_test": [
        "0000_c1s1_000001_01.jpg",
        "0000_c4s1_000009_01.jpg",
        "-1_c3s1_000002_00.jpg",
        "0002_c1s1_000003_00.jpg",
        "0007_c2s1_000004_00.jpg",
        "0099_c3s1_000005_00.jpg",
    ],
}


def make_market(base: Path, folder: str = "Market-1501-v15.09.15") -> Path:
    dset = base / folder
    for sub, files in MARKET_FILES.items():
        for i, name in enumerate(files):
            img(dset / sub / name, i)
    (dset / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    return dset


def test_registry_lists_every_benchmark():
    expected = {
        "market1501", "dukemtmc", "msmt17", "occluded_duke", "occluded_reid", "p_dukemtmc", "prcc", "ltcc",
        "vc_clothes", "deepchange", "cuhk_pedes", "icfg_pedes", "rstpreid",
    }
    assert expected <= set(list_datasets())
    assert list_datasets("icfg*") == ["icfg_pedes"]


def test_market_drops_junk_keeps_distractors_and_ignores_root_names(tmp_path):
    # torchreid's regex on the full path would read pid 2 / camera 3 from "exp2_c3".
    root = tmp_path / "exp2_c3" / "reid_code"
    dset = make_market(root)
    ds = build_dataset("market1501", str(root))
    assert ds.root == str(dset)
    assert ds.task == "image"
    assert records(ds.splits["train"]) == [
        ("0002_c1s1_000451_03.jpg", 0, 0, None),
        ("0002_c2s1_000551_01.jpg", 0, 1, None),
        ("0007_c3s3_000100_00.jpg", 1, 2, None),
        ("0011_c6s2_000200_02.jpg", 2, 5, None),
    ]
    assert records(ds.splits["query"]) == [("0002_c5s1_000001_00.jpg", 2, 4, None), ("0007_c6s1_000002_00.jpg", 7, 5, None)]
    gallery = records(ds.splits["gallery"])
    assert [r[1] for r in gallery] == [0, 0, 2, 7, 99]  # -1 dropped, 0000 distractors kept with pid 0
    assert [r[2] for r in gallery] == [0, 3, 0, 1, 2]
    assert ds.summary() == {
        "train": {"images": 4, "ids": 3, "cameras": 4},
        "query": {"images": 2, "ids": 2, "cameras": 2},
        "gallery": {"images": 5, "ids": 4, "cameras": 4},
    }
    assert [(e.name, e.query, e.gallery, e.protocol) for e in ds.evaluations] == [("standard", "query", "gallery", "standard")]
    assert ds.official["train"] == {"images": 12936, "ids": 751, "cameras": 6}
    assert all(os.path.isfile(s.path) for split in ds.splits.values() for s in split)


def test_market_root_may_be_the_dataset_folder_or_torchreid_nesting(tmp_path):
    dset = make_market(tmp_path / "a")
    nested = make_market(tmp_path / "b" / "market1501")
    for root, expected in ((dset, dset), (tmp_path / "b", nested)):
        ds = build_dataset("market1501", str(root))
        assert ds.root == str(expected)
        assert ds.summary()["gallery"]["images"] == 5


def test_duke_eight_cameras_and_root_with_camera_like_name(tmp_path):
    root = tmp_path / "runs_c5" / "0042_c7_data"
    dset = root / "DukeMTMC-reID"
    img(dset / "bounding_box_train" / "0001_c2_f0046182.jpg")
    img(dset / "bounding_box_train" / "0001_c8_f0046999.jpg")
    img(dset / "bounding_box_train" / "0005_c1_f0000001.jpg")
    img(dset / "query" / "0005_c3_f0000002.jpg")
    img(dset / "bounding_box_test" / "0005_c4_f0000003.jpg")
    img(dset / "bounding_box_test" / "7000_c6_f0000004.jpg")
    ds = build_dataset("dukemtmc", str(root))
    assert records(ds.splits["train"]) == [
        ("0001_c2_f0046182.jpg", 0, 1, None),
        ("0001_c8_f0046999.jpg", 0, 7, None),
        ("0005_c1_f0000001.jpg", 1, 0, None),
    ]
    assert records(ds.splits["query"]) == [("0005_c3_f0000002.jpg", 5, 2, None)]
    assert [(s.pid, s.camid) for s in ds.splits["gallery"]] == [(5, 3), (7000, 5)]


def test_occluded_duke_uses_duke_names(tmp_path):
    dset = tmp_path / "Occluded_Duke"
    img(dset / "bounding_box_train" / "0001_c2_f0046182.jpg")
    img(dset / "query" / "0003_c1_f0000001.jpg")
    img(dset / "bounding_box_test" / "0003_c5_f0000002.jpg")
    ds = build_dataset("occluded_duke", str(tmp_path))
    assert records(ds.splits["query"]) == [("0003_c1_f0000001.jpg", 3, 0, None)]
    assert ds.splits["gallery"][0].camid == 4
    assert ds.official["query"] == {"images": 2210, "ids": 519}


# --------------------------------------------------------------------------- MSMT17

MSMT_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_07_0303noon_0016_1.jpg 0",
                       "0003/0003_000_15_0303afternoon_0001_0.jpg 3"],
    "list_val.txt": ["0001/0001_000_02_0303morning_0020_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_03_0113morning_0001_0.jpg 0", "0002/0002_000_04_0113morning_0002_0.jpg 2"],
    "list_gallery.txt": ["0000/0000_001_05_0113noon_0003_0.jpg 0", "0002/0002_001_12_0113noon_0004_0.jpg 2",
                         "0009/0009_000_09_0113noon_0005_0.jpg 9"],
}


def make_msmt(base: Path, version: str) -> Path:
    dset = base / version
    train_dir, test_dir = ("train", "test") if version == "MSMT17_V1" else ("mask_train_v2", "mask_test_v2")
    for list_name, lines in MSMT_LISTS.items():
        folder = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        for i, line in enumerate(lines):
            img(dset / folder / line.split()[0], i)
        (dset / list_name).write_text("\n".join(lines) + "\n")
    return dset


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_versions_join_val_and_read_camera_from_third_field(tmp_path, version):
    root = tmp_path / "data_c2"
    dset = make_msmt(root, version)
    ds = build_dataset("msmt17", str(root))
    assert ds.root == str(dset)
    assert version in ds.notes
    # list_val joins training (the published 32,621-image training set); pids relabelled.
    assert [(s.pid, s.camid) for s in ds.splits["train"]] == [(0, 0), (0, 6), (2, 14), (1, 1)]
    assert [(s.pid, s.camid) for s in ds.splits["query"]] == [(0, 2), (2, 3)]
    assert [(s.pid, s.camid) for s in ds.splits["gallery"]] == [(0, 4), (2, 11), (9, 8)]
    train_dir = "train" if version == "MSMT17_V1" else "mask_train_v2"
    assert ds.splits["train"][0].path == str(dset / train_dir / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert ds.summary()["train"] == {"images": 4, "ids": 3, "cameras": 4}
    assert ds.official["train"]["images"] == 32621


def test_msmt17_val_can_stay_apart(tmp_path):
    from reidbench.datasets.adapters.holistic import msmt17

    make_msmt(tmp_path, "MSMT17_V1")
    ds = msmt17(str(tmp_path), join_val=False)
    assert [s.pid for s in ds.splits["train"]] == [0, 0, 1]
    assert [(s.pid, s.camid) for s in ds.splits["val"]] == [(1, 1)]
    assert "train" not in ds.official


def test_msmt17_bad_list_line_and_missing_listed_file(tmp_path):
    dset = make_msmt(tmp_path, "MSMT17_V1")
    (dset / "list_query.txt").write_text("0000/0000_000_03_0113morning_0001_0.jpg 0\n0002/garbage.jpg 2\n")
    with pytest.raises(DatasetLayoutError, match=r"list_query\.txt.*line 2: 0002/garbage\.jpg 2"):
        build_dataset("msmt17", str(tmp_path))
    (dset / "list_query.txt").write_text("0004/0004_000_03_0113morning_0001_0.jpg 4\n")
    with pytest.raises(DatasetLayoutError, match=r"listed in .*list_query\.txt.* missing: .*0004_000_03"):
        build_dataset("msmt17", str(tmp_path))


# --------------------------------------------------------------------------- occluded sets

def test_occluded_reid_query_occluded_cam0_gallery_whole_cam1(tmp_path):
    dset = tmp_path / "Occluded_REID"
    for pid in ("001", "002"):
        for k in (1, 2):
            img(dset / "occluded_body_images" / pid / f"{pid}_{k:02d}.tif", k)
            img(dset / "whole_body_images" / pid / f"{pid}_{k:02d}.tif", k)
    img(dset / "whole_body_images" / "003" / "003_01.tif")
    ds = build_dataset("occluded_reid", str(dset))
    assert set(ds.splits) == {"query", "gallery"}  # no training split
    assert [(s.pid, s.camid, s.occluded) for s in ds.splits["query"]] == [(1, 0, True)] * 2 + [(2, 0, True)] * 2
    assert [(s.pid, s.camid, s.occluded) for s in ds.splits["gallery"]] == [(1, 1, False)] * 2 + [(2, 1, False)] * 2 + [(3, 1, False)]
    assert ds.summary()["gallery"] == {"images": 5, "ids": 3, "cameras": 1}


def test_p_dukemtmc_train_mixes_both_kinds_test_splits_by_kind(tmp_path):
    dset = tmp_path / "P-DukeMTMC-reID"
    img(dset / "train" / "occluded_body_images" / "0005" / "0005_c2_f0046985.jpg")
    img(dset / "train" / "whole_body_images" / "0005" / "0005_c1_f0046000.jpg")
    img(dset / "train" / "whole_body_images" / "0012" / "0012_c3_f0000001.jpg")
    img(dset / "test" / "occluded_body_images" / "0100" / "0100_c2_f0000001.jpg")
    img(dset / "test" / "whole_body_images" / "0100" / "0100_c5_f0000002.jpg")
    img(dset / "test" / "whole_body_images" / "0101" / "0101_c5_f0000003.jpg")
    ds = build_dataset("p_dukemtmc", str(tmp_path))
    assert [(s.pid, s.camid, s.occluded) for s in ds.splits["train"]] == [(0, 0, True), (0, 1, False), (1, 1, False)]
    assert [(s.pid, s.camid) for s in ds.splits["query"]] == [(100, 0)]
    assert [(s.pid, s.camid) for s in ds.splits["gallery"]] == [(100, 1), (101, 1)]


# --------------------------------------------------------------------------- cloth-changing sets

def make_prcc(base: Path) -> Path:
    rgb = base / "prcc" / "rgb"
    for name in ("A_cropped_rgb001.jpg", "B_cropped_rgb010.jpg", "C_cropped_rgb020.jpg"):
        img(rgb / "train" / "003" / name)
    for name in ("A_cropped_rgb002.jpg", "B_cropped_rgb003.jpg"):
        img(rgb / "train" / "005" / name)
    img(rgb / "val" / "003" / "C_cropped_rgb900.jpg")
    for cam, pids in (("A", ("101", "102")), ("B", ("101",)), ("C", ("101", "102"))):
        for pid in pids:
            img(rgb / "test" / cam / pid / "cropped_rgb001.jpg")
    return base / "prcc"


def test_prcc_cameras_clothes_and_protocols(tmp_path):
    root = tmp_path / "exp_c3"
    make_prcc(root)
    ds = build_dataset("prcc", str(root))
    # A and B share an outfit, C is another: pid 3 has two clothes ids, pid 5 one.
    assert records(ds.splits["train"]) == [
        ("A_cropped_rgb001.jpg", 0, 0, 0),
        ("B_cropped_rgb010.jpg", 0, 1, 0),
        ("C_cropped_rgb020.jpg", 0, 2, 1),
        ("A_cropped_rgb002.jpg", 1, 0, 2),
        ("B_cropped_rgb003.jpg", 1, 1, 2),
    ]
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["gallery"]] == [(101, 0, 0), (102, 0, 0)]
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["query_same"]] == [(101, 1, 0)]
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["query_diff"]] == [(101, 2, 1), (102, 2, 1)]
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["val"]] == [(3, 2, 1)]
    assert [(e.name, e.query, e.gallery, e.protocol) for e in ds.evaluations] == [
        ("same_clothes", "query_same", "gallery", "standard"),
        ("cc", "query_diff", "gallery", "cc"),
    ]
    assert ds.summary()["train"] == {"images": 5, "ids": 2, "cameras": 3, "clothes": 3}


def test_prcc_bad_camera_letter_is_reported(tmp_path):
    make_prcc(tmp_path)
    img(tmp_path / "prcc" / "rgb" / "train" / "005" / "D_cropped_rgb009.jpg")
    with pytest.raises(DatasetLayoutError, match=r"pattern '<pid>/<A\|B\|C>\*\.jpg'.*'005/D_cropped_rgb009\.jpg'"):
        build_dataset("prcc", str(tmp_path))


def test_ltcc_names_give_pid_clothes_camera(tmp_path):
    dset = tmp_path / "LTCC_ReID"
    for name in ("001_1_c11_015909.png", "001_2_c3_000100.png", "045_1_c1_000001.png"):
        img(dset / "train" / name)
    img(dset / "query" / "094_1_c9_000001.png")
    img(dset / "test" / "094_2_c12_000002.png")
    img(dset / "test" / "094_1_c4_000003.png")
    ds = build_dataset("ltcc", str(tmp_path))
    assert records(ds.splits["train"]) == [
        ("001_1_c11_015909.png", 0, 10, 0),
        ("001_2_c3_000100.png", 0, 2, 1),
        ("045_1_c1_000001.png", 1, 0, 2),
    ]
    assert records(ds.splits["query"]) == [("094_1_c9_000001.png", 94, 8, 1)]
    assert records(ds.splits["gallery"]) == [("094_1_c4_000003.png", 94, 3, 1), ("094_2_c12_000002.png", 94, 11, 2)]
    assert [(e.name, e.protocol) for e in ds.evaluations] == [("general", "standard"), ("cc", "cc")]
    assert ds.summary()["gallery"] == {"images": 2, "ids": 1, "cameras": 2, "clothes": 2}


def make_vc(base: Path) -> Path:
    dset = base / "VC-Clothes"
    for name in ("0001-01-01-01.jpg", "0001-03-02-05.jpg", "0002-02-01-01.jpg"):
        img(dset / "train" / name)
    for name in ("0300-02-01-01.jpg", "0300-03-01-02.jpg", "0300-04-02-03.jpg", "0300-01-01-04.jpg"):
        img(dset / "query" / name)
        img(dset / "gallery" / name.replace(".jpg", "9.jpg"))
    return dset


def test_vc_clothes_modes(tmp_path):
    make_vc(tmp_path)
    ds = build_dataset("vc_clothes", str(tmp_path))
    assert records(ds.splits["train"]) == [
        ("0001-01-01-01.jpg", 0, 0, 0),
        ("0001-03-02-05.jpg", 0, 2, 1),
        ("0002-02-01-01.jpg", 1, 1, 2),
    ]
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["query"]] == [(300, 0, 1), (300, 1, 1), (300, 2, 1), (300, 3, 2)]
    assert [e.name for e in ds.evaluations] == ["general", "cc"]
    sc = build_dataset("vc_clothes_sc", str(tmp_path))
    assert sorted({s.camid for s in sc.splits["query"]}) == [1, 2]  # cameras 2 and 3
    assert len(sc.splits["train"]) == 3  # training keeps every camera
    cc = build_dataset("vc_clothes_cc", str(tmp_path))
    assert sorted({s.camid for s in cc.splits["gallery"]}) == [2, 3]  # cameras 3 and 4


def make_deepchange(base: Path) -> Path:
    dset = base / "DeepChangeDataset"
    lists = {
        "train-set": ["P00001_C01_D20190511_H09_0001_0001.jpg,1", "P00001_C07_D20190601_H10_0002_0001.jpg,2",
                      "P00004_C17_D20190511_H11_0003_0001.jpg,3"],
        "val-set-query": ["P00500_C02_D20190701_H09_0001_0001.jpg,10"],
        "val-set-gallery": ["P00500_C02_D20190702_H09_0001_0002.jpg,11"],
        "test-set-query": ["P00900_C03_D20190801_H09_0001_0001.jpg,20"],
        "test-set-gallery": ["P00900_C03_D20190801_H10_0001_0003.jpg,21", "P00900_C05_D20190901_H10_0001_0004.jpg,22"],
    }
    for folder, lines in lists.items():
        for i, line in enumerate(lines):
            img(dset / folder / line.split(",")[0], i)
        (dset / f"{folder}-bbox.txt").write_text("\n".join(lines) + "\n")
    return dset


def test_deepchange_lists_tracklets_and_unknown_clothes(tmp_path):
    from reidbench.datasets.adapters.clothes import deepchange

    make_deepchange(tmp_path)
    ds = build_dataset("deepchange", str(tmp_path))
    assert [(s.pid, s.camid, s.clothes_id) for s in ds.splits["train"]] == [(0, 0, None), (0, 6, None), (1, 16, None)]
    # DeepChange protocol: same camera but another tracklet is a true match -> camid = tracklet id.
    assert [(s.pid, s.camid) for s in ds.splits["query"]] == [(900, 20)]
    assert [(s.pid, s.camid) for s in ds.splits["gallery"]] == [(900, 21), (900, 22)]
    assert [(s.pid, s.camid) for s in ds.splits["val_query"]] == [(500, 10)]
    assert set(ds.splits) == {"train", "val_query", "val_gallery", "query", "gallery"}
    by_camera = deepchange(str(tmp_path), test_camid="camera", clothes_from_day=True)
    assert [(s.pid, s.camid) for s in by_camera.splits["gallery"]] == [(900, 2), (900, 4)]
    assert [s.clothes_id for s in by_camera.splits["train"]] == [0, 1, 2]  # (pid, day) surrogate
    gallery_clothes = [s.clothes_id for s in by_camera.splits["gallery"]]
    assert gallery_clothes[0] != gallery_clothes[1]  # different days


def test_deepchange_list_without_tracklet_is_reported(tmp_path):
    dset = make_deepchange(tmp_path)
    (dset / "test-set-query-bbox.txt").write_text("P00900_C03_D20190801_H09_0001_0001.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"test-set-query-bbox\.txt.*line 1"):
        build_dataset("deepchange", str(tmp_path))


# --------------------------------------------------------------------------- text-to-image sets

def write_pedes(dset: Path, annotation: str, path_key: str, entries: list[tuple[int, str, list[str], str]]) -> None:
    rows = []
    for i, (pid, rel, captions, split) in enumerate(entries):
        img(dset / "imgs" / rel, i)
        rows.append({"id": pid, path_key: rel, "captions": captions, "split": split, "processed_tokens": []})
    (dset / annotation).write_text(json.dumps(rows))


def test_cuhk_pedes_splits_and_one_text_per_caption(tmp_path):
    dset = tmp_path / "CUHK-PEDES"
    write_pedes(dset, "reid_raw.json", "file_path", [
        (1, "CUHK01/0001001.png", ["a man in red.", "red shirt man."], "train"),
        (1, "CUHK01/0001002.png", ["man, red shirt."], "train"),
        (7, "Market/0007_c1.jpg", ["a woman in blue.", "blue dress."], "train"),
        (12001, "test_query/p1_s1.jpg", ["tall man, black coat.", "black coat."], "test"),
        (12002, "test_query/p2_s2.jpg", ["girl with umbrella."], "test"),
        (11500, "val/p3.jpg", ["old man.", "grey hair man."], "val"),
    ])
    ds = build_dataset("cuhk_pedes", str(tmp_path))
    assert ds.task == "text"
    assert [(s.pid, len(s.texts_of("caption"))) for s in ds.splits["train"]] == [(0, 2), (0, 1), (1, 2)]
    assert ds.splits["train"][0].texts == (("caption", "", "a man in red."), ("caption", "", "red shirt man."))
    assert [(s.pid, s.texts_of("caption")) for s in ds.splits["test_texts"]] == [
        (12001, ("tall man, black coat.",)), (12001, ("black coat.",)), (12002, ("girl with umbrella.",))
    ]
    assert names(ds.splits["test_texts"]) == ["p1_s1.jpg", "p1_s1.jpg", "p2_s2.jpg"]
    assert [(s.pid, s.texts) for s in ds.splits["test_images"]] == [(12001, ()), (12002, ())]
    summary = ds.summary()
    assert {k: summary[k] for k in ("train", "val_images", "test_images", "test_texts")} == {
        "train": {"images": 3, "ids": 2, "cameras": 1, "captions": 5},
        "val_images": {"images": 1, "ids": 1, "cameras": 1},
        "test_images": {"images": 2, "ids": 2, "cameras": 1},
        "test_texts": {"images": 2, "ids": 2, "cameras": 1, "captions": 3},
    }
    assert (summary["val_texts"]["ids"], summary["val_texts"]["captions"]) == (1, 2)
    assert [(e.name, e.query, e.gallery, e.protocol) for e in ds.evaluations] == [("t2i", "test_texts", "test_images", "t2i")]


def test_icfg_pedes_has_no_val_and_rejects_unknown_split(tmp_path):
    dset = tmp_path / "ICFG-PEDES"
    write_pedes(dset, "ICFG-PEDES.json", "file_path", [
        (5, "train/0005/0005_001.jpg", ["man."], "train"),
        (9, "test/0009/0009_001.jpg", ["woman."], "test"),
    ])
    ds = build_dataset("icfg_pedes", str(tmp_path))
    assert set(ds.splits) == {"train", "test_images", "test_texts"}
    write_pedes(dset, "ICFG-PEDES.json", "file_path", [(5, "a.jpg", ["x"], "train"), (9, "b.jpg", ["y"], "val")])
    with pytest.raises(DatasetLayoutError, match=r"entry 1 .*unknown split 'val'"):
        build_dataset("icfg_pedes", str(tmp_path))


def test_rstpreid_img_path_key_and_val(tmp_path):
    dset = tmp_path / "RSTPReid"
    write_pedes(dset, "data_captions.json", "img_path", [
        (0, "0000_c14_0031.jpg", ["c1", "c2"], "train"),
        (3, "0003_c2_0001.jpg", ["c3", "c4"], "train"),
        (3800, "3800_c1_0001.jpg", ["c5", "c6"], "val"),
        (3900, "3900_c1_0001.jpg", ["c7", "c8"], "test"),
    ])
    ds = build_dataset("rstpreid", str(dset))
    assert [s.pid for s in ds.splits["train"]] == [0, 1]
    assert [s.texts_of("caption") for s in ds.splits["val_texts"]] == [("c5",), ("c6",)]
    assert ds.summary()["test_texts"] == {"images": 1, "ids": 1, "cameras": 1, "captions": 2}


def test_text_annotation_missing_key_or_image(tmp_path):
    dset = tmp_path / "RSTPReid"
    write_pedes(dset, "data_captions.json", "file_path", [(0, "a.jpg", ["c"], "train")])
    with pytest.raises(DatasetLayoutError, match=r"entry 0 .*lacks 'img_path'"):
        build_dataset("rstpreid", str(tmp_path))
    (dset / "data_captions.json").write_text(json.dumps([{"id": 0, "img_path": "gone.jpg", "captions": ["c"], "split": "train"}]))
    with pytest.raises(DatasetLayoutError, match=r"missing: .*gone\.jpg"):
        build_dataset("rstpreid", str(tmp_path))
    write_pedes(dset, "data_captions.json", "img_path", [(0, "a.jpg", ["c"], "train"), (1, "b.jpg", ["ok", " "], "test")])
    with pytest.raises(DatasetLayoutError, match=r"entry 1 .*\"captions\" must be a list of non-empty strings"):
        build_dataset("rstpreid", str(tmp_path))


# --------------------------------------------------------------------------- layout errors

def test_missing_folder_is_named_with_the_expected_layout(tmp_path):
    dset = make_market(tmp_path)
    for f in (dset / "bounding_box_test").iterdir():
        f.unlink()
    (dset / "bounding_box_test").rmdir()
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("market1501", str(tmp_path))
    message = str(err.value)
    assert "missing 'bounding_box_test'" in message
    assert str(dset) in message
    assert "ROOT/Market-1501-v15.09.15/" in message and "query/" in message


def test_root_without_dataset_lists_where_it_looked(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("prcc", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "prcc") in message and "something_else/" in message and "rgb/" in message
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("ltcc", str(tmp_path / "nope"))
    with pytest.raises(DatasetLayoutError, match="no root folder given"):
        build_dataset("ltcc", None)


def test_unparsable_names_list_the_first_few_and_the_pattern(tmp_path):
    dset = make_market(tmp_path)
    bad = [f"IMG_{i:04d}.jpg" for i in range(7)]
    for name in bad:
        img(dset / "query" / name)
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("market1501", str(tmp_path))
    message = str(err.value)
    assert "7 name(s)" in message and str(dset / "query") in message
    assert all(name in message for name in bad[:5]) and bad[6] not in message and "and 2 more" in message
    assert "<pid>_c<cam>s<seq>_<frame>_<box>.jpg" in message


def test_empty_split_is_an_error(tmp_path):
    dset = make_market(tmp_path)
    for f in (dset / "query").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match=r"split 'query' is empty.*0002_c1s1_000451_03\.jpg"):
        build_dataset("market1501", str(tmp_path))


def test_only_junk_leaves_split_empty(tmp_path):
    dset = make_market(tmp_path)
    for f in (dset / "query").iterdir():
        f.unlink()
    img(dset / "query" / "-1_c1s1_000001_00.jpg")
    with pytest.raises(DatasetLayoutError, match="split 'query' is empty"):
        build_dataset("market1501", str(tmp_path))


# --------------------------------------------------------------------------- side-cars

def test_side_cars_attach_when_present_and_only_then(tmp_path):
    dset = make_market(tmp_path)
    rel = "query/0002_c5s1_000001_00.jpg"
    for kind in ("masks", "parsing"):
        (dset / kind / "query").mkdir(parents=True)
        Image.new("L", (8, 16)).save(dset / kind / "query" / "0002_c5s1_000001_00.png")
    meta = {
        "path": rel, "pid": 2, "camid": 4, "clothes_id": 3, "occluded": True, "attributes": {"upper": "red"},
        "caption": "A photo of a man in a red shirt.", "id_descriptions": {"terse": "tall man"},
        "clothes_descriptions": {"terse": "red shirt"},
    }
    (dset / "reidbench_meta.jsonl").write_text(json.dumps(meta) + "\n\n")
    ds = build_dataset("market1501", str(tmp_path))
    with_cars, without = ds.splits["query"]
    assert with_cars.mask_path == str(dset / "masks" / "query" / "0002_c5s1_000001_00.png")
    assert with_cars.parsing_path == str(dset / "parsing" / "query" / "0002_c5s1_000001_00.png")
    assert (with_cars.clothes_id, with_cars.occluded) == (3, True)
    assert with_cars.texts == (("caption", "", "A photo of a man in a red shirt."), ("id_description", "terse", "tall man"),
                               ("clothes_description", "terse", "red shirt"))
    assert (without.mask_path, without.parsing_path, without.clothes_id, without.texts, without.occluded) == (None, None, None, (), None)
    assert ds.summary()["query"] == {"images": 2, "ids": 2, "cameras": 2, "clothes": 1, "captions": 1,
                                     "id_descriptions": 1, "clothes_descriptions": 1}
    assert read_side_car_meta(ds.root)[rel]["id_descriptions"] == {"terse": "tall man"}


def test_side_car_meta_never_overrides_layout_or_annotations(tmp_path):
    dset = make_prcc(tmp_path)
    rel = "rgb/test/C/101/cropped_rgb001.jpg"
    (dset / "reidbench_meta.jsonl").write_text(json.dumps({"path": rel, "clothes_id": 9, "caption": "x", "occluded": False}) + "\n")
    ds = build_dataset("prcc", str(tmp_path))
    q = ds.splits["query_diff"][0]
    assert (q.clothes_id, q.texts_of("caption"), q.occluded) == (1, ("x",), False)
    pedes = tmp_path / "CUHK-PEDES"
    write_pedes(pedes, "reid_raw.json", "file_path", [(1, "a.jpg", ["real"], "train"), (2, "b.jpg", ["t"], "test")])
    (pedes / "reidbench_meta.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"path": "imgs/a.jpg", "caption": "template", "id_descriptions": {"terse": "a man", "list": "gender: man"}},
        {"path": "imgs/b.jpg", "caption": "template", "clothes_descriptions": {"terse": "red shirt"}}]) + "\n")
    text = build_dataset("cuhk_pedes", str(tmp_path))
    # The annotations' captions stay; the descriptions arrive on the images, never on a text query.
    assert text.splits["train"][0].texts == (("caption", "", "real"), ("id_description", "terse", "a man"),
                                             ("id_description", "list", "gender: man"))
    assert text.splits["test_images"][0].texts == (("clothes_description", "terse", "red shirt"),)
    assert text.splits["test_texts"][0].texts == (("caption", "", "t"),)


def test_broken_meta_line_is_reported(tmp_path):
    dset = make_market(tmp_path)
    (dset / "reidbench_meta.jsonl").write_text('{"path": "query/a.jpg"}\n{not json\n')
    with pytest.raises(DatasetLayoutError, match=r"reidbench_meta\.jsonl, line 2"):
        build_dataset("market1501", str(tmp_path))
    rel = "query/0002_c5s1_000001_00.jpg"
    (dset / "reidbench_meta.jsonl").write_text(json.dumps({"path": rel, "id_descriptions": "tall man"}) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"reidbench_meta\.jsonl \(query/0002_c5s1_000001_00\.jpg\): "
                                                  r"\"id_descriptions\" must be a non-empty object"):
        build_dataset("market1501", str(tmp_path))
