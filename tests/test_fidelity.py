"""Fidelity of clip_reid, ProFD and SCING to their papers and CLIP-ReID's released code
(issue 20): the paper preset needs real weights and keeps the last epoch, the CLIP-ReID
data recipe (0.5 normalisation, each method's crop probability, bilinear test resize),
schedules stepped at the start of each epoch, overlapping patches at stride 12, SCING's
literal Eq. 17 and the published-number labels."""

from __future__ import annotations

import bisect
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from fakes import FakeCLIP
from reidbench.config import ConfigError, from_dict
from reidbench.datasets.transforms import build_eval_transform, build_train_transform
from reidbench.harness.leaderboard import load_published
from reidbench.harness.optim import lr_factor
from reidbench.harness.run_config import build_run_config
from reidbench.harness.trainer import pixel_statistics, selection_notice
from reidbench.harness.validation import Validation
from reidbench.methods import DataSpec
from reidbench.methods.clip_reid import ClipReidConfig
from reidbench.methods.profd import ProFDConfig, patch_labels
from reidbench.methods.scing import Scing, ScingConfig

HALF = (0.5, 0.5, 0.5)


# ------------------------------------------------------------------ the paper preset


def test_paper_preset_without_weights_is_refused_unless_random_init_is_asked_for():
    with pytest.raises(ConfigError, match=r"backbone\.pretrained=DIR.*backbone\.pretrained=null"):
        build_run_config(overrides=["preset=paper"])
    random_init = build_run_config(overrides=["preset=paper", "backbone.pretrained=null"])
    assert random_init.backbone.pretrained is None and random_init.backbone.preset == "vit-b16"
    assert build_run_config(overrides=["preset=paper", "backbone.pretrained=/models/clip"]).backbone.pretrained \
        == "/models/clip"
    # a checkpoint's saved config names its weights: re-building it is not refused
    assert build_run_config(base={"preset": "paper", "backbone": {"pretrained": None}}).preset == "paper"


def test_paper_preset_keeps_the_last_epoch_and_says_so():
    paper = build_run_config(overrides=["preset=paper", "backbone.pretrained=null"])
    assert paper.data.val_fraction == 0.0
    notice = selection_notice(paper, Validation())
    assert "last epoch" in notice and "paper preset" in notice and "data.val_fraction=0.1" in notice
    assert build_run_config(overrides=["preset=paper", "backbone.pretrained=null", "data.val_fraction=0.1"]
                            ).data.val_fraction == 0.1
    assert build_run_config().data.val_fraction == 0.1  # tiny keeps validation


# ------------------------------------------------------------------ data recipe


@pytest.mark.parametrize("method", ["baseline", "clip_reid", "profd", "scing"])
def test_clip_reid_family_normalises_with_the_official_half_statistics(method):
    cfg = build_run_config(overrides=[f"method={method}"])
    assert (cfg.data.pixel_mean, cfg.data.pixel_std) == (HALF, HALF)
    assert pixel_statistics(cfg, SimpleNamespace(backbone=FakeCLIP())) == {"mean": HALF, "std": HALF}
    own = build_run_config(overrides=[f"method={method}", "data.pixel_mean=null", "data.pixel_std=null"])
    backbone = SimpleNamespace(image_mean=(0.1, 0.2, 0.3), image_std=(0.4, 0.5, 0.6))
    assert pixel_statistics(own, SimpleNamespace(backbone=backbone)) == {"mean": (0.1, 0.2, 0.3),
                                                                        "std": (0.4, 0.5, 0.6)}


def test_pixel_statistics_must_come_in_pairs():
    with pytest.raises(ValueError, match="pixel_mean and data.pixel_std go together"):
        build_run_config(overrides=["data.pixel_mean=[0.5, 0.5, 0.5]", "method=t2i_baseline", "data.pixel_std=null"])


@pytest.mark.parametrize("method, crop_p", [("clip_reid", 1.0), ("baseline", 1.0), ("profd", 0.5), ("scing", 0.5)])
def test_each_method_crops_with_its_papers_probability(method, crop_p):
    assert build_run_config(overrides=[f"method={method}"]).data.crop_p == crop_p
    assert build_run_config(overrides=[f"method={method}", "data.crop_p=0.25"]).data.crop_p == 0.25


def test_crop_probability_is_checked_and_applied():
    with pytest.raises(ValueError, match=r"data\.crop_p must be a probability"):
        build_run_config(overrides=["data.crop_p=1.5"])
    image = tv_tensors.Image(torch.arange(3 * 32 * 16, dtype=torch.float32).reshape(3, 32, 16).remainder(251)
                             .to(torch.uint8))
    plain = build_train_transform((32, 16), flip_p=0.0, erase_p=0.0, crop_p=0.0)({"image": image})["image"]
    half = build_train_transform((32, 16), flip_p=0.0, erase_p=0.0, crop_p=0.5)
    torch.manual_seed(0)
    uncropped = sum(torch.equal(half({"image": image})["image"], plain) for _ in range(200))
    # a random crop of the 10-padded image lands back at offset (10, 10) 1 time in 441
    assert 70 <= uncropped <= 130


def test_test_time_resize_is_bilinear_as_the_released_code():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8))
    out = build_eval_transform((64, 32), mean=(0, 0, 0), std=(1, 1, 1))({"image": image})["image"]
    bilinear = v2.functional.resize(image, [64, 32], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    bicubic = v2.functional.resize(image, [64, 32], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    assert torch.allclose(out, bilinear.float() / 255)
    assert not torch.allclose(out, bicubic.float() / 255)
    switched = build_eval_transform((64, 32), mean=(0, 0, 0), std=(1, 1, 1), interpolation="bicubic")
    assert torch.allclose(switched({"image": image})["image"], bicubic.float() / 255)
    assert build_run_config(overrides=["data.eval_interpolation=bicubic"]).data.eval_interpolation == "bicubic"


# ------------------------------------------------------------------ schedules


def official_warmup_multistep(epoch: int, warmup: int, factor: float, milestones, gamma: float) -> float:
    """CLIP-ReID's WarmupMultiStepLR as its stage-2 loop uses it: ``scheduler.step()`` at the
    start of every epoch, so 0-based epoch ``e`` trains at ``last_epoch = e + 1``."""
    last = epoch + 1
    warm = 1.0
    if last < warmup:
        alpha = last / warmup
        warm = factor * (1 - alpha) + alpha
    return warm * gamma ** bisect.bisect_right(list(milestones), last)


def test_image_stage_schedule_matches_the_official_warmup_multistep_lr():
    for cfg in (ClipReidConfig().image, from_dict(ClipReidConfig, ClipReidConfig.preset("tiny")).image):
        stage = cfg.stage("image", trainable=("",), head_prefix="head.")
        ours = [lr_factor(stage, e, stage.epochs) for e in range(stage.epochs)]
        official = [official_warmup_multistep(e, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma)
                    for e in range(stage.epochs)]
        assert ours == pytest.approx(official)
    paper = [lr_factor(ClipReidConfig().image.stage("image", ("",), "head."), e, 60) for e in (0, 8, 9, 28, 29, 49)]
    assert paper == pytest.approx([0.19, 0.91, 1.0, 1.0, 0.1, 0.01])


def test_profd_and_scing_schedules_step_at_the_start_of_each_epoch():
    from reidbench.methods.profd import ProFD

    profd = ProFD(ProFDConfig(n_ctx=4), FakeCLIP(), DataSpec(4, 2)).stages()[0]
    assert [lr_factor(profd, e, 120) for e in (0, 9, 29, 49)] == pytest.approx([0.19, 1.0, 0.1, 0.01])
    scing = Scing(ScingConfig(use_pdca=False, fusion="none"), FakeCLIP(), DataSpec(4, 2)).stages()
    for stage in scing:  # "decreases by a factor of 0.1 at epochs 30 and 50" (1-based)
        assert [lr_factor(stage, e, 120) for e in (0, 28, 29, 48, 49)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_prompt_stage_warmup_matches_the_official_cosine_scheduler():
    cfg = ClipReidConfig().prompt
    stage = cfg.stage("prompt", ("prompt_learner.",))
    # timm's CosineLRScheduler(warmup_t=5, warmup_lr_init=1e-5) stepped with epoch 1, 2, ...
    for e in range(4):
        assert lr_factor(stage, e, 120) * cfg.lr == pytest.approx(1e-5 + (e + 1) * (cfg.lr - 1e-5) / 5)
    assert lr_factor(stage, 4, 120) == pytest.approx(1.0)


# ------------------------------------------------------------------ stride 12


def test_overlapping_patch_presets_have_clip_reids_grid_and_the_same_weights():
    from reidbench.backbones.clip import build_clip, get_preset, patch_grid_of

    assert patch_grid_of(get_preset("vit-b16-s12").image_size, 16, get_preset("vit-b16-s12").patch_stride) == (21, 10)
    torch.manual_seed(0)
    model = build_clip("tiny-s12", None)
    assert model.patch_grid == (10, 5) and model.patch_stride == 12
    assert model.vision.embeddings.patch_embedding.stride == (12, 12)
    feats = model.encode_image(torch.randn(2, 3, 128, 64))
    assert feats.tokens.shape == (2, 1 + 10 * 5, model.vision_width)
    plain = build_clip("tiny", None)
    assert plain.patch_grid == (8, 4) and plain.vision.embeddings.patch_embedding.stride == (16, 16)


def test_profd_patch_labels_cover_each_overlapping_patch_exactly():
    mask = torch.zeros(1, 28, 16, dtype=torch.long)
    mask[0, 12:16] = 1  # rows 12-15: in patch row 0 (rows 0-15) and patch row 1 (rows 12-27)
    labels = patch_labels(mask, (2, 1), patch_size=16, stride=12)
    assert labels.shape == (1, 6, 2)
    assert labels[0, 1].tolist() == pytest.approx([0.25, 0.25])  # 4 of 16 rows in each
    with pytest.raises(ValueError, match="give a 2x1 grid, not the model's 3x1"):
        patch_labels(mask, (3, 1), patch_size=16, stride=12)


def test_profd_trains_on_the_stride12_backbone():
    from reidbench.backbones.clip import build_clip
    from reidbench.methods.profd import ProFD

    torch.manual_seed(0)
    backbone = build_clip("tiny-s12", None)
    method = ProFD(from_dict(ProFDConfig, {**ProFDConfig.preset("tiny"), "memory_bank": "none"}), backbone,
                   DataSpec(2, 1))
    mask = torch.zeros(4, 128, 64, dtype=torch.long)
    for part in range(5):
        mask[:, 10 + 22 * part: 32 + 22 * part, 16:48] = part + 1
    batch = {"image": torch.randn(4, 3, 128, 64), "pid": torch.tensor([0, 0, 1, 1]), "camid": torch.zeros(4).long(),
             "mask": mask, "visible": torch.ones(4, 5, dtype=torch.bool)}
    terms = method.training_step(batch, method.stages()[0])
    assert all(torch.isfinite(v) for v in terms.values()) and "align" in terms and "attn" in terms


# ------------------------------------------------------------------ SCING Eq. 17


def test_scing_eq17_can_be_the_literal_unscaled_cosine():
    torch.manual_seed(0)
    image, text = torch.randn(6, 16), torch.randn(4, 16)
    logits = {}
    for mode in ("cosine", "cosine_unscaled", "raw"):
        method = Scing(from_dict(ScingConfig, {"i2t_logits": mode}), FakeCLIP(), DataSpec(4, 2))
        logits[mode] = method.i2t_logits(image, text)
    cosine = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    assert torch.allclose(logits["cosine_unscaled"], cosine, atol=1e-6)
    assert torch.allclose(logits["cosine"], cosine * FakeCLIP().logit_scale.exp(), atol=1e-5)
    assert torch.allclose(logits["raw"], image @ text.T, atol=1e-6)


# ------------------------------------------------------------------ published numbers


def test_published_labels_say_where_borrowed_numbers_come_from():
    pub = load_published()
    scing_t1 = pub[(pub["paper"] == "scing") & (pub["table"] == "Table 1") & pub["method"].isin(["clip_reid", "profd"])]
    assert len(scing_t1) == 8
    assert scing_t1["note"].str.contains("SCING's Table 1").all() and scing_t1["note"].str.contains("stride 12").all()
    scing_t2 = pub[(pub["paper"] == "scing") & (pub["table"] == "Table 2") & (pub["method"] == "clip_reid")]
    equals = scing_t2[scing_t2["note"].str.contains("equals CLIP-ReID", regex=False)]
    assert set(equals["dataset"]) == {"occluded_duke"}
