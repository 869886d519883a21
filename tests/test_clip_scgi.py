"""CLIP-SCGI on the fake backbone: Eq. 3, the CGI/CFF switches, the paper's recipe,
and evaluation that never reads a caption. The contract itself is in
``test_method_contract.py`` (``-k clip_scgi``)."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeCLIP, requirement_batch
from test_method_contract import check_stage, eval_batch

from reidbench.config import from_dict
from reidbench.harness.optim import lr_factor, param_groups, set_trainable
from reidbench.methods import LOGGED, DataSpec, get_method
from reidbench.methods.clip_scgi import ClipScgiConfig, reweigh
from reidbench.methods.components import encode_images

NUM_CLASSES = 4


def build(seed: int = 0, preset: str = "tiny", **params):
    cls = get_method("clip_scgi")
    torch.manual_seed(seed)
    config = from_dict(cls.config_cls, {**cls.PRESETS[preset], **params})
    return cls(config, FakeCLIP(num_cameras=2, context_length=32), DataSpec(NUM_CLASSES, 2, 0, "image"))


def train_batch(**texts):
    batch = requirement_batch(("caption",), NUM_CLASSES, (32, 16))
    batch.update(texts)
    return batch


class NoTextBatch(dict):
    """An evaluation batch that fails the test if anyone looks for a text key."""

    TEXT = ("caption", "id_description", "clothes_description")

    def __getitem__(self, key):
        assert key not in self.TEXT, f"evaluation read batch[{key!r}]"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key not in self.TEXT, f"evaluation read batch.get({key!r})"
        return super().get(key, default)

    def __contains__(self, key):
        assert key not in self.TEXT, f"evaluation asked whether {key!r} is in the batch"
        return super().__contains__(key)


# ------------------------------------------------------------------- Eq. 3


def test_reweigh_is_the_elementwise_product_of_eq_3():
    tokens = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]]])
    caption = torch.tensor([[10.0, -1.0, 0.5], [2.0, 0.0, 3.0]])
    expected = torch.tensor([[[10.0, -2.0, 1.5], [40.0, -5.0, 3.0]], [[2.0, 0.0, 3.0], [0.0, 0.0, -3.0]]])
    assert torch.equal(reweigh(tokens, caption), expected)
    with pytest.raises(ValueError, match=r"caption embeddings \[B,D\]"):
        reweigh(tokens, caption[:, :2])


def test_cgi_reads_image_tokens_reweighed_by_each_samples_caption():
    method = build()
    batch = train_batch()
    seen = {}
    method.cgi.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0].detach()))
    method.train()
    method.training_step(batch, method.stages()[0])
    with torch.no_grad():
        image = method.backbone.encode_image(batch["image"], batch["camid"])
        tokens = method.backbone.visual_projection(image.tokens)
        captions = method.backbone.tokenizer(batch["caption"])
        t = method.backbone.encode_text(captions["input_ids"], captions["attention_mask"])
    assert seen["input"].shape == tokens.shape
    assert torch.allclose(seen["input"], tokens * t[:, None], atol=1e-6)


# --------------------------------------------------------- no caption at test


def test_evaluation_never_reads_a_caption():
    method = build()
    method.eval()
    plain = eval_batch(method)
    with torch.no_grad():
        out = method.embed_image(NoTextBatch(plain))
        n = plain["image"].shape[0]
        with_captions = [method.embed_image({**plain, "caption": [text] * n})
                         for text in ("a person in a red shirt", "blue pants and green shirt")]
    assert out.shape == (n, method.backbone.embed_dim) and torch.isfinite(out).all()
    for other in with_captions:
        assert torch.equal(other, out)


def test_the_test_caption_is_the_fixed_sentence_not_the_training_one():
    """With CGI kept at test time, the caption slot holds ``test_caption``: changing it changes the embedding."""
    a, b = build(test_branch="inversion"), build(test_branch="inversion", test_caption="a photo of a person in red")
    a.eval(), b.eval()
    batch = eval_batch(a)
    with torch.no_grad():
        assert not torch.allclose(a.embed_image(batch), b.embed_image(batch))


def test_training_reads_the_captions_unless_they_are_replaced_by_a_fixed_sentence():
    red = ["a person in a red shirt"] * 8
    blue = ["a person in blue pants and a green shirt"] * 8
    for source, differ in (("caption", True), ("fixed", False)):
        method = build(caption_source=source)
        method.train()
        stage = method.stages()[0]
        with torch.no_grad():
            torch.manual_seed(0)
            loss_red = method.training_step(train_batch(caption=red), stage)["con"]
            torch.manual_seed(0)
            loss_blue = method.training_step(train_batch(caption=blue), stage)["con"]
        assert (not torch.allclose(loss_red, loss_blue)) == differ, source
    method = build()
    with pytest.raises(ValueError, match="no 'caption' texts"):
        batch = train_batch()
        del batch["caption"]
        method.training_step(batch, method.stages()[0])


# ----------------------------------------------------------------- switches


@pytest.mark.parametrize("depth,queries", [(1, 2), (3, 1), (6, 8)])
def test_depth_and_query_count_shape_the_generator(depth, queries):
    method = build(cgi_depth=depth, num_queries=queries)
    assert len(method.cgi.blocks) == depth
    assert tuple(method.cgi.queries.shape) == (queries, method.backbone.embed_dim)
    prefixes = {n.split(".")[2] for n, _ in method.named_parameters() if n.startswith("cgi.blocks.")}
    assert prefixes == {str(i) for i in range(depth)}


ROWS = {
    "full": {},
    "no_cff": {"use_cff": False},
    "no_cgi": {"use_cgi": False},
    "replace_q": {"cff_query": "image"},
    "cff_kv_tokens": {"cff_kv": "tokens"},
    "fixed_caption": {"caption_source": "fixed"},
    "inversion_at_test": {"test_branch": "inversion"},
    "depth6_k8": {"cgi_depth": 6, "num_queries": 8},
}


@pytest.mark.parametrize("row", list(ROWS))
def test_each_ablation_row_builds_and_steps(row):
    method = build(**ROWS[row])
    stage = method.stages()[0]
    terms = check_stage(method, stage, train_batch())
    assert set(terms) == ({"id", "triplet"} if row == "no_cgi" else {"id", "triplet", "con"})
    assert (method.cgi is None) == (row == "no_cgi") and (method.cff is None) == (row == "no_cff")
    method.eval()
    batch = eval_batch(method)
    with torch.no_grad():
        out = method.embed_image(NoTextBatch(batch))
        if row == "no_cff":  # CGI only: the image tower's embedding, trained with ID + triplet + L_con
            assert torch.equal(out, method.backbone.encode_image(batch["image"], batch["camid"]).proj)
    assert out.shape == (batch["image"].shape[0], method.backbone.embed_dim)


def test_the_text_query_shapes_the_fused_embedding():
    """CFF with the default v_cls key: the prompt still reaches the embedding (the residual decision)."""
    method = build(test_branch="inversion")
    method.eval()
    batch = eval_batch(method)
    with torch.no_grad():
        before = method.embed_image(batch)
        method.cgi.global_mapper[-1].bias.add_(1.0)  # a different pseudo-word S*
        after = method.embed_image(batch)
    assert not torch.allclose(before, after)


def test_by_default_the_caption_guided_branch_is_removed_at_test_time():
    """Sec. III-C: at inference CFF reads "a photo of a person"; CGI does not run (a changed CGI
    changes nothing), while in training S* reaches the embedding."""
    method = build()
    batch = eval_batch(method)
    method.eval()
    with torch.no_grad():
        before = method.embed_image(batch)
        prompt = method.encode_prompt(None, batch["image"].shape[0])
        tokens = method.backbone.visual_projection(encode_images(method.backbone, batch, method.config.sie).tokens)
        assert torch.allclose(before, method.fuse(tokens, prompt))
        method.cgi.global_mapper[-1].bias.add_(1.0)
        assert torch.equal(before, method.embed_image(batch))
        method.train()
        trained_before = method.forward_features(train_batch(), training=True)[0]
        method.cgi.global_mapper[-1].bias.add_(1.0)
        assert not torch.allclose(trained_before, method.forward_features(train_batch(), training=True)[0])


def test_a_config_without_either_module_is_refused():
    with pytest.raises(ValueError, match="use_cgi and use_cff are both False"):
        ClipScgiConfig(use_cgi=False, use_cff=False)
    with pytest.raises(ValueError, match="exactly once"):
        ClipScgiConfig(prompt_template="a photo of a person")


# --------------------------------------------------------------- the recipe


def test_new_modules_train_at_ten_times_the_clip_lr():
    method = build(preset="paper")
    stage = method.stages()[0]
    set_trainable(method, stage)
    by_lr = {}
    names = {id(p): n for n, p in method.named_parameters()}
    for group in param_groups(method, stage):
        for p in group["params"]:
            by_lr[names[id(p)]] = group["lr"]
    assert {by_lr[n] for n in by_lr if n.startswith("backbone.")} == {5e-6}
    assert {by_lr[n] for n in by_lr if n.startswith(("cgi.", "cff.", "head."))} == {5e-5}
    assert "backbone.logit_scale" not in by_lr  # unused by the method: frozen


def test_the_paper_schedule():
    stage = build(preset="paper").stages()[0]
    assert (stage.optimizer, stage.epochs, stage.schedule, stage.milestones) == ("adam", 60, "steps", (20, 40))
    assert lr_factor(stage, 0, 60) * stage.lr == pytest.approx(5e-7)
    assert [lr_factor(stage, e, 60) for e in (10, 19, 20, 40, 59)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])


def test_l_con_is_logged_by_direction_and_summed():
    method = build()
    method.train()
    terms = method.training_step(train_batch(), method.stages()[0])
    logged = terms[LOGGED]
    assert torch.allclose(terms["con"], logged["i2t"] + logged["t2i"])


def test_the_sweep_rows_carry_the_published_ablation_names():
    """The leaderboard sets the paper's Table III/IV numbers beside rows of the same name."""
    import argparse
    import csv
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("ablation_scgi", repo / "sweeps" / "ablation_scgi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(repo / "reidbench" / "data" / "published.csv") as f:
        published = {r["ablation"] for r in csv.DictReader(f) if r["method"] == "clip_scgi"} - {"rn50"}
    for smoke in (True, False):
        rows = {t.ablation for t in module.trials(argparse.Namespace(smoke=smoke))}
        assert published <= rows, sorted(published - rows)
        assert "fixed_caption" in rows


# ------------------------------------------------------- a whole run, logged


@pytest.mark.slow
def test_a_run_trains_on_captions_logs_its_terms_and_evaluates_without_reading_one(tmp_path, fake_backbone_kind,
                                                                                 monkeypatch):
    """``reidbench train --method clip_scgi`` on a Market-layout folder: every training batch
    carries the images' captions, ``id``/``triplet``/``con`` are logged by name, and no
    validation or test batch is ever asked for a text (``NoTextBatch`` fails the run if one is)."""
    from mlflow.tracking import MlflowClient

    from reidbench.datasets.synthetic import synthesize
    from reidbench.harness.api import train_run
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.tracking import tracking_uri
    from reidbench.methods.clip_scgi import ClipScgi

    seen = {"train": 0, "captioned": 0, "embedded": 0}
    training_step, embed_image = ClipScgi.training_step, ClipScgi.embed_image

    def spy_training_step(self, batch, stage):
        seen["train"] += 1
        seen["captioned"] += len(batch.get("caption") or []) == len(batch["pid"])
        return training_step(self, batch, stage)

    def spy_embed_image(self, batch):
        seen["embedded"] += 1
        return embed_image(self, NoTextBatch(batch))

    monkeypatch.setattr(ClipScgi, "training_step", spy_training_step)
    monkeypatch.setattr(ClipScgi, "embed_image", spy_embed_image)
    root = synthesize(tmp_path / "synth", flavor="market", ids=16, seed=0, workers=1, image_size=(64, 32),
                      images_per_id=4)["market"]
    cfg = build_run_config(overrides=[
        "method=clip_scgi", "preset=tiny", "data.dataset=market1501", f"data.root={root}", "data.p=4", "data.k=2",
        "data.image_size=[32,16]", "data.num_workers=0", "data.val_fraction=0.25",
        f"backbone.kind={fake_backbone_kind}", "backbone.pretrained=null", "optim.epochs_scale=0.2",
        f"output_dir={tmp_path / 'runs'}", "tracking.experiment=scgi-run"])
    metrics = train_run(cfg)
    run = MlflowClient(tracking_uri(cfg)).get_run(metrics["run_id"])
    assert {"train/id", "train/triplet", "train/con", "train/i2t", "train/t2i"} <= set(run.data.metrics)
    assert seen["train"] > 0 and seen["captioned"] == seen["train"], seen
    assert seen["embedded"] > 0 and "test/standard/mAP" in metrics and "val/mAP" in run.data.metrics
