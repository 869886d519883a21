"""``reidbench data check``: counts beside the official ones, --json schema, image
verification, and the exit codes / messages a user sees."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from reidbench.datasets.check import add_data_check_arguments, check_dataset, format_check, run_data_check

REPO = Path(__file__).resolve().parents[1]


def img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (10, 120, 200)).save(path, "JPEG")
    return path


def make_market(base: Path) -> Path:
    dset = base / "Market-1501-v15.09.15"
    for name in ("0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", "0004_c3s1_000003_00.jpg", "-1_c1s1_000004_00.jpg"):
        img(dset / "bounding_box_train" / name)
    img(dset / "query" / "0002_c1s1_000005_00.jpg")
    for name in ("0002_c2s1_000006_00.jpg", "0000_c3s1_000007_00.jpg"):
        img(dset / "bounding_box_test" / name)
    return dset


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_check_arguments(parser)
    return parser.parse_args(argv)


def test_check_reports_counts_and_official(tmp_path):
    make_market(tmp_path)
    report = check_dataset("market1501", str(tmp_path))
    assert report["dataset"] == "market1501"
    assert report["splits"] == {
        "train": {"images": 3, "ids": 2, "cameras": 3},
        "query": {"images": 1, "ids": 1, "cameras": 1},
        "gallery": {"images": 2, "ids": 2, "cameras": 2},
    }
    assert report["official"]["gallery"] == {"images": 15913, "ids": 751, "cameras": 6}
    assert report["unreadable"] == [] and report["verified"] is False


def test_json_schema(tmp_path, capsys):
    make_market(tmp_path)
    code = run_data_check(parse(["--dataset", "market1501", "--root", str(tmp_path), "--json", "--verify-images"]))
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"dataset", "splits", "official", "unreadable"} <= set(out)
    assert out["dataset"] == "market1501" and out["unreadable"] == [] and out["verified"] is True
    assert list(out["splits"]) == ["train", "query", "gallery"]
    for row in out["splits"].values():
        assert {"images", "ids", "cameras"} <= set(row) and all(isinstance(v, int) for v in row.values())
    assert out["evaluations"] == [{"name": "standard", "query": "query", "gallery": "gallery", "protocol": "standard"}]


def test_text_dataset_json_has_caption_counts(tmp_path, capsys):
    dset = tmp_path / "CUHK-PEDES"
    rows = []
    for i, (pid, split, caps) in enumerate([(1, "train", ["a", "b"]), (2, "test", ["c", "d", "e"])]):
        img(dset / "imgs" / f"{i}.jpg")
        rows.append({"id": pid, "file_path": f"{i}.jpg", "captions": caps, "split": split})
    (dset / "reid_raw.json").write_text(json.dumps(rows))
    assert run_data_check(parse(["--dataset", "cuhk_pedes", "--root", str(tmp_path), "--json"])) == 0
    splits = json.loads(capsys.readouterr().out)["splits"]
    assert list(splits) == ["train", "test_images", "test_texts"]
    assert splits["test_texts"] == {"images": 1, "ids": 1, "cameras": 1, "captions": 3}
    assert splits["train"]["captions"] == 2


def test_description_counts_show_when_the_dataset_has_descriptions(tmp_path, capsys):
    dset = make_market(tmp_path)
    meta = {"path": "bounding_box_train/0001_c1s1_000001_00.jpg", "caption": "c",
            "id_descriptions": {"terse": "t", "list": "l"}, "clothes_descriptions": {"terse": "red"}}
    (dset / "reidbench_meta.jsonl").write_text(json.dumps(meta) + "\n")
    assert run_data_check(parse(["--dataset", "market1501", "--root", str(tmp_path)])) == 0
    header, _, train = capsys.readouterr().out.splitlines()[1:4]
    assert header.split() == ["split", "images", "ids", "cameras", "captions", "id_descriptions", "clothes_descriptions"]
    assert train.split()[-3:] == ["1", "2", "1"]


def test_verify_images_lists_corrupt_jpeg(tmp_path, capsys):
    dset = make_market(tmp_path)
    good = (dset / "query" / "0002_c1s1_000005_00.jpg").read_bytes()
    corrupt = dset / "bounding_box_test" / "0002_c2s1_000006_00.jpg"
    corrupt.write_bytes(good[: len(good) // 2])  # truncated: header parses, pixels do not
    report = check_dataset("market1501", str(tmp_path), verify_images=True)
    assert [u["path"] for u in report["unreadable"]] == [str(corrupt)]
    assert report["unreadable"][0]["error"]
    code = run_data_check(parse(["--dataset", "market1501", "--root", str(tmp_path), "--verify-images"]))
    out = capsys.readouterr().out
    assert code == 1
    assert "1 unreadable image(s)" in out and str(corrupt) in out
    # without --verify-images the layout parses fine: decoding is what finds it
    assert run_data_check(parse(["--dataset", "market1501", "--root", str(tmp_path)])) == 0


def test_layout_error_exits_nonzero_with_message_no_traceback(tmp_path, capsys):
    dset = make_market(tmp_path)
    for f in (dset / "query").iterdir():
        f.unlink()
    (dset / "query").rmdir()
    code = run_data_check(parse(["--dataset", "market1501", "--root", str(tmp_path)]))
    err = capsys.readouterr().err
    assert code == 2
    assert "missing 'query'" in err and str(dset) in err and "Traceback" not in err


def test_unknown_dataset_suggests_closest(capsys, tmp_path):
    assert run_data_check(parse(["--dataset", "market1502", "--root", str(tmp_path)])) == 2
    assert "did you mean 'market1501'" in capsys.readouterr().err


def test_command_line_entry_point(tmp_path):
    make_market(tmp_path)
    (tmp_path / "Market-1501-v15.09.15" / "query" / "junk.jpg").write_bytes(b"x")
    run = subprocess.run(
        [sys.executable, "-m", "reidbench.datasets.check", "--dataset", "market1501", "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert run.returncode == 2
    assert "'junk.jpg'" in run.stderr and "<pid>_c<cam>s<seq>_<frame>_<box>.jpg" in run.stderr
    assert "Traceback" not in run.stderr


def test_format_marks_differences_from_official():
    report = {
        "dataset": "market1501", "task": "image", "root": "/data/Market-1501-v15.09.15",
        "splits": {"train": {"images": 12936, "ids": 751, "cameras": 6}, "query": {"images": 3368, "ids": 700, "cameras": 6}},
        "official": {
            "train": {"images": 12936, "ids": 751, "cameras": 6},
            "query": {"images": 3368, "ids": 750, "cameras": 6},
            "gallery": {"images": 15913, "ids": 751, "cameras": 6},
        },
        "evaluations": [], "verified": False, "unreadable": [],
    }
    lines = format_check(report).splitlines()
    train = next(line for line in lines if line.startswith("train"))
    query = next(line for line in lines if line.startswith("query"))
    gallery = next(line for line in lines if line.startswith("gallery"))
    assert "12,936 (12,936)" in train and "!" not in train
    assert "700 (750) !" in query and "3,368 (3,368)" in query
    assert "(missing)" in gallery and "- (15,913) !" in gallery
    assert any("differs" in line for line in lines)
    report["splits"]["query"]["ids"] = 750
    report["splits"]["gallery"] = {"images": 15913, "ids": 751, "cameras": 6}
    assert "all match" in format_check(report) and " !" not in format_check(report)
