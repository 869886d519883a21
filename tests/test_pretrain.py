"""Contrastive pretraining of the tiny CLIP: it learns colours from synthetic
captions, is cached by config and reused, and the loss handles repeated captions."""

from __future__ import annotations

import argparse

import pytest
import torch

from reidbench.backbones import build_clip
from reidbench.backbones import pretrain as P
from reidbench.cache import cache_root

# The default recipe itself (the pretraining users get on first use; shorter runs stay
# at chance, see the module docstring of reidbench.backbones.pretrain).
SHORT = dict(n_images=P.PretrainConfig.n_images, steps=P.PretrainConfig.steps, minutes=None,
             batch_size=P.PretrainConfig.batch_size, seed=0)
# Issue 16's targets, as multiples of chance (upper colour 0.75 of 10 classes, lower colour
# 0.75 of 8, R@1 about 0.30 among ~967 captions): a random-init tiny CLIP sits at chance on all
# three (test_random_init_misses_every_threshold); the recipe before issue 16's work (0.433,
# 0.205, 0.029) and the default after its first round (2100 steps of 32 on equal-band stripes:
# 0.741, 0.782, 0.433, upper colour short) miss them too. Today's default: results/pretrain_quality.txt.
THRESHOLDS = {"upper_colour": 7.5, "lower_colour": 6.0, "image_to_caption_R1": 290.0}


def below_thresholds(heldout: dict) -> list[str]:
    """The thresholds ``heldout`` (``evaluate_pretraining``'s dict) misses."""
    missed = []
    for factor in ("upper_colour", "lower_colour"):
        r = heldout["zero_shot"][factor]
        if not r["accuracy"] > THRESHOLDS[factor] * r["chance"]:
            missed.append(f"{factor} {r['accuracy']:.3f} <= {THRESHOLDS[factor]} x chance {r['chance']:.3f}")
    chance = 1 / heldout["caption_candidates"]
    if not heldout["image_to_caption_R1"] > THRESHOLDS["image_to_caption_R1"] * chance:
        missed.append(f"R@1 {heldout['image_to_caption_R1']:.3f} <= {THRESHOLDS['image_to_caption_R1']} x chance {chance:.4f}")
    return missed


@pytest.fixture(scope="module")
def cache():
    """The shared cache (``$REIDBENCH_CACHE``, else ``~/.cache/reidbench``), where first use puts
    the default pretraining: the suite trains it once (``data styles`` in test_annotate needs it
    too), and a warm cache skips it. Its key hashes the recipe and the generator's sources, so a
    changed recipe trains again."""
    return cache_root()


@pytest.fixture(scope="module")
def short_run(cache):
    cfg = P.PretrainConfig(**SHORT)
    path = P.pretrain_tiny(cfg, cache_dir=cache, stream=None)
    return cfg, path


@pytest.mark.slow
def test_default_pretraining_aligns_text_and_image(short_run):
    cfg, path = short_run
    record = P.read_record(path)
    assert record["steps"] == cfg.steps
    assert record["final_loss"] < record["first_loss"] - 0.5
    held = record["heldout"]
    upper, lower = held["zero_shot"]["upper_colour"], held["zero_shot"]["lower_colour"]
    assert upper["classes"] == 10 and lower["classes"] == 8 and upper["n"] == cfg.heldout_images
    assert set(held["zero_shot"]) == set(P.DEFAULT_PROMPTS)
    assert below_thresholds(held) == []


def test_random_init_misses_every_threshold():
    """The CI thresholds above cannot be passed without pretraining."""
    cfg = P.PretrainConfig()
    torch.manual_seed(0)
    model = build_clip("tiny").eval()
    images, captions, attributes = P.heldout_pairs(cfg)
    held = P.evaluate_pretraining(model, images, captions, attributes)
    assert len(below_thresholds(held)) == 3, held


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
    # A different config is a different entry (checked by its path: asking for it would train it,
    # and render 20,000 images first, inside the shared cache).
    other = P.pretrained_dir(P.PretrainConfig(**{**SHORT, "seed": 1}), cache)
    assert other != path and other.parent == path.parent

    # The saved weights give the recorded held-out accuracy when loaded as a backbone.
    model = build_clip("tiny", pretrained=path).eval()
    images, _, attributes = P.heldout_pairs(cfg)
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
    assert default == P.PretrainConfig() and default.minutes is None and default.steps == P.PretrainConfig.steps
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


# ----------------------------------------------------------- texts and captions ---
@pytest.fixture(scope="module")
def tiny_random():
    torch.manual_seed(0)
    return build_clip("tiny").eval()


def test_every_generator_text_fits_the_text_context(tiny_random):
    """No caption, description or prompt the generator writes is truncated (EOS pooling
    would read a mid-sentence state); the check names the kind that overflows."""
    tokenizer = tiny_random.tokenizer
    texts = P.generator_texts(n_people=60)
    lengths = P.check_text_lengths(tokenizer, texts)
    assert set(lengths) >= {"caption (SCGI)", "caption (CUHK-PEDES)", "pretraining caption (detailed)",
                            "pretraining caption (short)", "zero-shot prompt"}
    assert all(v.max() <= tokenizer.context_length for v in lengths.values())
    report = P.format_text_lengths(lengths, tokenizer.context_length)
    assert "pretraining caption (detailed)" in report and "median" in report
    long = {"caption (SCGI)": [" ".join(["red"] * tokenizer.context_length)]}
    with pytest.raises(ValueError, match=r"caption \(SCGI\): 79 tokens"):
        P.check_text_lengths(tokenizer, long)


def test_pretraining_pairs_captions_fit_the_context(tiny_random):
    from reidbench.datasets.synthetic import pretraining_pairs

    _, captions, _ = pretraining_pairs(300, seed=3, image_size=(32, 16))
    ids = tiny_random.tokenizer.hf(captions, add_special_tokens=False)["input_ids"]
    assert max(len(i) + 2 for i in ids) <= tiny_random.tokenizer.context_length


def test_caption_sampler_draws_fresh_captions_of_the_right_person():
    from reidbench.datasets import synthetic as S

    seed = 5
    _, _, attributes = S.pretraining_pairs(40, seed=seed, image_size=(32, 16))
    world = S.World(S.WorldConfig(seed=seed, difficulty=0.5, height=32, width=16))
    people = [(world.identity(S._PRETRAIN_NS, a["pid"]), world.outfit(S._PRETRAIN_NS, a["clothes_id"])) for a in attributes]

    def is_short(text, identity, outfit):
        return all(part in P.attribute_phrases(identity, outfit) for part in text.split(", "))

    sampler = P.CaptionSampler(attributes, seed, 0.5, (32, 16), short_fraction=0.5, seed=0)
    draws = [sampler([j] * 30) for j in range(len(attributes))]
    for (identity, outfit), texts in zip(people, draws):
        short = [t for t in texts if is_short(t, identity, outfit)]
        assert 0 < len(short) < len(texts)  # both kinds are drawn
        assert len(set(texts)) > 5  # a fresh caption per use, not the one pretraining_pairs wrote
        # Every generator caption form describes the top: its colour and its type.
        assert all(outfit.upper_colour in t.lower() and outfit.upper_type in t.lower() for t in texts if t not in short)
    again = P.CaptionSampler(attributes, seed, 0.5, (32, 16), short_fraction=0.5, seed=0)
    assert [again([j] * 30) for j in range(len(attributes))] == draws  # deterministic for a seed
    only_generator = P.CaptionSampler(attributes, seed, 0.5, (32, 16), short_fraction=0.0, seed=1)
    for j, (identity, outfit) in enumerate(people):
        assert not any(is_short(t, identity, outfit) for t in only_generator([j] * 10))


def test_length_bucketed_text_encoding_equals_the_plain_one(tiny_random):
    sentence = ("A young man with short black hair wearing a black shirt, black trousers and black shoes. "
                "He is carrying nothing.")
    texts = ["a red top", sentence, "black shoes, a man", "a person wearing grey trousers"] * 3
    with torch.no_grad():
        bucketed = P._encode_caption_batch(tiny_random, texts, buckets=3)
        plain = tiny_random.encode_texts(texts)
    assert torch.allclose(bucketed, plain, atol=1e-5)


def test_zero_shot_reports_every_attribute(tiny_random):
    from reidbench.datasets.synthetic import pretraining_pairs

    images, _, attributes = pretraining_pairs(30, seed=2, image_size=(128, 64))
    result = P.zero_shot_attribute_accuracy(tiny_random, images, attributes)
    assert set(result) == {"upper_colour", "lower_colour", "upper_pattern", "shoes_colour", "hair_colour", "bag", "gender"}
    assert result["bag"]["classes"] <= 3 and result["gender"]["chance"] == 0.5
    assert P.value_words("bag", "none") == "nothing"


def test_colour_accuracy_on_plain_garments_is_reported_apart(tiny_random):
    """A patterned top shows two colours (its label is the dominant one); the plain-garment
    accuracy counts only tops of one colour."""
    import torch.nn.functional as F

    from reidbench.datasets.synthetic import pretraining_pairs

    images, _, attributes = pretraining_pairs(40, seed=2, image_size=(128, 64))
    templates = P.DEFAULT_PROMPTS["upper_colour"]
    values = sorted({str(a["upper_colour"]) for a in attributes})
    filled = [t.format(P.value_words("upper_colour", v)) for v in values for t in templates]
    text = F.normalize(P._text_embeddings(tiny_random, filled).view(len(values), len(templates), -1).mean(1), dim=-1)
    # an image tower right on every plain top and wrong on every patterned one
    right = [values.index(a["upper_colour"]) for a in attributes]
    emb = torch.stack([text[k if a["upper_pattern"] == "plain" else (k + 1) % len(values)]
                       for k, a in zip(right, attributes)])
    r = P.zero_shot_attribute_accuracy(tiny_random, images, attributes, prompts={"upper_colour": templates},
                                       image_embeddings=emb)["upper_colour"]
    plain = sum(a["upper_pattern"] == "plain" for a in attributes)
    assert 0 < plain < len(attributes) and len(values) > 1
    assert r["plain_n"] == plain and r["plain_accuracy"] == 1.0
    assert r["accuracy"] == pytest.approx(plain / len(attributes))


def test_short_captions_carry_the_labels_they_name_and_anchors_pull_both_towers():
    from reidbench.datasets import synthetic as S

    _, _, attributes = S.pretraining_pairs(12, seed=7, image_size=(32, 16))
    sampler = P.CaptionSampler(attributes, 7, 0.5, (32, 16), short_fraction=0.5, seed=0)
    labels = P.attribute_labels(attributes)
    shoes = P.ANCHOR_FACTORS.index("shoes_colour")
    seen_short = seen_long = 0
    for _ in range(10):
        captions, named = sampler.draw(list(range(12)))
        for row, (text, a) in enumerate(zip(captions, attributes)):
            if (named[row] < 0).all():
                seen_long += 1  # a generator caption: never parsed, never classified
                continue
            seen_short += 1
            known = named[row] >= 0
            assert torch.equal(named[row][known], labels[row][known])  # only this image's own values
            assert bool(known[shoes]) == (f"{a['shoes_colour']} shoes" in text)
    assert seen_short > 20 and seen_long > 20

    anchors = P.AttributeAnchors(8)
    on_anchor = torch.stack([anchors.classes[k][labels[:, k]] for k in range(len(P.ANCHOR_FACTORS))]).mean(0)
    unnamed = torch.full_like(labels, -1)
    assert anchors(on_anchor, labels) < anchors(torch.randn(12, 8), labels)
    assert anchors(torch.randn(12, 8), unnamed) == 0  # nothing named: no loss


def test_anchors_train_with_the_model_and_are_not_kept():
    from reidbench.datasets import synthetic as S

    images, _, attributes = S.pretraining_pairs(16, seed=8, image_size=(128, 64))
    torch.manual_seed(0)
    model = build_clip("tiny")
    before = set(model.state_dict())
    sampler = P.CaptionSampler(attributes, 8, 0.5, (128, 64), short_fraction=0.5, seed=0)
    cfg = P.PretrainConfig(n_images=16, batch_size=8, steps=2, attribute_anchor_weight=1.0)
    summary = P.train_clip(model, torch.as_tensor(images), sampler, cfg, stream=None)
    assert summary["steps"] == 2 and set(model.state_dict()) == before
    with pytest.raises(ValueError, match="needs short_caption_fraction"):
        P.PretrainConfig(short_caption_fraction=0.0, attribute_anchor_weight=1.0)



@pytest.mark.parametrize("source", ["synthetic.py", "render.py", "raster.py"])
def test_a_change_to_any_generator_source_gives_a_new_pretraining_key(tmp_path, monkeypatch, source):
    """The tiny CLIP is trained on rendered images: a renderer change must not reuse a stale cache
    (the key once hashed synthetic.py alone)."""
    import shutil
    from pathlib import Path

    from reidbench.backbones.pretrain_config import PretrainConfig
    from reidbench.datasets import render, synthetic

    before = P.pretrain_key(PretrainConfig())
    folder = Path(synthetic.__file__).parent
    for name in ("synthetic.py", "render.py", "raster.py"):
        shutil.copy(folder / name, tmp_path / name)
    # the fingerprint reads these modules' files (raster.py: the one beside render's)
    monkeypatch.setattr(synthetic, "__file__", str(tmp_path / "synthetic.py"))
    monkeypatch.setattr(render, "__file__", str(tmp_path / "render.py"))
    assert P.pretrain_key(PretrainConfig()) == before  # the copies alone change nothing
    with open(tmp_path / source, "a") as fh:
        fh.write("\n# a change\n")
    assert P.pretrain_key(PretrainConfig()) != before
