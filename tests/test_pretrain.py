"""Contrastive pretraining of the tiny CLIP: it learns colours from synthetic
captions, is cached by config and reused, and the loss handles repeated captions."""

from __future__ import annotations

import argparse

import pytest
import torch

from reidbench.backbones import build_clip
from reidbench.backbones import pretrain as P

# The default recipe itself (about 5 minutes): shorter runs stay at chance (see the
# module docstring of reidbench.backbones.pretrain), and the default is what users get.
SHORT = dict(n_images=P.PretrainConfig.n_images, steps=P.PretrainConfig.steps, minutes=None,
             batch_size=P.PretrainConfig.batch_size, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reidbench-cache")


@pytest.fixture(scope="module")
def short_run(cache):
    cfg = P.PretrainConfig(**SHORT)
    path = P.pretrain_tiny(cfg, cache_dir=cache, stream=None)
    return cfg, path


@pytest.mark.slow
def test_short_pretraining_learns_colours_zero_shot(short_run):
    cfg, path = short_run
    record = P.read_record(path)
    assert record["steps"] == cfg.steps
    assert record["final_loss"] < record["first_loss"] - 0.5
    upper = record["heldout"]["zero_shot"]["upper_colour"]
    lower = record["heldout"]["zero_shot"]["lower_colour"]
    assert upper["classes"] == 10 and lower["classes"] == 8 and upper["n"] == cfg.heldout_images
    assert upper["accuracy"] > 2 * upper["chance"], upper
    assert lower["accuracy"] > 1.5 * lower["chance"], lower
    assert record["heldout"]["image_to_caption_R1"] > 5 / record["heldout"]["caption_candidates"]


@pytest.mark.slow
def test_cached_model_is_reused_and_reproduces_its_metrics(short_run, cache, monkeypatch):
    cfg, path = short_run
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(P, "train_clip", no_training)
    assert P.pretrain_tiny(P.PretrainConfig(**SHORT), cache_dir=cache, stream=None) == path
    assert weights.stat().st_mtime_ns == stamp
    # A different config is a different entry (here it would have to train: refused above).
    with pytest.raises(AssertionError, match="trained again"):
        P.pretrain_tiny(P.PretrainConfig(**{**SHORT, "seed": 1}), cache_dir=cache, stream=None)

    # The saved weights give the recorded held-out accuracy when loaded as a backbone.
    model = build_clip("tiny", pretrained=path).eval()
    images, _, attributes = P.load_pairs(cfg.heldout_images, cfg.heldout_seed, cfg.image_size)
    again = P.zero_shot_attribute_accuracy(model, images, attributes)
    recorded = P.read_record(path)["heldout"]["zero_shot"]
    assert again["upper_colour"]["accuracy"] == pytest.approx(recorded["upper_colour"]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_cli_finds_the_cached_model(short_run, cache, capsys):
    cfg, path = short_run
    parser = P.add_pretrain_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--preset", "tiny", "--steps", str(cfg.steps), "--images", str(cfg.n_images),
                              "--batch-size", str(cfg.batch_size), "--cache-dir", str(cache)])
    assert P.run_pretrain(args) == 0
    out = capsys.readouterr().out
    assert "already in the cache" in out and str(path) in out and "zero-shot upper_colour" in out
    with pytest.raises(SystemExit):  # one budget or the other
        parser.parse_args(["--steps", "5", "--minutes", "1"])
    default = P.config_from_args(parser.parse_args([]))
    assert default == P.PretrainConfig() and default.minutes is None and default.steps == 300
    assert P.config_from_args(parser.parse_args(["--minutes", "2"])).steps is None


def test_repeated_captions_are_not_negatives():
    """Images sharing a caption are interchangeable under the loss (plain InfoNCE
    would push them apart); with unique captions it is CLIP's loss."""
    torch.manual_seed(0)
    images, texts = torch.randn(6, 8), torch.randn(6, 8)
    texts[1] = texts[0]  # same caption, same text embedding
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    scale = torch.tensor(2.0)
    swapped = images[[1, 0, 2, 3, 4, 5]]
    assert P.clip_loss(swapped, texts, scale, groups) == pytest.approx(float(P.clip_loss(images, texts, scale, groups)))
    # With identical caption embeddings the soft targets give plain InfoNCE's value: the
    # duplicate column has the same logit as the positive, so neither loss separates them.
    assert P.clip_loss(images, texts, scale, groups) == pytest.approx(float(P.clip_loss(images, texts, scale)))
    unique = torch.arange(6)
    assert P.clip_loss(images, texts, scale, unique) == pytest.approx(float(P.clip_loss(images, texts, scale)))


def test_budget_is_required_and_exclusive():
    with pytest.raises(ValueError, match="exactly one budget"):
        P.PretrainConfig(minutes=None, steps=None)
    with pytest.raises(ValueError, match="exactly one budget"):
        P.PretrainConfig(minutes=1.0, steps=10)
    assert P.pretrain_key(P.PretrainConfig()) != P.pretrain_key(P.PretrainConfig(minutes=1.0, steps=None))
