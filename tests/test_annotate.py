"""``reidbench data caption | styles | describe`` end to end with a tiny random LLaVA built
from a config (no downloads): its texts are gibberish, so the tests check the machinery
(resume, checks and their counts, provenance, the texts-file format, Ray workers) and
that a caption file trains CLIP-SCGI through ``data.texts``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from reidbench.annotate.caption import INSTRUCTION, check_caption
from reidbench.annotate.describe import check_description, pick_style
from reidbench.annotate.styles import cluster, purity, style_prompt
from reidbench.annotate.work import sha256_text
from reidbench.cli import main
from reidbench.datasets import build_dataset
from reidbench.datasets.texts import apply_texts_files, read_texts_file

TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_000100_00.jpg", "0007_c1s1_000200_00.jpg"]
MARKET = {"bounding_box_train": TRAIN, "query": ["0002_c5s1_000001_00.jpg", "0007_c1s1_000002_00.jpg"],
          "bounding_box_test": ["0002_c6s1_000003_00.jpg", "0007_c4s1_000004_00.jpg"]}
TOKENS = ["--max-new-tokens", "12"]


def make_market(base: Path, meta: list[dict] | None = None) -> Path:
    dset = base / "Market-1501-v15.09.15"
    for sub, files in MARKET.items():
        for i, name in enumerate(files):
            (dset / sub).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 32), (60 * i % 255, 90 + 30 * (sub == "query"), 120)).save(dset / sub / name)
    if meta:
        (dset / "reidbench_meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return base


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> str:
    from reidbench.annotate.tiny import build_tiny_vlm

    return build_tiny_vlm(str(tmp_path_factory.mktemp("vlm")))


@pytest.fixture()
def market(tmp_path) -> Path:
    return make_market(tmp_path / "data")


def caption(root: Path, vlm: str, out: Path, *extra: str) -> int:
    return main(["data", "caption", "--dataset", "market1501", "--root", str(root), "--model", vlm, "--out", str(out),
                 *TOKENS, *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(out: Path) -> dict:
    return json.loads(Path(str(out) + ".summary.json").read_text())["last_run"]


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("text, failed", [
    ("A young man is wearing a red shirt. He carries a bag.", []),
    ("   ", ["empty"]),
    ("word " * 46, ["too_long"]),
    ("A [age] man is wearing a red shirt.", ["unfilled_slot"]),
    ("A young man ] is wearing", ["unfilled_slot"]),
    ("Describe the most obvious one people: a man.", ["echoes_prompt"]),
])
def test_caption_checks(text, failed):
    assert check_caption(text) == failed


@pytest.mark.parametrize("text, kind, failed", [
    ("A tall young man with short black hair.", "identity", []),
    ("A tall man wearing a red shirt.", "identity", ["mentions_clothing"]),
    ("A red shirt and black trousers.", "clothing", []),
    ("top: red shirt (plain; bottom: jeans", "clothing", ["unbalanced"]),
    ("red red red red shirt", "clothing", ["repetition"]),
    ("the red shirt, the red shirt, the red shirt", "clothing", ["repetition"]),
    ("12 34 56 78 ###", "clothing", ["not_text"]),
    ("Describe the person's clothing: a shirt.", "clothing", ["echoes_prompt"]),
])
def test_description_checks(text, kind, failed):
    assert check_description(text, kind) == failed


# --------------------------------------------------------------------------- caption


def test_caption_writes_a_texts_file_with_provenance_that_data_texts_reads(market, vlm, tmp_path):
    out = tmp_path / "captions.jsonl"
    assert caption(market, vlm, out) == 0
    rows = lines(out)
    assert sorted(r["path"] for r in rows) == sorted(f"bounding_box_train/{n}" for n in TRAIN)  # --split train
    dataset = build_dataset("market1501", str(market))
    parsed = dict(read_texts_file(str(out), {f"bounding_box_train/{n}" for n in TRAIN}))
    assert len(parsed) == 4
    merged = apply_texts_files(dataset, str(out))
    by_path = {r["path"]: r["caption"] for r in rows}
    for sample in merged.splits["train"]:
        key = "bounding_box_train/" + Path(sample.path).name
        assert sample.texts_of("caption") == (by_path[key],)
    provenance = rows[0]["provenance"]
    assert provenance["model"]["path"] == vlm and provenance["model"]["architectures"] == ["LlavaForConditionalGeneration"]
    assert provenance["prompt_sha256"] == sha256_text(INSTRUCTION)
    assert provenance["generation"]["first"] == {"max_new_tokens": 12, "do_sample": False, "num_beams": 1}
    assert all(r["provenance"]["attempts"] >= 1 for r in rows)
    assert summary(out) == {**summary(out), "total": 4, "skipped": 0, "done": 4}


def test_caption_resumes_after_an_interruption_without_redoing_finished_images(market, vlm, tmp_path, monkeypatch):
    out = tmp_path / "captions.jsonl"
    assert caption(market, vlm, out) == 0
    full = out.read_text().splitlines(keepends=True)
    # Interrupted while writing the third line: two complete lines and half of one.
    out.write_text(full[0] + full[1] + full[2][: len(full[2]) // 2])
    from reidbench.annotate import vlm as vlm_module

    seen = []
    generate = vlm_module.Vlm.generate

    def spy(self, image_path, instruction, key, attempt):
        seen.append(key)
        return generate(self, image_path, instruction, key, attempt)

    monkeypatch.setattr(vlm_module.Vlm, "generate", spy)
    assert caption(market, vlm, out) == 0
    done_before = {json.loads(line)["path"] for line in full[:2]}
    assert set(seen) and not set(seen) & done_before, "a finished image was captioned again"
    assert sorted(out.read_text().splitlines(keepends=True)) == sorted(full)
    assert summary(out)["skipped"] == 2 and summary(out)["done"] == 2
    seen.clear()
    assert caption(market, vlm, out) == 0 and seen == []  # all done: nothing runs


def test_failed_checks_are_retried_counted_and_kept_apart(market, vlm, tmp_path, monkeypatch):
    from reidbench.annotate import vlm as vlm_module

    outputs = {  # per image key: one output per attempt
        "bounding_box_train/0002_c1s1_000451_03.jpg": ["A man is wearing a red shirt."],
        "bounding_box_train/0002_c2s1_000551_01.jpg": ["", "A [age] man.", "A man in red."],
        "bounding_box_train/0007_c3s3_000100_00.jpg": ["word " * 50, "", "A [gender]."],
        "bounding_box_train/0007_c1s1_000200_00.jpg": ["A woman is wearing a blue coat."],
    }
    monkeypatch.setattr(vlm_module.Vlm, "generate", lambda self, path, instruction, key, attempt: outputs[key][attempt])
    out = tmp_path / "captions.jsonl"
    assert caption(market, vlm, out) == 0
    assert summary(out) == {"total": 4, "skipped": 0, "done": 4, "ok": 3, "failed": 1, "attempts": 8, "retries": 4,
                            "checks_failed": {"empty": 2, "too_long": 1, "unfilled_slot": 2}}
    kept = {r["path"]: r for r in lines(out)}
    assert kept["bounding_box_train/0002_c2s1_000551_01.jpg"]["caption"] == "A man in red."
    assert kept["bounding_box_train/0002_c2s1_000551_01.jpg"]["provenance"]["attempts"] == 3
    failed = lines(Path(str(out) + ".failed.jsonl"))
    assert failed == [{"path": "bounding_box_train/0007_c3s3_000100_00.jpg", "output": "A [gender].",
                       "checks_failed": ["too_long", "empty", "unfilled_slot"], "attempts": 3}]
    # A failed image is not retried on resume, unless asked.
    assert caption(market, vlm, out) == 0 and summary(out)["done"] == 0
    assert caption(market, vlm, out, "--retry-failed") == 0 and summary(out)["done"] == 1


def test_caption_refuses_to_mix_settings_or_read_a_missing_model(market, vlm, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    assert caption(market, vlm, out, "--split", "query") == 0
    out.write_text(out.read_text() + '{"path": "query/00')  # and an interrupted line
    before = out.read_text()
    assert caption(market, vlm, out, "--split", "query", "--max-words", "30") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "checks differ" in err and "Traceback" not in err
    assert out.read_text() == before
    missing = tmp_path / "nowhere.jsonl"
    assert caption(market, str(tmp_path / "no-model"), missing) == 2
    assert "no config.json" in capsys.readouterr().err and not missing.exists()
    assert caption(market, vlm, missing, "--split", "bounding_box_train") == 2
    assert "has no image split 'bounding_box_train'" in capsys.readouterr().err


# --------------------------------------------------------------------------- styles + describe

STYLED = ("terse", "detailed", "list")


def styled_meta() -> list[dict]:
    meta = []
    for i, name in enumerate(TRAIN):
        meta.append({"path": f"bounding_box_train/{name}", "id_descriptions": {
            "terse": f"A man {i}.", "detailed": f"The person is a man of build {i}. He has short hair. He walks.",
            "list": f"gender: man; build: {i}; hair: short"}})
    return meta


def test_purity_and_the_clustering_methods():
    import numpy as np

    assert purity(np.array([0, 0, 1, 1, -1]), ["a", "a", "b", "a", "b"]) == pytest.approx(3 / 4)
    assert purity(np.array([0, 1]), ["", ""]) is None
    points = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5 + [[-1.0, 0.0]])
    labels = cluster(points, "dbscan", eps=0.1, min_samples=3)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [-1]
    assert sorted(set(cluster(points, "kmeans", clusters=2).tolist())) == [0, 1]
    assert set(cluster(points, "random", clusters=3).tolist()) <= {0, 1, 2}
    assert style_prompt({"median_words": 8, "median_sentences": 1, "list_like": 0.0}) == \
        "Use a very terse style: about 8 words, in 1 sentence."
    assert "key-value" in style_prompt({"median_words": 30, "median_sentences": 1, "list_like": 0.9})


def test_styles_then_describe_write_descriptions_in_the_found_styles(tmp_path, vlm, capsys, monkeypatch):
    root = make_market(tmp_path / "data", styled_meta())
    styles_file = tmp_path / "styles.json"
    assert main(["data", "styles", "--dataset", "market1501", "--root", str(root), "--method", "kmeans",
                 "--clusters", "3", "--out", str(styles_file)]) == 0
    printed = capsys.readouterr().out
    styles = json.loads(styles_file.read_text())
    # 12 distinct texts, each with its recorded style; purity over them, printed.
    assert sum(s["size"] for s in styles["styles"]) + styles["noise"] == 12 == styles["provenance"]["texts"]
    truth = Counter(t for s in styles["styles"] for t, n in s["true_styles"].items() for _ in range(n))
    assert truth == {"terse": 4, "detailed": 4, "list": 4}
    majority = sum(max(s["true_styles"].values()) for s in styles["styles"])
    assert styles["purity"] == pytest.approx(majority / 12)
    assert f"purity against the recorded styles: {styles['purity']:.3f}" in printed
    assert all(s["prompt"].startswith("Use a ") for s in styles["styles"])

    out = tmp_path / "descriptions.jsonl"
    argv = ["data", "describe", "--dataset", "market1501", "--root", str(root), "--model", vlm, "--styles",
            str(styles_file), "--out", str(out), "--max-new-tokens", "6", "--split", "train,query"]
    from reidbench.annotate import vlm as vlm_module

    prompts = []
    generate = vlm_module.Vlm.generate

    def spy(self, image_path, instruction, key, attempt):
        prompts.append(instruction)
        return generate(self, image_path, instruction, key, attempt)

    monkeypatch.setattr(vlm_module.Vlm, "generate", spy)
    assert main(argv) == 0
    tally = summary(out)
    assert tally["ok"] + tally["failed"] == 6 == tally["total"]
    assert sum(tally["checks_failed"].values()) >= tally["failed"]
    assert all(p.startswith(("Describe the person's identity", "Describe the person's clothing")) for p in prompts)
    names = {s["name"]: s["prompt"] for s in styles["styles"]}
    assert {p.split(". ")[-1] for p in prompts} <= {v.split(". ")[-1] for v in names.values()}
    rows = lines(out)
    failed = lines(Path(str(out) + ".failed.jsonl")) if Path(str(out) + ".failed.jsonl").exists() else []
    assert len(rows) == tally["ok"] and len(failed) == tally["failed"]
    for row in rows:  # each image in one style, the one drawn for it
        style = pick_style(row["path"], styles["styles"])["name"]
        assert list(row["id_descriptions"]) == [style] == list(row["clothes_descriptions"])
        assert row["provenance"]["styles_sha256"] and row["provenance"]["prompt_sha256"]["identity"]
    if rows:
        merged = apply_texts_files(build_dataset("market1501", str(root)), str(out))
        described = [s for split in ("train", "query") for s in merged.splits[split] if s.texts_of("clothes_description")]
        assert len(described) == len(rows)


def test_describe_refuses_a_bad_styles_file(tmp_path, vlm, market, capsys):
    bad = tmp_path / "styles.json"
    bad.write_text(json.dumps({"styles": [{"name": "s0", "prompt": "", "size": 3}]}))
    out = tmp_path / "d.jsonl"
    assert main(["data", "describe", "--dataset", "market1501", "--root", str(market), "--model", vlm, "--styles",
                 str(bad), "--out", str(out)]) == 2
    assert "as written by reidbench data styles" in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_two_ray_workers_write_the_same_files_as_one(market, vlm, tmp_path, monkeypatch):
    import ray
    import torch

    from reidbench.annotate.tiny import build_tiny_segformer

    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    seg = build_tiny_segformer(str(tmp_path / "seg"))
    parse = ["data", "parse", "--dataset", "market1501", "--model", seg]
    # A Ray worker with one CPU computes on one thread; so does this process here, so that
    # floating-point sums agree to the bit and no near-tie of the random models flips.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert caption(market, vlm, one, "--split", "all") == 0
        assert main([*parse, "--root", str(market)]) == 0
    finally:
        torch.set_num_threads(threads)
    other = make_market(tmp_path / "other")
    monkeypatch.setenv("RAY_ADDRESS", "local")  # never another session's cluster on this machine
    try:
        assert caption(market, vlm, two, "--split", "all", "--workers", "2", "--chunk-size", "3") == 0
        assert main([*parse, "--root", str(other), "--workers", "2", "--chunk-size", "3"]) == 0
    finally:
        ray.shutdown()
    assert sorted(one.read_text().splitlines()) == sorted(two.read_text().splitlines())
    assert len(lines(two)) == 8
    maps = sorted(p.relative_to(market / "Market-1501-v15.09.15")
                  for p in (market / "Market-1501-v15.09.15" / "parsing").rglob("*.png"))
    assert len(maps) == 8
    for rel in maps:
        assert (other / "Market-1501-v15.09.15" / rel).read_bytes() == (market / "Market-1501-v15.09.15" / rel).read_bytes()


# --------------------------------------------------------------------------- into CLIP-SCGI


@pytest.mark.slow
def test_a_caption_file_trains_clip_scgi_through_data_texts(market, vlm, tmp_path, monkeypatch, fake_backbone_kind):
    from reidbench.harness import trainer
    from reidbench.harness.run_config import build_run_config
    from reidbench.methods import get_method

    out = tmp_path / "captions.jsonl"
    assert caption(market, vlm, out) == 0
    written = {r["caption"] for r in lines(out)}
    method = get_method("clip_scgi")
    read: list[str] = []
    step = method.training_step

    def training_step(self, batch, stage):
        read.extend(batch["caption"])
        return step(self, batch, stage)

    monkeypatch.setattr(method, "training_step", training_step)
    overrides = ["method=clip_scgi", "data.dataset=market1501", f"data.root={market}", f"data.texts={out}",
                 f"backbone.kind={fake_backbone_kind}", "backbone.pretrained=null", "data.p=2", "data.k=2",
                 "data.num_workers=0", "data.val_fraction=0", "data.eval_batch_size=4", "params.epochs=1",
                 "params.warmup_epochs=0", "params.milestones=[]", f"output_dir={tmp_path / 'runs'}"]
    metrics = trainer.fit(build_run_config(overrides=overrides), trainer.WorkerEnv())
    assert read and set(read) <= written
    assert any(k.endswith("mAP") for k in metrics), metrics
