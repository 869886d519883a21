"""CCAF: the shielding / clothes images, which parameters each stage-2 term moves
(the CFM alternation by gradient routing), L_con, Eq. 15's sign switch, and stage 1
training the prompts only."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeCLIP, chunks, requirement_batch

from reidbench.config import from_dict
from reidbench.harness.optim import set_trainable
from reidbench.methods import DataSpec
from reidbench.methods.ccaf import (
    CLOTHES_CLASSES,
    Ccaf,
    CcafConfig,
    centre_distance,
    fill_values,
    shielding_and_clothes_images,
)

NUM_CLASSES, NUM_CAMERAS, NUM_CLOTHES = 4, 2, 6
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build(seed: int = 0, **params) -> Ccaf:
    torch.manual_seed(seed)
    config = from_dict(CcafConfig, {**Ccaf.PRESETS["tiny"], **params})
    return Ccaf(config, FakeCLIP(num_cameras=NUM_CAMERAS, context_length=32),
                DataSpec(NUM_CLASSES, NUM_CAMERAS, NUM_CLOTHES, "image"))


def batch() -> dict:
    return requirement_batch(Ccaf.requires, NUM_CLASSES, (32, 16))


def stage(method: Ccaf, name: str):
    return next(s for s in method.stages() if s.name == name)


def image_terms(method: Ccaf, b: dict | None = None) -> dict[str, torch.Tensor]:
    b = b if b is not None else batch()
    s = stage(method, "image")
    set_trainable(method, s)
    method.train()
    method.begin_stage(s, lambda: chunks(b, 3))
    return method.training_step(b, s)


def moved_by(method: Ccaf, term: torch.Tensor) -> set[str]:
    """Parameters that get a nonzero gradient from ``term`` alone."""
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(term, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {n for (n, _), g in zip(named, grads) if g is not None and bool(g.abs().sum() > 0)}


# ------------------------------------------------------------ Eqs. 4 and 11


def test_shielding_and_clothes_images_put_white_exactly_where_they_should():
    backbone = FakeCLIP()
    backbone.image_mean, backbone.image_std = CLIP_MEAN, CLIP_STD
    fill = fill_values(backbone)
    # the fill is white (255, i.e. 1.0 after ToTensor) once the normalisation is undone
    assert torch.allclose(fill * torch.tensor(CLIP_STD) + torch.tensor(CLIP_MEAN), torch.ones(3))
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 8, 4, generator=g)
    parsing = torch.randint(0, 20, (2, 8, 4), generator=g)
    x_s, x_c = shielding_and_clothes_images(image, parsing, fill)
    clothes = torch.isin(parsing, torch.tensor(CLOTHES_CLASSES)).unsqueeze(1).expand_as(image)
    assert clothes.any() and (~clothes).any()
    white = fill.view(1, 3, 1, 1).expand_as(image)
    assert torch.equal(x_s[clothes], white[clothes]) and torch.equal(x_s[~clothes], image[~clothes])
    assert torch.equal(x_c[~clothes], white[~clothes]) and torch.equal(x_c[clothes], image[clothes])
    # upper clothes (5) are clothes, face (13) and hair (2) are not
    assert {5, 7, 9, 12} <= set(CLOTHES_CLASSES) and not {0, 2, 13, 14} & set(CLOTHES_CLASSES)


def test_a_backbone_without_normalisation_fills_one():
    assert torch.equal(fill_values(FakeCLIP()), torch.ones(3))


# ------------------------------------------------- CFM: who each term moves


def test_clothes_i2tce_moves_only_proj_c_and_l_dis_moves_the_raw_encoder_only():
    method = build()
    terms = image_terms(method)
    assert moved_by(method, terms["i2tce_clothes"]) == {"proj_c.weight"}
    dis = moved_by(method, terms["dis"])
    assert "proj_c.weight" not in dis
    assert "backbone.vision.patch.weight" in dis and "backbone.visual_projection.weight" in dis
    assert not {n for n in dis if not n.startswith("backbone.")}, dis  # not the shielding stream, not a head
    # the identity terms never reach Proj_c either: only L^c_i2tce trains it
    for name in ("id", "triplet", "i2tce", "id_shield", "i2tce_shield", "con"):
        assert "proj_c.weight" not in moved_by(method, terms[name]), name


def test_the_onehot_ablation_trains_proj_c_and_its_classifier_only():
    method = build(cfm_supervision="onehot")
    terms = image_terms(method)
    assert "i2tce_clothes" not in terms
    assert moved_by(method, terms["ce_clothes"]) == {"proj_c.weight", "clothes_classifier.weight"}


def test_the_shielding_stream_trains_on_its_own_terms_and_l_con_reaches_both_streams():
    method = build()
    terms = image_terms(method)
    shield = moved_by(method, terms["i2tce_shield"])
    assert shield and all(n.startswith("shield_encoder.") for n in shield), shield
    con = moved_by(method, terms["con"])
    assert any(n.startswith("shield_encoder.") for n in con) and any(n.startswith("backbone.") for n in con)


# ------------------------------------------------------------ L_con, L_dis


def test_l_con_compares_identity_centres_and_is_zero_when_the_streams_agree():
    g = torch.Generator().manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1])
    raw = torch.randn(4, 5, generator=g)
    assert float(centre_distance(raw, raw, pids)) == 0.0
    # per-sample differences that cancel within each identity leave the centres equal
    noise = torch.randn(1, 5, generator=g)
    offsets = torch.cat([noise, -noise, 2 * noise, -2 * noise])
    assert float(centre_distance(raw, raw + offsets, pids)) == pytest.approx(0.0, abs=1e-6)
    # a shift of identity 1's centre by d gives ||d||^2 / P
    d = torch.randn(5, generator=g)
    shifted = raw.clone()
    shifted[2:] += d
    assert float(centre_distance(raw, shifted, pids)) == pytest.approx(float(d.pow(2).sum()) / 2, rel=1e-5)


def test_l_con_is_zero_at_initialisation_on_images_without_clothes():
    b = batch()
    b["parsing"] = torch.zeros_like(b["parsing"])  # no clothes: the shielding image is the raw image
    terms = image_terms(build(), b)
    assert terms["con"].item() == pytest.approx(0.0, abs=1e-10)
    b2 = batch()  # with clothes the two streams see different images
    assert image_terms(build(), b2)["con"].item() > 1e-6


def test_the_sign_switch_flips_l_dis():
    printed = image_terms(build(seed=3, dis_sign="as_printed"))["dis"].item()
    dissimilar = image_terms(build(seed=3))["dis"].item()
    assert dissimilar != 0.0
    assert printed == pytest.approx(-dissimilar, rel=1e-6)


# ------------------------------------------------------------------- stage 1


def test_stage_1_trains_only_the_two_prompt_learners():
    method = build()
    s = stage(method, "prompt")
    assert s.trainable == ("prompt_learner.", "clothes_prompt_learner.")
    b = batch()
    trained = set(set_trainable(method, s))
    assert trained == {"prompt_learner.ctx", "clothes_prompt_learner.ctx"}
    method.train()
    method.begin_stage(s, lambda: chunks(b, 3))
    terms = method.training_step(b, s)
    assert set(terms) == {"i2t", "t2i", "i2t_clothes", "t2i_clothes"}  # Eq. 16
    assert moved_by(method, terms["i2t"] + terms["t2i"]) == {"prompt_learner.ctx"}
    assert moved_by(method, terms["i2t_clothes"] + terms["t2i_clothes"]) == {"clothes_prompt_learner.ctx"}


def test_stage_1_caches_the_frozen_encoder_features_of_the_masked_images():
    method = build()
    b = batch()
    method.begin_stage(stage(method, "prompt"), lambda: chunks(b, 3))
    x_s, x_c = method.masked_images(b)
    with torch.no_grad():
        method.eval()
        assert torch.allclose(method._image_banks["id"].features, method.backbone.encode_image(x_s).proj, atol=1e-6)
        assert torch.allclose(method._image_banks["clothes"].features, method.backbone.encode_image(x_c).proj,
                              atol=1e-6)


# ----------------------------------------------------------------- ablations


@pytest.mark.parametrize("params,stages,terms", [
    ({}, ["prompt", "image"], {"id", "triplet", "i2tce", "id_shield", "triplet_shield", "i2tce_shield", "con",
                               "i2tce_clothes", "dis"}),
    ({"use_cfm": False}, ["prompt", "image"], {"id", "triplet", "i2tce", "id_shield", "triplet_shield",
                                               "i2tce_shield", "con"}),
    ({"use_cfm": False, "use_i2i": False}, ["prompt", "image"], {"id", "triplet", "i2tce"}),
    ({"use_cfm": False, "use_i2i": False, "use_i2t": False}, ["image"], {"id", "triplet"}),
    ({"use_i2t": False, "use_shield_i2t": False, "cfm_supervision": "onehot"}, ["image"],
     {"id", "triplet", "id_shield", "triplet_shield", "con", "ce_clothes", "dis"}),
], ids=["full", "no_cfm", "no_i2i_no_cfm", "baseline", "no_text_prompts"])
def test_each_ablation_returns_its_terms_and_weighs_them(params, stages, terms):
    method = build(**params)
    assert [s.name for s in method.stages()] == stages
    got = image_terms(method)
    assert set(got) == terms
    weights = dict(stage(method, "image").loss_weights)
    assert set(weights) == terms
    assert weights.get("con", 0.1) == 0.1 and weights.get("dis", 1.0) == 1.0  # λ1, λ2 (the paper's)


def test_cfm_without_clothes_ids_is_a_clear_error():
    with pytest.raises(ValueError, match="num_clothes=0"):
        Ccaf(from_dict(CcafConfig, Ccaf.PRESETS["tiny"]), FakeCLIP(), DataSpec(NUM_CLASSES, 0, 0, "image"))


# ----------------------------------------------------------------- inference


def test_inference_uses_the_raw_encoder_alone_at_clip_reids_cost():
    from torch.utils.flop_counter import FlopCounterMode

    from reidbench.methods.clip_reid import ClipReid, ClipReidConfig

    torch.manual_seed(0)
    clip_reid = ClipReid(from_dict(ClipReidConfig, ClipReid.PRESETS["tiny"]), FakeCLIP(num_cameras=NUM_CAMERAS),
                         DataSpec(NUM_CLASSES, NUM_CAMERAS, NUM_CLOTHES, "image"))
    ccaf = build()
    b = {k: v for k, v in batch().items() if k in ("image", "pid", "camid", "index")}  # an evaluation batch

    def used(method):
        method.eval()
        out = method.embed_image(b)
        named = list(method.named_parameters())
        grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
        names = {n for (n, _), g in zip(named, grads) if g is not None}
        with FlopCounterMode(display=False) as counter:
            method.embed_image(b)
        return names, sum(p.numel() for n, p in named if n in names), counter.get_total_flops()

    names, params, flops = used(ccaf)
    assert not {n for n in names if n.startswith(("shield_", "proj_c", "prompt", "clothes"))}, names
    assert (params, flops) == used(clip_reid)[1:]


def test_the_ablation_sweep_covers_every_published_ccaf_row_and_each_builds():
    import argparse
    import importlib.util
    from pathlib import Path

    from reidbench.harness import leaderboard as lb

    path = Path(__file__).resolve().parents[1] / "sweeps" / "ablation_ccaf.py"
    spec = importlib.util.spec_from_file_location("ablation_ccaf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.trials(argparse.Namespace(smoke=True))
    names = {lb.ABLATION_ALIASES.get(t.ablation, t.ablation) for t in rows}
    assert set(lb.published_ablations("ccaf")["ablation"]) <= names
    for trial in rows:
        assert image_terms(build(**trial.params))  # every row builds and steps


# ------------------------------------------------------- a whole run, logged


@pytest.mark.slow
def test_a_run_through_the_prcc_adapter_trains_both_stages_and_logs_every_term_by_name(tmp_path, fake_backbone_kind):
    """``reidbench train --method ccaf`` on a PRCC-layout folder: stage 1 logs Eq. 16's four
    terms, stage 2 Eq. 17's nine, and the test split is scored under PRCC's two protocols."""
    from mlflow.tracking import MlflowClient

    from reidbench.datasets.synthetic import synthesize
    from reidbench.harness.api import train_run
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.tracking import tracking_uri

    root = synthesize(tmp_path / "synth", flavor="cc", ids=20, seed=0, workers=1, image_size=(64, 32),
                      images_per_id=3)["cc"]
    cfg = build_run_config(overrides=[
        "method=ccaf", "preset=tiny", "data.dataset=prcc", f"data.root={root}", "data.p=4", "data.k=2",
        "data.image_size=[32,16]", "data.num_workers=0", f"backbone.kind={fake_backbone_kind}",
        "backbone.pretrained=null", "optim.epochs_scale=0.2", f"output_dir={tmp_path / 'runs'}",
        "tracking.experiment=ccaf-run"])
    metrics = train_run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(metrics["run_id"])
    eq16 = {"i2t", "t2i", "i2t_clothes", "t2i_clothes"}
    eq17 = {"id", "triplet", "i2tce", "id_shield", "triplet_shield", "i2tce_shield", "con", "i2tce_clothes", "dis"}
    assert {f"train/{t}" for t in eq16 | eq17} <= set(run.data.metrics), sorted(run.data.metrics)
    steps = {t: [m.step for m in client.get_metric_history(run.info.run_id, f"train/{t}")] for t in eq16 | eq17}
    stage_1_end = max(max(steps[t]) for t in eq16)
    assert all(min(steps[t]) > stage_1_end for t in eq17), steps  # stage 2 after stage 1, each its own terms
    assert {"test/cc/mAP", "test/same_clothes/mAP"} <= set(metrics)
    assert run.data.tags["validation.protocol"] == "cc"


def _clothes_probe():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    return importlib.import_module("clothes_probe")


def test_the_clothes_probe_sees_outfits_beyond_the_identity_only_when_features_carry_them():
    import numpy as np

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(8), 20)  # 8 identities x 2 outfits x 10 images
    clothes = np.tile(np.repeat([0, 1], 10), 8)  # numbered per identity, as PRCC-style adapters do
    identity = np.eye(8)[pids] * 3.0
    outfit = np.eye(16)[pids * 2 + clothes] * 3.0

    def run(parts):
        x = np.concatenate([*parts, rng.normal(size=(len(pids), 8))], axis=1)
        return _clothes_probe().leakage(x / np.linalg.norm(x, axis=1, keepdims=True), pids, clothes)

    leaky, clean = run([identity, outfit]), run([identity, np.zeros_like(outfit)])
    assert leaky["outfit_chance"] == clean["outfit_chance"] == leaky["outfit_majority"] == 0.5
    assert leaky["changed_minus_other"] > 0.2 and clean["changed_minus_other"] > 0.2  # the identity is there
    assert leaky["outfit_acc"] > 0.95 and leaky["same_minus_changed"] > 0.2
    assert clean["outfit_acc"] < 0.7 and abs(clean["same_minus_changed"]) < 0.05
