"""Texts per sample: what reaches the batches, texts files beside a dataset, and the
check that the training split carries what a method requires."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from reidbench.datasets import Sample, build_dataset
from reidbench.datasets.loader import build_eval_loader, build_text_loader, build_train_loader
from reidbench.datasets.texts import apply_texts_files
from reidbench.harness.requirements import check_requirements

H, W = 16, 8
STYLES = ("terse", "detailed", "list")


def image(path: Path, shade: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (40 * shade % 255, 90, 120)).save(path)
    return str(path)


def described(tmp_path: Path, counts: dict[int, int], *, captions: int = 1, descriptions: bool = True) -> list[Sample]:
    """Images with ``captions`` captions and, when ``descriptions``, two id and two clothing
    descriptions in each of three styles (six variants per kind)."""
    samples = []
    for pid, n in counts.items():
        for j in range(n):
            texts = [("caption", "", f"caption {pid}.{j}.{c}") for c in range(captions)]
            if descriptions:
                texts += [(kind, style, f"{kind} {pid}.{j} {style} {v}")
                          for kind in ("id_description", "clothes_description") for style in STYLES for v in range(2)]
            samples.append(Sample(image(tmp_path / f"{pid}_{j}.jpg", pid + j), pid, j % 2, texts=tuple(texts)))
    return samples


# --------------------------------------------------------------------------- batches

def test_train_batches_carry_exactly_the_required_kinds(tmp_path):
    samples = described(tmp_path, {0: 2, 1: 2, 2: 2})
    loader = build_train_loader(samples, (H, W), p=2, k=2, seed=0, with_masks=False,
                                text_kinds=("id_description", "clothes_description"))
    loader.set_epoch(0)
    batches = list(loader)
    assert batches
    for batch in batches:
        assert {"id_description", "clothes_description"} <= set(batch)
        assert "caption" not in batch and "captions" not in batch  # not required: not carried
        for kind in ("id_description", "clothes_description"):
            assert isinstance(batch[kind], list) and len(batch[kind]) == 4
            for i, text in zip(batch["index"].tolist(), batch[kind]):
                assert text in samples[i].texts_of(kind)
    plain = next(iter(build_train_loader(samples, (H, W), p=2, k=2, seed=0, with_masks=False)))
    assert not {"caption", "id_description", "clothes_description", "captions"} & set(plain)


def test_draws_of_one_image_read_different_variants_reproducibly(tmp_path):
    # One image per identity, K=4: every batch draws each image four times (with replacement).
    samples = described(tmp_path, {0: 1, 1: 1})

    def texts(seed, epoch):
        loader = build_train_loader(samples, (H, W), p=2, k=4, seed=seed, with_masks=False,
                                    text_kinds=("id_description",))
        loader.set_epoch(epoch)
        return [(b["index"].tolist(), b["id_description"]) for b in loader]

    first = texts(0, 0)
    assert first == texts(0, 0), "same seed and epoch, same texts"
    draws_of_0 = [t for idx, ts in first for i, t in zip(idx, ts) if i == 0]
    assert len(draws_of_0) == 4 and len(set(draws_of_0)) > 1, "K draws of one image in one epoch can differ"
    assert {t for e in range(6) for _, ts in texts(0, e) for t in ts} == {
        t for s in samples for t in s.texts_of("id_description")}, "every style is drawn over epochs"
    assert texts(0, 1) != first and texts(1, 0) != first


def test_a_required_kind_missing_on_a_sample_is_an_error_not_an_empty_string(tmp_path):
    samples = described(tmp_path, {0: 2, 1: 2})
    samples[3] = Sample(samples[3].path, 1, 1, texts=(("caption", "", "only a caption"),))
    with pytest.raises(ValueError, match=r"1 of 4 samples have no clothes_description \(first: .*1_1\.jpg\)"):
        build_train_loader(samples, (H, W), p=2, k=2, seed=0, text_kinds=("clothes_description",))
    with pytest.raises(ValueError, match="unknown text kind"):
        build_train_loader(samples, (H, W), p=2, k=2, seed=0, text_kinds=("captions",))


def test_test_loaders_carry_no_texts_and_the_clean_pass_carries_the_required_ones(tmp_path):
    samples = described(tmp_path, {0: 2, 1: 1}, captions=2)
    batch = next(iter(build_eval_loader(samples, (H, W), batch_size=3)))
    assert not {"caption", "id_description", "clothes_description", "captions"} & set(batch)
    clean = next(iter(build_eval_loader(samples, (H, W), batch_size=3, text_kinds=("caption",))))
    assert [c in s.texts_of("caption") for c, s in zip(clean["caption"], samples)] == [True] * 3
    again = next(iter(build_eval_loader(samples, (H, W), batch_size=3, text_kinds=("caption",))))
    assert again["caption"] == clean["caption"]


def test_text_queries_are_yielded_as_caption():
    queries = [Sample(f"q{i}.jpg", i, 0, texts=(("caption", "", f"query {i}"),)) for i in range(3)]
    batch = next(iter(build_text_loader(queries, batch_size=3)))
    assert batch["caption"] == ["query 0", "query 1", "query 2"] and "captions" not in batch


def test_samples_reject_malformed_or_empty_texts():
    with pytest.raises(ValueError, match="kind in"):
        Sample("a.jpg", 0, 0, texts=(("captions", "", "x"),))
    with pytest.raises(ValueError, match="empty id_description text"):
        Sample("a.jpg", 0, 0, texts=(("id_description", "terse", "  "),))
    s = Sample("a.jpg", 0, 0, texts=(("caption", "", "c"), ("id_description", "terse", "i")))
    assert hash(s) == hash(Sample("a.jpg", 0, 0, texts=(("caption", "", "c"), ("id_description", "terse", "i"))))
    assert (s.texts_of("caption"), s.texts_of("clothes_description")) == (("c",), ())


# --------------------------------------------------------------------------- texts files

MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_000100_00.jpg"],
    "query": ["0002_c5s1_000001_00.jpg", "0007_c1s1_000002_00.jpg"],
    "bounding_box_test": ["0002_c6s1_000003_00.jpg", "0007_c4s1_000004_00.jpg"],
}


@pytest.fixture()
def market(tmp_path):
    dset = tmp_path / "Market-1501-v15.09.15"
    for sub, files in MARKET.items():
        for i, name in enumerate(files):
            image(dset / sub / name, i)
    meta = {"path": "bounding_box_train/0002_c1s1_000451_03.jpg", "caption": "meta caption",
            "id_descriptions": {"terse": "meta id"}, "clothes_descriptions": {"terse": "meta clothes"}}
    (dset / "reidbench_meta.jsonl").write_text(json.dumps(meta) + "\n")
    return build_dataset("market1501", str(tmp_path))


def write_lines(path: Path, *records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def by_name(dataset, split):
    return {Path(s.path).name: s for s in dataset.splits[split]}


def test_texts_file_replaces_the_kinds_it_has_keeps_the_others_and_later_files_win(tmp_path, market):
    first = write_lines(
        tmp_path / "a.jsonl",
        {"path": "bounding_box_train/0002_c1s1_000451_03.jpg", "id_descriptions": {"terse": "file id", "list": ["l1", "l2"]},
         "provenance": {"model": "tiny-captioner", "prompt_sha256": "ab12"}},
        {"path": "./query/0002_c5s1_000001_00.jpg", "caption": ["q one", "q two"]},
        {"path": "bounding_box_test/0007_c4s1_000004_00.jpg", "clothes_descriptions": {"terse": "early"}},
    )
    second = write_lines(tmp_path / "b.jsonl",
                         {"path": "bounding_box_test/0007_c4s1_000004_00.jpg", "clothes_descriptions": {"terse": "late"}})
    before = {split: list(samples) for split, samples in market.splits.items()}
    merged = apply_texts_files(market, f"{first}, {second}")
    train = by_name(merged, "train")
    s = train["0002_c1s1_000451_03.jpg"]
    assert s.texts_of("id_description") == ("file id", "l1", "l2")  # replaced, not appended
    assert [st for k, st, _ in s.texts if k == "id_description"] == ["terse", "list", "list"]
    assert (s.texts_of("caption"), s.texts_of("clothes_description")) == (("meta caption",), ("meta clothes",))
    assert train["0007_c3s3_000100_00.jpg"].texts == ()
    assert by_name(merged, "query")["0002_c5s1_000001_00.jpg"].texts_of("caption") == ("q one", "q two")
    assert by_name(merged, "gallery")["0007_c4s1_000004_00.jpg"].texts_of("clothes_description") == ("late",)
    assert market.splits == before, "the loaded dataset is not modified in place"
    assert apply_texts_files(market, None) is market


def test_texts_file_never_touches_text_queries(tmp_path):
    dset = tmp_path / "CUHK-PEDES"
    rows = []
    for i, (pid, split) in enumerate([(1, "train"), (2, "test")]):
        image(dset / "imgs" / f"{i}.jpg", i)
        rows.append({"id": pid, "file_path": f"{i}.jpg", "captions": [f"annotated {i}"], "split": split})
    (dset / "reid_raw.json").write_text(json.dumps(rows))
    ds = build_dataset("cuhk_pedes", str(tmp_path))
    texts = write_lines(tmp_path / "t.jsonl", {"path": "imgs/1.jpg", "caption": "model caption",
                                               "id_descriptions": {"terse": "a man"}})
    merged = apply_texts_files(ds, texts)
    assert merged.splits["test_images"][0].texts == (("caption", "", "model caption"), ("id_description", "terse", "a man"))
    assert merged.splits["test_texts"][0].texts == (("caption", "", "annotated 1"),)


@pytest.mark.parametrize("line,expected", [
    ("{not json", r"line 2: not valid JSON .*expected one JSON object per line"),
    ('["a"]', r"line 2: expected a JSON object, got list"),
    ({"caption": "x"}, r'line 2: missing "path"'),
    ({"path": 3, "caption": "x"}, r'line 2: "path" must be a non-empty string'),
    ({"path": "/abs/query/0002_c5s1_000001_00.jpg", "caption": "x"}, r"line 2: .*relative to the dataset folder"),
    ({"path": "query/nope.jpg", "caption": "x"}, r"line 2: \"path\" 'query/nope.jpg' is not an image of the dataset"),
    ({"path": "query/0002_c5s1_000001_00.jpg", "captions": ["x"]}, r"line 2: unknown key\(s\) 'captions'; expected 'path'"),
    ({"path": "query/0002_c5s1_000001_00.jpg", "caption": 7}, r'line 2: "caption" must be a non-empty string'),
    ({"path": "query/0002_c5s1_000001_00.jpg", "caption": ""}, r'line 2: "caption" must be a non-empty string'),
    ({"path": "query/0002_c5s1_000001_00.jpg", "id_descriptions": "tall"}, r'line 2: "id_descriptions" must be a non-empty object'),
    ({"path": "query/0002_c5s1_000001_00.jpg", "clothes_descriptions": {"terse": ["ok", 3]}},
     r'line 2: "clothes_descriptions"\["terse"\] must be'),
    ({"path": "query/0002_c5s1_000001_00.jpg", "caption": "x", "provenance": "gpt"}, r'line 2: "provenance" must be a JSON object'),
    ({"path": "query/0002_c5s1_000001_00.jpg"}, r"line 2: no texts"),
])
def test_a_bad_texts_line_names_its_file_and_line(tmp_path, market, line, expected):
    good = {"path": "query/0002_c5s1_000001_00.jpg", "caption": "fine"}
    path = write_lines(tmp_path / "bad.jsonl", good, line)
    with pytest.raises(ValueError, match=r"bad\.jsonl, " + expected):
        apply_texts_files(market, path)


def test_a_missing_texts_file_is_named(tmp_path, market):
    with pytest.raises(ValueError, match=r"data.texts: .*nowhere\.jsonl' is not a file"):
        apply_texts_files(market, str(tmp_path / "nowhere.jsonl"))


# --------------------------------------------------------------------------- requirement check

def test_requirement_check_counts_and_names_what_is_missing():
    samples = [Sample(f"/d/train/{i}.jpg", i, 0, mask_path="m.png" if i % 2 else None,
                      texts=(("id_description", "terse", "x"),) if i < 2 else ()) for i in range(5)]
    check_requirements(samples, (), "free")
    check_requirements(samples[:2], ("id_description",), "bdam")
    with pytest.raises(ValueError) as err:
        check_requirements(samples, ("id_description", "mask", "clothes_id"), "bdam", root="/d")
    assert str(err.value).splitlines() == [
        "method 'bdam' requires id_description: 3 of 5 training samples have none (first: train/2.jpg, train/3.jpg, "
        "train/4.jpg); add them with data.texts=FILE.jsonl (README: Texts files)",
        "method 'bdam' requires mask: 3 of 5 training samples have none (first: train/0.jpg, train/2.jpg, "
        "train/4.jpg); part masks are read from DSET/masks/REL.png beside the dataset (the synthetic sets have them)",
        "method 'bdam' requires clothes_id: 5 of 5 training samples have none (first: train/0.jpg, train/1.jpg, "
        "train/2.jpg, ...); use a dataset with clothes labels (PRCC, LTCC, VC-Clothes, DeepChange or a synthetic one)",
    ]
    with pytest.raises(ValueError, match="requires unknown 'captions'"):
        check_requirements(samples, ("captions",), "bdam")


def test_prepare_refuses_a_training_split_without_the_required_texts_and_fit_feeds_them(tmp_path, market, monkeypatch):
    """The harness wiring: ``data.texts`` is merged in ``load_dataset``, ``prepare`` checks
    ``Method.requires`` before the backbone is built, and ``fit`` hands the required kinds to
    the training batches and the ``begin_stage`` pass (and no other text)."""
    import reidbench.backbones
    from fakes import FakeCLIP
    from reidbench.harness import trainer
    from reidbench.harness.run_config import build_run_config
    from reidbench.methods import get_method

    baseline = get_method("baseline")
    monkeypatch.setattr(baseline, "requires", ("id_description",))
    monkeypatch.setattr(reidbench.backbones, "build_backbone", lambda *a, **k: pytest.fail("backbone built first"))
    overrides = ["method=baseline", "data.dataset=market1501", f"data.root={market.root}", "data.p=2", "data.k=2",
                 "data.num_workers=0", "data.val_fraction=0", "data.eval_batch_size=4", "backbone.pretrained=null",
                 "params.image.epochs=1", "params.image.warmup_epochs=0", "params.image.milestones=[]",
                 f"output_dir={tmp_path}"]
    with pytest.raises(ValueError, match=r"method 'baseline' requires id_description: 2 of 3 training samples have "
                                         r"none \(first: bounding_box_train/0002_c2s1_000551_01.jpg, "
                                         r"bounding_box_train/0007_c3s3_000100_00.jpg\); add them with data.texts="):
        trainer.prepare(build_run_config(overrides=overrides))
    monkeypatch.setattr(reidbench.backbones, "build_backbone", lambda *a, **k: FakeCLIP())

    texts = write_lines(tmp_path / "ids.jsonl", *[
        {"path": f"bounding_box_train/{name}", "id_descriptions": {"terse": f"id of {name}", "list": f"id: {name}"}}
        for name in MARKET["bounding_box_train"][1:]])
    seen: list[tuple[str, set[str]]] = []
    read: set[str] = set()
    step, begin = baseline.training_step, baseline.begin_stage

    def training_step(self, batch, stage):
        seen.append(("train", set(batch)))
        read.update(batch["id_description"])
        return step(self, batch, stage)

    def begin_stage(self, stage, train_batches):
        for b in train_batches():
            seen.append(("clean", set(b)))
            read.update(b["id_description"])
        return begin(self, stage, train_batches)

    monkeypatch.setattr(baseline, "training_step", training_step)
    monkeypatch.setattr(baseline, "begin_stage", begin_stage)
    trainer.fit(build_run_config(overrides=[*overrides, f"data.texts={texts}"]), trainer.WorkerEnv())
    assert {where for where, _ in seen} == {"train", "clean"}
    texts_seen = {k for _, keys in seen for k in keys if k in ("caption", "id_description", "clothes_description",
                                                               "captions")}
    assert texts_seen == {"id_description"}
    assert all("id_description" in keys for _, keys in seen)
    # The meta file's description for the first image, the texts file's for the other two.
    names = MARKET["bounding_box_train"]
    assert read <= {"meta id", *(f"id of {n}" for n in names[1:]), *(f"id: {n}" for n in names[1:])}
    assert "meta id" in read and read & {f"id of {names[2]}", f"id: {names[2]}"}


def test_train_with_a_bad_texts_file_exits_2_before_writing_anything(tmp_path, monkeypatch, capsys):
    """The texts file is read, and the requirements checked, before a run folder or an MLflow
    run exists (an earlier run of the same name is left alone)."""
    from reidbench.cli import main

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "texts.jsonl"
    bad.write_text('{"path": "imgs/nope.jpg", "caption": "a person"}\n')
    out = tmp_path / "runs"
    earlier = out / "t2i_baseline" / "default" / "synthetic_pedes" / "0" / "best.safetensors"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's weights")
    code = main(["train", "--method", "t2i_baseline", "--dataset", "synthetic_pedes", "--output-dir", str(out),
                 "data.synthetic.ids=12", "backbone.pretrained=null", f"data.texts={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{bad}, line 1" in err and "imgs/nope.jpg" in err
    assert sorted(p.name for p in out.iterdir()) == ["t2i_baseline"], "no MLflow store was created"
    assert earlier.read_bytes() == b"an earlier run's weights"
