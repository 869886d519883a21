"""``reidbench data parse`` end to end with a tiny random SegFormer built from a config,
the label -> LIP mapping, and the cloth-changing adapters reading the maps it writes
(and wiring the protocols CCAF reports)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_adapters import img, make_deepchange, make_prcc, make_vc

from reidbench.annotate.parse import LIP_CLASSES, LIP_PALETTE, lip_mapping, parsing_path
from reidbench.annotate.tiny import TINY_PARSING_LABELS, build_tiny_segformer
from reidbench.cli import main
from reidbench.datasets import DatasetLayoutError, build_dataset
from reidbench.harness.requirements import check_requirements


@pytest.fixture(scope="module")
def seg(tmp_path_factory) -> str:
    return build_tiny_segformer(str(tmp_path_factory.mktemp("seg")))


def parse(dataset: str, root: Path, model: str, *extra: str) -> int:
    return main(["data", "parse", "--dataset", dataset, "--root", str(root), "--model", model, *extra])


def image_samples(ds):
    return [s for name in ds.splits for s in ds.splits[name]]


# --------------------------------------------------------------------------- mapping

ATR_TO_LIP = {"Background": 0, "Hat": 1, "Hair": 2, "Sunglasses": 4, "Upper-clothes": 5, "Skirt": 12, "Pants": 9,
              "Dress": 6, "Left-shoe": 18, "Right-shoe": 19, "Face": 13, "Left-leg": 16, "Right-leg": 17,
              "Left-arm": 14, "Right-arm": 15, "Scarf": 11}


def test_labels_map_to_lip_by_config_names_and_a_mapping_file(tmp_path):
    assert lip_mapping(dict(enumerate(TINY_PARSING_LABELS))) == tuple(ATR_TO_LIP[n] for n in TINY_PARSING_LABELS)
    assert lip_mapping(dict(enumerate(LIP_CLASSES))) == tuple(range(20))
    atr = {0: "Background", 1: "upper_clothes", 2: "Belt", 3: "Bag", 4: "trousers"}
    with pytest.raises(ValueError, match=r"2 label\(s\) of the model have no LIP class: 2 'Belt', 3 'Bag'.*--label-map"):
        lip_mapping(atr)
    file = tmp_path / "map.json"
    file.write_text(json.dumps({"Belt": "Upper-clothes", "3": 0, "trousers": "Skirt"}))  # the file wins
    assert lip_mapping(atr, str(file)) == (0, 5, 5, 0, 12)
    file.write_text(json.dumps({"Belt": "Waist", "Bag": 0}))
    with pytest.raises(ValueError, match=r"entry 'Belt': 'Waist' is not a LIP class"):
        lip_mapping(atr, str(file))
    file.write_text(json.dumps({"Shoe": 18}))
    with pytest.raises(ValueError, match=r"the model has no label 'Shoe'; its labels are 0 Background"):
        lip_mapping(atr, str(file))
    with pytest.raises(ValueError, match=r"0 'LABEL_0'.*--label-map"):
        lip_mapping({0: "LABEL_0", 1: "LABEL_1"})


# --------------------------------------------------------------------------- parse


@functools.lru_cache(maxsize=2)
def _segmenter(model_dir: str):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    return (AutoImageProcessor.from_pretrained(model_dir, local_files_only=True),
            AutoModelForSemanticSegmentation.from_pretrained(model_dir, local_files_only=True).eval())


def expected_map(model_dir: str, image_path: str) -> np.ndarray:
    """The model's own prediction at the image's size, mapped to LIP by this test's table."""
    import torch

    processor, model = _segmenter(model_dir)
    image = Image.open(image_path).convert("RGB")
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    pred = processor.post_process_semantic_segmentation(type("O", (), {"logits": logits})(),
                                                        target_sizes=[(image.height, image.width)])[0].numpy()
    table = np.array([ATR_TO_LIP[model.config.id2label[i]] for i in range(len(model.config.id2label))])
    return table[pred]


def noisy(path: Path, seed: int) -> None:
    """An image with structure, so a random segmenter predicts more than one class."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path, "JPEG")


def test_parse_writes_lip_palette_maps_where_the_adapter_reads_them(tmp_path, seg, capsys):
    dset = make_prcc(tmp_path)
    for i, path in enumerate(sorted(dset.rglob("*.jpg"))):
        noisy(path, i)
    assert parse("prcc", tmp_path, seg) == 0
    ds = build_dataset("prcc", str(tmp_path))
    samples = image_samples(ds)
    assert samples and all(s.parsing_path for s in samples)
    labels_seen = set()
    for s in samples:
        rel = os.path.relpath(s.path, dset).replace(os.sep, "/")
        assert s.parsing_path == parsing_path(str(dset), rel) == str(dset / "parsing" / rel.replace(".jpg", ".png"))
        with Image.open(s.parsing_path) as im:
            assert im.mode == "P" and im.size == Image.open(s.path).size
            assert im.getpalette()[: 3 * 20] == LIP_PALETTE[: 3 * 20]
            written = np.asarray(im)
        np.testing.assert_array_equal(written, expected_map(seg, s.path))
        labels_seen |= set(np.unique(written).tolist())
    assert len(labels_seen) > 1
    record = json.loads((dset / "parsing" / "reidbench_parsing.json").read_text())
    assert record["maps"] == len(samples) and record["lip"]["Upper-clothes"] == "Upper-clothes"
    assert record["model"]["path"] == seg
    assert f"{len(samples)} written, 0 already there" in capsys.readouterr().out


def test_parse_resumes_skipping_the_maps_already_made(tmp_path, seg, capsys, monkeypatch):
    dset = make_prcc(tmp_path)
    assert parse("prcc", tmp_path, seg) == 0
    maps = sorted((dset / "parsing").rglob("*.png"))
    kept, removed = maps[2:], maps[:2]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    for p in removed:
        p.unlink()
    capsys.readouterr()
    assert parse("prcc", tmp_path, seg) == 0
    assert f"2 written, {len(kept)} already there, {len(maps)} of {len(maps)} images have a map" in capsys.readouterr().out
    assert all(p.exists() for p in removed) and {p: p.stat().st_mtime_ns for p in kept} == stamps
    assert not list((dset / "parsing").rglob("*.tmp"))
    # Another mapping is refused rather than mixed in.
    remap = tmp_path / "remap.json"
    remap.write_text(json.dumps({"Skirt": "Pants"}))
    assert parse("prcc", tmp_path, seg, "--label-map", str(remap)) == 2
    assert "another model or mapping (lip differ" in capsys.readouterr().err


def test_missing_maps_stop_with_how_to_make_them(tmp_path, seg):
    dset = make_prcc(tmp_path)
    ds = build_dataset("prcc", str(tmp_path))  # no maps at all: a method that needs none still runs
    assert not any(s.parsing_path for s in image_samples(ds))
    with pytest.raises(ValueError, match=r"requires parsing: 5 of 5 .*make them with reidbench data parse --dataset"):
        check_requirements(ds.splits["train"], ("parsing",), "ccaf", root=ds.root)
    assert parse("prcc", tmp_path, seg, "--split", "train") == 0  # only what training reads: fine
    assert all(s.parsing_path for s in build_dataset("prcc", str(tmp_path)).splits["train"])
    next((dset / "parsing" / "rgb" / "train").rglob("*.png")).unlink()  # an interrupted parse
    with pytest.raises(DatasetLayoutError, match=r"prcc: 1 of 5 images of split 'train' have no parsing map .*"
                                                 r"finish them with reidbench data parse --dataset prcc --root"):
        build_dataset("prcc", str(tmp_path))


# --------------------------------------------------------------------------- CCAF's protocols


def make_ltcc(base: Path) -> Path:
    dset = base / "LTCC_ReID"
    for name in ("001_1_c11_015909.png", "001_2_c3_000100.png", "045_1_c1_000001.png"):
        img(dset / "train" / name)
    img(dset / "query" / "094_1_c9_000001.png")
    for name in ("094_2_c12_000002.png", "094_1_c4_000003.png"):
        img(dset / "test" / name)
    return dset


# CCAF (MM'24) Table 1: LTCC general + cloth-changing, PRCC same-clothes + cloth-changing,
# VC-Clothes general + cloth-changing; Table 2: DeepChange. name -> (query, gallery, protocol)
CCAF_PROTOCOLS = {
    "ltcc": {"general": ("query", "gallery", "standard"), "cc": ("query", "gallery", "cc")},
    "prcc": {"same_clothes": ("query_same", "gallery", "standard"), "cc": ("query_diff", "gallery", "cc")},
    "vc_clothes": {"general": ("query", "gallery", "standard"), "cc": ("query", "gallery", "cc")},
    "deepchange": {"standard": ("query", "gallery", "standard")},
}


@pytest.mark.parametrize("name, make", [("ltcc", make_ltcc), ("prcc", make_prcc), ("vc_clothes", make_vc),
                                        ("deepchange", make_deepchange)])
def test_cloth_changing_adapters_read_parsed_maps_and_wire_ccafs_protocols(tmp_path, seg, name, make):
    make(tmp_path)
    ds = build_dataset(name, str(tmp_path))
    assert {e.name: (e.query, e.gallery, e.protocol) for e in ds.evaluations} == CCAF_PROTOCOLS[name]
    if name == "prcc":  # the same-clothes queries share the gallery's outfit, the cc ones do not
        gallery = {(s.pid, s.clothes_id) for s in ds.splits["gallery"]}
        assert all((s.pid, s.clothes_id) in gallery for s in ds.splits["query_same"])
        assert not any((s.pid, s.clothes_id) in gallery for s in ds.splits["query_diff"])
    assert parse(name, tmp_path, seg) == 0
    parsed = build_dataset(name, str(tmp_path))
    assert all(s.parsing_path and os.path.isfile(s.parsing_path) for s in image_samples(parsed))
    assert {s.parsing_path.split(f"{os.sep}parsing{os.sep}")[0] for s in image_samples(parsed)} == {parsed.root}
