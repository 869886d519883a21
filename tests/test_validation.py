"""Model selection per task: the dataset's headline protocol, its official val split, the
clothes-changing rule, the method's distance on text-to-image, and runs refused before they start."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidbench.datasets.records import EvalSplit, ReidDataset, Sample
from reidbench.harness.evaluate import rank_metrics
from reidbench.harness.run_config import build_run_config
from reidbench.harness.validation import (
    HELD_OUT,
    NONE,
    OFFICIAL,
    headline_protocol,
    plan_validation,
)

STANDARD = [EvalSplit("standard", "query", "gallery", "standard")]
PRCC_LIKE = [EvalSplit("same_clothes", "query", "gallery", "standard"), EvalSplit("cc", "query", "gallery", "cc")]
T2I = [EvalSplit("t2i", "test_texts", "test_images", "t2i")]


def image_set(train: list[Sample], evaluations=STANDARD, **splits) -> ReidDataset:
    test = [Sample(f"q{p}.jpg", p, 0) for p in range(2)]
    return ReidDataset("hand", "/nowhere", "image", {"train": train, "query": test, "gallery": test, **splits},
                       list(evaluations))


def prcc_like(n_ids: int = 10, outfits: int = 2, tag: str = "t") -> list[Sample]:
    """Cameras 0 and 1 see outfit 0, camera 2 outfit 1 (PRCC's design), two images per camera."""
    return [Sample(f"{tag}{p:03d}_c{c}_{i}.jpg", p, c, clothes_id=(1 if c == 2 else 0) if outfits > 1 else 0)
            for p in range(n_ids) for c in range(3) for i in range(2)]


def text_set(path, n_train: int = 8, with_val: bool = True) -> ReidDataset:
    """A text-to-image set with real (tiny) image files; ``val_*`` splits when ``with_val``."""
    from PIL import Image

    def images(prefix: str, pids) -> list[Sample]:
        out = []
        for p in pids:
            for i in range(2):
                f = path / f"{prefix}_{p}_{i}.jpg"
                Image.fromarray(np.full((16, 8, 3), (p * 37) % 256, np.uint8)).save(f)
                out.append(Sample(str(f), p, 0, texts=(("caption", "", f"person {p} view {i}"),
                                                         ("caption", "", f"someone {p} again {i}"))))
        return out

    def texts(samples):
        return [Sample(s.path, s.pid, 0, texts=(("caption", "", c),)) for s in samples for c in s.texts_of("caption")]

    train = images("train", range(n_train))
    test = images("test", range(100, 103))
    splits = {"train": train, "test_images": test, "test_texts": texts(test)}
    if with_val:
        val = images("val", range(200, 204))
        splits.update(val_images=val, val_texts=texts(val))
    return ReidDataset("hand_text", str(path), "text", splits, list(T2I))


def test_the_protocol_and_split_that_validate_each_kind_of_dataset(tmp_path):
    market = image_set([Sample(f"{p}_{c}_{i}.jpg", p, c) for p in range(10) for c in range(2) for i in range(2)])
    assert headline_protocol(market) == "standard"
    train, val = plan_validation(market, 0.2, seed=0)
    assert (val.protocol, val.source, len({s.pid for s in val.gallery})) == ("standard", HELD_OUT, 2)
    assert sorted({s.pid for s in train}) == list(range(8))

    # PRCC lists same-clothes first; the cloth-changing number is the one it is ranked by.
    prcc = image_set(prcc_like(), PRCC_LIKE)
    assert headline_protocol(prcc) == "cc"
    assert plan_validation(prcc, 0.2, seed=0)[1].protocol == "cc"

    with_val = text_set(tmp_path)
    assert headline_protocol(with_val) == "t2i"
    train, val = plan_validation(with_val, 0.1, seed=0)
    assert (val.protocol, val.source) == ("t2i", OFFICIAL)
    assert val.query == with_val.splits["val_texts"] and val.gallery == with_val.splits["val_images"]
    assert train == with_val.splits["train"], "the official split leaves every training identity to train on"
    tags = val.tags()
    assert (tags["validation.protocol"], tags["validation.source"], tags["validation.metric"]) == (
        "t2i", OFFICIAL, "val/mAP")

    # Without an official split: held-out identities, one query per caption of each held-out image.
    no_val = text_set(tmp_path, with_val=False)
    train, val = plan_validation(no_val, 0.25, seed=0)
    held = {s.pid for s in val.gallery}
    assert (val.protocol, val.source, len(held)) == ("t2i", HELD_OUT, 2)
    assert len({s.pid for s in train}) == 6 and sorted({s.pid for s in train}) == list(range(6))
    assert sorted((s.path, s.texts_of("caption")) for s in val.query) == sorted(
        (s.path, (c,)) for s in val.gallery for c in s.texts_of("caption"))
    assert len(val.query) == 2 * len(val.gallery)

    # val_fraction=0: no validation at all (the last epoch is the model), official split or not.
    for dataset in (with_val, no_val, prcc):
        train, val = plan_validation(dataset, 0.0, seed=0)
        assert not val.enabled and val.source == NONE and train == dataset.splits["train"]
        assert val.tags()["validation.metric"] == "none"


def test_an_official_val_folder_of_a_cloth_changing_set_is_used_when_it_holds_two_identities():
    train = prcc_like(10)
    two = image_set(train, PRCC_LIKE, val=prcc_like(2, tag="v"))
    kept, val = plan_validation(two, 0.2, seed=0)
    assert (val.source, val.protocol) == (OFFICIAL, "cc") and kept == train
    assert {s.path for s in val.gallery} == {s.path for s in two.splits["val"]}
    one = image_set(train, PRCC_LIKE, val=prcc_like(1, tag="v"))  # one identity ranks itself perfectly
    kept, val = plan_validation(one, 0.2, seed=0)
    assert val.source == HELD_OUT and len({s.pid for s in kept}) == 8


def _val_map(val, distance) -> tuple[float, float]:
    """(mAP under the validation's protocol, under the standard protocol) of a distance rule."""
    q, g = val.query, val.gallery
    d = np.array([[distance(a, b) for b in g] for a in q])
    lab = lambda xs, f: np.array([f(s) for s in xs])
    args = (lab(q, lambda s: s.pid), lab(g, lambda s: s.pid), lab(q, lambda s: s.camid), lab(g, lambda s: s.camid),
            lab(q, lambda s: s.clothes_id), lab(g, lambda s: s.clothes_id))
    return rank_metrics(d, *args, protocol=val.protocol).mAP, rank_metrics(d, *args, protocol="standard").mAP


def test_cc_validation_rewards_the_person_across_clothes_not_the_clothes():
    _, val = plan_validation(image_set(prcc_like(), PRCC_LIKE), 0.3, seed=1)
    assert val.protocol == "cc" and len({s.pid for s in val.gallery}) == 3
    # every held-out image has a same-person image in other clothes from another camera
    assert len(val.query) == len(val.gallery) == 3 * 6

    def outfit_matcher(a, b):  # finds the same outfit, puts the same person in other clothes last
        if a.pid == b.pid:
            return 0.1 if a.clothes_id == b.clothes_id else 0.9
        return 0.5

    def person_matcher(a, b):  # finds the person whatever they wear
        return 0.1 if a.pid == b.pid else 0.5

    outfit_cc, outfit_standard = _val_map(val, outfit_matcher)
    person_cc, _ = _val_map(val, person_matcher)
    assert person_cc == pytest.approx(1.0)
    assert outfit_cc < 0.2 and outfit_standard > 0.4, "the standard protocol would have rewarded matching clothes"


def test_cc_validation_without_any_clothes_change_falls_back_to_standard_and_says_so():
    dataset = image_set(prcc_like(outfits=1), PRCC_LIKE)
    with pytest.warns(UserWarning, match="standard protocol instead"):
        _, val = plan_validation(dataset, 0.3, seed=1)
    assert val.protocol == "standard" and val.tags()["validation.protocol"] == "standard"
    assert val.enabled and val.source == HELD_OUT


class _PidEmbedder(torch.nn.Module):
    """Images and captions embedded as a noisy / clean one-hot of their pid (no backbone)."""

    def __init__(self, distance=None) -> None:
        super().__init__()
        self._distance = distance

    def _one_hot(self, batch, noise: float) -> torch.Tensor:
        pids = batch["pid"] % 64
        g = torch.Generator().manual_seed(0)
        return F.one_hot(pids, 64).float() + noise * torch.rand(len(pids), 64, generator=g)

    def embed_image(self, batch):
        return self._one_hot(batch, 0.3)

    def embed_text(self, batch):
        return self._one_hot(batch, 0.0)


def _method(distance=None):
    from reidbench.methods import Method

    attrs = {"embed_image": _PidEmbedder.embed_image, "embed_text": _PidEmbedder.embed_text,
             "_one_hot": _PidEmbedder._one_hot, "tasks": ("text",)}
    if distance is not None:
        attrs["distance"] = lambda self, q, g: distance(q, g)
    cls = type("PidMethod", (Method,), attrs)
    return cls(None, torch.nn.Identity(), None)


def test_text_to_image_scoring_uses_the_methods_distance(tmp_path):
    from reidbench.harness.trainer import evaluate_retrieval

    dataset = text_set(tmp_path)
    _, val = plan_validation(dataset, 0.1, seed=0)
    cfg = build_run_config(overrides=["data.eval_batch_size=4"])

    def score(method) -> float:
        return evaluate_retrieval(method, val.query, val.gallery, val.protocol, cfg, (16, 8),
                                  torch.device("cpu")).summary()["mAP"]

    assert score(_method()) == pytest.approx(100.0)
    # A method whose distance is the cosine *similarity* ranks the matches last.
    reversed_cosine = score(_method(lambda q, g: F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).T))
    assert reversed_cosine < 50.0


def test_reranking_a_text_to_image_protocol_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from reidbench.harness import trainer

    # small settings, so that a missing check fails fast instead of generating and pretraining
    cfg = build_run_config(overrides=["data.dataset=synthetic_pedes", "evaluation.rerank=true", "data.synthetic.ids=12",
                                      "backbone.pretrained=null", f"output_dir={tmp_path}"])
    text_method = type("TextOnly", (), {"tasks": ("text",)})
    monkeypatch.setattr(trainer, "get_method", lambda name: text_method)
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"evaluation\.rerank=true is not supported on text-to-image"):
        trainer.prepare(cfg)
    assert not (tmp_path / "cache").exists(), "refused before the synthetic set was generated"
    # evaluate_retrieval refuses too, whoever calls it
    dataset = text_set(tmp_path)
    with pytest.raises(ValueError, match="re-ranking"):
        trainer.evaluate_retrieval(_method(), dataset.splits["test_texts"], dataset.splits["test_images"], "t2i",
                                   cfg, (16, 8), torch.device("cpu"), test_time=True)


def test_train_with_a_method_of_another_task_exits_2_before_writing_anything(tmp_path, monkeypatch, capsys):
    from reidbench.cli import main

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    code = main(["train", "--method", "clip_reid", "--dataset", "synthetic_pedes", "--preset", "tiny",
                 "--output-dir", str(out), "data.synthetic.ids=12", "optim.epochs_scale=0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'clip_reid' handles image ReID" in err and "'synthetic_pedes' is a text ReID benchmark" in err
    assert not out.exists(), "no run folder and no MLflow store"
    assert not (tmp_path / "cache").exists(), "the synthetic set is not generated for a run that cannot start"


def test_eval_of_an_untrained_model_on_a_dataset_of_another_task_exits_2(tmp_path, monkeypatch, capsys):
    from reidbench.cli import main

    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--untrained", "--method", "baseline", "--dataset", "synthetic_pedes"]) == 2
    err = capsys.readouterr().err
    assert "text ReID benchmark" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_cloth_changing_run_validates_under_cc_and_mlflow_says_so(tmp_path):
    from mlflow.tracking import MlflowClient

    from reidbench.datasets.synthetic import synthesize
    from reidbench.harness.api import train_run
    from reidbench.harness.tracking import tracking_uri

    # 20 identities in PRCC's layout: 12 train, 2 in rgb/val (the official split), 6 test; one image per
    # camera (A and B in one outfit, C in another), small images, one epoch and a bit.
    root = synthesize(tmp_path / "synth", flavor="cc", ids=20, seed=0, workers=1, image_size=(64, 32),
                      images_per_id=3)["cc"]
    cfg = build_run_config(overrides=[
        "method=baseline", "data.dataset=synthetic_cc", f"data.root={root}", "data.p=4", "data.k=2",
        "data.image_size=[64,32]", "data.num_workers=0", "backbone.pretrained=null", "optim.epochs_scale=0.1",
        f"output_dir={tmp_path / 'runs'}", "tracking.experiment=validation-test"])
    metrics = train_run(cfg)
    assert "test/cc/mAP" in metrics and metrics["best_epoch"] >= 0
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(metrics["run_id"])
    tags = run.data.tags
    assert (tags["validation.protocol"], tags["validation.source"], tags["validation.metric"]) == (
        "cc", OFFICIAL, "val/mAP")
    assert int(tags["validation.queries"]) > 0
    assert "val/mAP" in run.data.metrics
    # which epoch's weights were tested, as the run returned it
    assert run.data.metrics["best_epoch"] == metrics["best_epoch"]
    # which weights the run started from: the backbone this config builds, before any training
    from reidbench.harness.trainer import prepare, seed_everything, weights_fingerprint

    seed_everything(cfg.seed)
    assert tags["backbone.init_sha256"] == weights_fingerprint(prepare(cfg).method.backbone)
