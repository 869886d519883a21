"""The clip_reid, baseline and t2i_baseline methods: registry, configs, stages, what
trains when, caches, loss definitions, and that a few steps reduce the loss (fake and
real tiny backbones). What every method must do is in test_method_contract.py."""

from __future__ import annotations

import pytest
import torch

from fakes import FakeCLIP, chunks, identity_batch
from reidbench.methods import DataSpec
from reidbench.config import from_dict
from reidbench.methods import Method, Stage, get_method, list_methods
from reidbench.methods.baseline import Baseline, BaselineConfig
from reidbench.methods.clip_reid import ClipReid, ClipReidConfig

NUM_CLASSES = 4


def make_batch(size=(32, 16), seed=0, n_per_id=2):
    return identity_batch(NUM_CLASSES, size, seed, n_per_id)


def apply_stage(method: Method, stage: Stage, lr: float | None = None) -> torch.optim.Optimizer:
    """Stage semantics as documented in base.py: freeze all but ``trainable`` prefixes."""
    for name, p in method.named_parameters():
        p.requires_grad_(any(name.startswith(prefix) for prefix in stage.trainable))
    params = [p for p in method.parameters() if p.requires_grad]
    assert params, f"stage {stage.name} trains nothing"
    return torch.optim.Adam(params, lr=lr or stage.lr)


def train_steps(method, stage, batch, steps, lr):
    method.zero_grad(set_to_none=True)
    opt = apply_stage(method, stage, lr)
    method.train()
    weights = dict(stage.loss_weights)
    losses = []
    for _ in range(steps):
        terms = method.training_step(batch, stage)
        loss = sum(weights.get(name, 1.0) * value for name, value in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, terms


def fake_clip_reid(**overrides):
    torch.manual_seed(0)
    cfg = from_dict(ClipReidConfig, overrides)
    return ClipReid(cfg, FakeCLIP(num_cameras=2), DataSpec(NUM_CLASSES, 2))


# ------------------------------------------------------------- registry


def test_registry_lists_both_methods():
    names = list_methods()
    assert {"clip_reid", "baseline"} <= set(names)
    assert get_method("clip_reid") is ClipReid and get_method("baseline") is Baseline
    assert list_methods("clip*") == ["clip_reid", "clip_scgi"]
    with pytest.raises(KeyError, match="did you mean 'clip_reid'"):
        get_method("clipreid")


def test_paper_defaults_are_the_clip_reid_recipe():
    cfg = ClipReidConfig()
    assert (cfg.n_ctx, cfg.ctx_init_std, cfg.prompt_template) == (4, 0.02, "a photo of a {ctx} person.")
    assert (cfg.prompt.epochs, cfg.prompt.lr, cfg.prompt.warmup_epochs) == (120, 3.5e-4, 5)
    img = cfg.image
    assert (img.epochs, img.lr, img.warmup_epochs, img.warmup_factor) == (60, 5e-6, 10, 0.1)
    assert (tuple(img.milestones), img.gamma, img.label_smoothing, img.triplet_margin) == ((30, 50), 0.1, 0.1, 0.3)
    assert cfg.neck_feat == "before" and cfg.use_i2t_in_stage2
    assert BaselineConfig().image == img


def test_baseline_and_clip_reid_tiny_image_stages_match():
    assert ClipReid.PRESETS["tiny"]["image"] == Baseline.PRESETS["tiny"]["image"]


# ---------------------------------------------------------------- stages


def test_clip_reid_stages_follow_the_config():
    method = fake_clip_reid(prompt={"epochs": 7}, image={"epochs": 9, "head_lr_mult": 10.0})
    s1, s2 = method.stages()
    assert (s1.name, s1.epochs, s1.schedule, s1.trainable) == ("prompt", 7, "cosine", ("prompt_learner.",))
    assert abs(s1.warmup_factor - 1e-5 / 3.5e-4) < 1e-12
    assert (s2.name, s2.epochs, s2.schedule, s2.milestones) == ("image", 9, "steps", (30, 50))
    assert s2.param_groups == (("head.", 10.0),)
    assert s1.loss_weights == ()
    assert dict(s2.loss_weights) == {"id": 0.25, "triplet": 1.0, "i2tce": 1.0}  # official loss weights
    trained = {n for n, _ in method.named_parameters() if any(n.startswith(p) for p in s2.trainable)}
    assert any(n.startswith("backbone.vision.") for n in trained)
    assert "backbone.camera_embedding" in trained and "head.neck_cls.bn.weight" in trained
    assert not any(n.startswith(("backbone.text", "prompt_learner")) or n == "backbone.logit_scale" for n in trained)


# --------------------------------------------------------------- stage 1


def test_stage1_caches_frozen_image_features_and_trains_only_the_prompts():
    method = fake_clip_reid()
    s1 = method.stages()[0]
    batch = make_batch()
    method.train()
    method.begin_stage(s1, lambda: chunks(batch))
    assert method.training  # begin_stage restores the mode
    with torch.no_grad():
        method.eval()
        expected = method.backbone.encode_image(batch["image"]).proj  # no camera embedding in stage 1
    assert torch.allclose(method._image_bank.features, expected, atol=1e-6)

    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not n.startswith("prompt_learner")}
    ctx0 = method.prompt_learner.ctx.detach().clone()
    losses, terms = train_steps(method, s1, batch, steps=15, lr=1e-2)
    assert set(terms) == {"i2t", "t2i"}
    assert losses[-1] < losses[0] - 0.05
    for n, p in method.named_parameters():
        if n.startswith("prompt_learner"):
            assert p.grad is not None
        else:
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), n
    assert not torch.equal(method.prompt_learner.ctx, ctx0)


def test_stage1_loss_reads_the_cache_not_the_batch_images():
    method = fake_clip_reid()
    s1 = method.stages()[0]
    batch = make_batch()
    method.begin_stage(s1, lambda: chunks(batch))
    a = method.training_step(batch, s1)
    noisy = dict(batch, image=torch.randn_like(batch["image"]) * 5)
    b = method.training_step(noisy, s1)
    assert torch.equal(a["i2t"], b["i2t"]) and torch.equal(a["t2i"], b["t2i"])
    with pytest.raises(ValueError, match="mismatch"):
        method.training_step(dict(batch, pid=batch["pid"].flip(0)), s1)
    fresh = fake_clip_reid()
    with pytest.raises(RuntimeError, match="begin_stage"):
        fresh.training_step(batch, s1)


def test_stage1_encodes_each_identity_once_with_the_per_sample_result():
    from reidbench.methods.components import i2t_t2i_losses

    method = fake_clip_reid()
    s1 = method.stages()[0]
    batch = make_batch(n_per_id=3)
    method.begin_stage(s1, lambda: chunks(batch))
    terms = method.training_step(batch, s1)
    sum(terms.values()).backward()
    grad = method.prompt_learner.ctx.grad.clone()
    method.zero_grad()
    # the official code encodes one prompt per sample
    ref = i2t_t2i_losses(method._image_bank.lookup(batch["index"]), method.encode_prompts(batch["pid"]), batch["pid"])
    sum(ref.values()).backward()
    assert torch.allclose(terms["i2t"], ref["i2t"], atol=1e-6) and torch.allclose(terms["t2i"], ref["t2i"], atol=1e-6)
    assert torch.allclose(grad, method.prompt_learner.ctx.grad, atol=1e-6)


# --------------------------------------------------------------- stage 2


def test_stage2_trains_the_image_side_against_cached_identity_text_features():
    method = fake_clip_reid()
    s1, s2 = method.stages()
    batch = make_batch()
    method.begin_stage(s1, lambda: chunks(batch))
    train_steps(method, s1, batch, steps=3, lr=1e-2)
    method.begin_stage(s2, lambda: chunks(batch))
    assert method._image_bank is None
    with torch.no_grad():
        expected = method.encode_prompts(torch.arange(NUM_CLASSES))
    bank = method._text_bank.features.clone()
    assert bank.shape == (NUM_CLASSES, method.backbone.embed_dim)
    assert torch.allclose(bank, expected, atol=1e-6)

    text_side = {n: p.detach().clone() for n, p in method.named_parameters()
                 if n.startswith(("backbone.text", "prompt_learner"))}
    losses, terms = train_steps(method, s2, batch, steps=12, lr=1e-3)
    assert set(terms) == {"id", "triplet", "i2tce"}
    assert losses[-1] < losses[0]
    assert terms["i2tce"].item() < torch.log(torch.tensor(float(NUM_CLASSES))).item() + 1.0
    for n, p in method.named_parameters():
        if n in text_side:
            assert p.grad is None, n
            assert torch.equal(p, text_side[n]), n
    assert method.backbone.vision["patch"].weight.grad is not None
    assert torch.equal(method._text_bank.features, bank)


def test_stage2_i2tce_uses_the_cache_and_can_be_switched_off():
    method = fake_clip_reid()
    s1, s2 = method.stages()
    batch = make_batch()
    method.begin_stage(s2, lambda: chunks(batch))
    method.eval()  # BN on running stats so two calls see the same features
    before = method.training_step(batch, s2)["i2tce"]
    with torch.no_grad():
        method.prompt_learner.ctx.add_(1.0)  # the prompts change, the cached text features do not
    assert torch.equal(method.training_step(batch, s2)["i2tce"], before)
    method.begin_stage(s2, lambda: chunks(batch))  # rebuilding the cache (e.g. on resume) picks the change up
    assert not torch.equal(method.training_step(batch, s2)["i2tce"], before)

    off = fake_clip_reid(use_i2t_in_stage2=False)
    (only,) = off.stages()  # nothing reads the prompts: no prompt stage
    assert only.name == "image"
    assert set(off.training_step(batch, only)) == {"id", "triplet"}


def test_i2t_logits_raw_is_the_official_dot_product_and_cosine_uses_logit_scale():
    method = fake_clip_reid()
    img, txt = torch.randn(3, 16), torch.randn(4, 16)
    assert torch.allclose(method.i2t_logits(img, txt), img @ txt.T)
    cos = fake_clip_reid(i2t_logits="cosine")
    expected = cos.backbone.logit_scale.exp() * torch.nn.functional.normalize(img, dim=1) @ \
        torch.nn.functional.normalize(txt, dim=1).T
    assert torch.allclose(cos.i2t_logits(img, txt), expected, atol=1e-5)


# ------------------------------------------------------------- inference


def test_embed_image_feature_convention_and_sie_switch():
    batch = make_batch()
    method = fake_clip_reid().eval()
    with torch.no_grad():
        feat = method.embed_image(batch)
        feats = method.backbone.encode_image(batch["image"], batch["camid"])
    assert torch.allclose(feat, torch.cat([feats.cls, feats.proj], 1), atol=1e-6)
    with torch.no_grad():
        other_cam = method.embed_image(dict(batch, camid=1 - batch["camid"]))
        no_sie = fake_clip_reid(sie=False).eval()
        a = no_sie.embed_image(batch)
        b = no_sie.embed_image(dict(batch, camid=1 - batch["camid"]))
    assert not torch.allclose(feat, other_cam)  # the camera embedding is used
    assert torch.equal(a, b)  # and ignored with sie=False
    after = fake_clip_reid(neck_feat="after").eval()
    assert after.embed_image(batch).shape == feat.shape
    d = method.distance(feat, feat)
    assert torch.allclose(d.diagonal(), torch.zeros(len(feat)), atol=1e-5)


# -------------------------------------------------------------- baseline


def test_baseline_single_stage_reduces_id_and_triplet_loss():
    torch.manual_seed(0)
    method = Baseline(BaselineConfig(), FakeCLIP(), DataSpec(NUM_CLASSES))
    (stage,) = method.stages()
    assert (stage.name, stage.epochs, stage.lr) == ("image", 60, 5e-6)
    assert dict(stage.loss_weights) == {"id": 0.25, "triplet": 1.0}
    batch = make_batch()
    method.begin_stage(stage, lambda: chunks(batch))
    losses, terms = train_steps(method, stage, batch, steps=12, lr=1e-3)
    assert set(terms) == {"id", "triplet"}
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith("backbone.text"))
    with torch.no_grad():
        emb = method.eval().embed_image(batch)
    assert emb.shape == (8, method.backbone.vision_width + method.backbone.embed_dim)
    with pytest.raises(NotImplementedError):
        method.embed_text(batch)


# ---------------------------------------------------- real tiny backbone


@pytest.fixture(scope="module")
def tiny_clip():
    """The real ``ReidCLIP`` at the ``tiny`` preset (random weights), with a word
    tokenizer trained here so the test needs neither the synthetic generator nor
    a cache."""
    from reidbench.backbones.clip import PRESETS, ReidCLIP
    from reidbench.backbones.tokenizer import train_word_tokenizer

    torch.manual_seed(0)
    tok = train_word_tokenizer(["a photo of a person.", "a person in a red top and blue pants"], context_length=32)
    spec = PRESETS["tiny"]
    grid = (spec.image_size[0] // spec.patch_size, spec.image_size[1] // spec.patch_size)
    config = spec.clip_config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id,
                              bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, grid=grid)
    return ReidCLIP(config, tok, image_size=spec.image_size, num_cameras=2, preset="tiny")


def test_clip_reid_two_stages_on_the_real_tiny_backbone(tiny_clip):
    import copy

    backbone = copy.deepcopy(tiny_clip)
    method = ClipReid(ClipReidConfig(), backbone, DataSpec(NUM_CLASSES, 2))
    s1, s2 = method.stages()
    batch = make_batch(size=backbone.image_size)
    method.begin_stage(s1, lambda: chunks(batch, 4))
    losses1, _ = train_steps(method, s1, batch, steps=6, lr=1e-3)
    assert losses1[-1] < losses1[0]
    assert all(p.grad is None for n, p in method.named_parameters() if not n.startswith("prompt_learner"))
    method.begin_stage(s2, lambda: chunks(batch, 4))
    losses2, terms = train_steps(method, s2, batch, steps=6, lr=1e-4)
    assert set(terms) == {"id", "triplet", "i2tce"}
    assert losses2[-1] < losses2[0]
    assert all(p.grad is None for n, p in method.named_parameters()
               if n.startswith(("backbone.text", "prompt_learner")))
    assert backbone.vision.embeddings.sie_embedding.grad is not None
    with torch.no_grad():
        emb = method.eval().embed_image(batch)
    assert emb.shape == (8, backbone.vision_width + backbone.embed_dim)


def test_baseline_on_the_real_tiny_backbone(tiny_clip):
    import copy

    method = Baseline(BaselineConfig(), copy.deepcopy(tiny_clip), DataSpec(NUM_CLASSES))
    (stage,) = method.stages()
    batch = make_batch(size=method.backbone.image_size)
    losses, terms = train_steps(method, stage, batch, steps=6, lr=1e-4)
    assert set(terms) == {"id", "triplet"} and losses[-1] < losses[0]


# ---------------------------------------------------------- t2i_baseline


def fake_t2i(**overrides):
    from reidbench.methods.t2i_baseline import T2IBaseline, T2IBaselineConfig

    torch.manual_seed(0)
    return T2IBaseline(from_dict(T2IBaselineConfig, overrides), FakeCLIP(context_length=32),
                       DataSpec(NUM_CLASSES, task="text"))


def caption_batch(n_per_id=2):
    from fakes import requirement_batch

    return requirement_batch(("caption",), NUM_CLASSES, n_per_id=n_per_id)


def test_t2i_contrastive_forms_on_constructed_cases():
    import torch.nn.functional as F

    from reidbench.methods.t2i_baseline import cross_modal_contrastive

    # One pair per identity: the multi-positive InfoNCE is CLIP's loss.
    img, txt, ids = torch.randn(5, 8), torch.randn(5, 8), torch.arange(5)
    logits = 7.0 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    clip = cross_modal_contrastive(img, txt, ids, 7.0, "infonce")
    assert torch.allclose(clip["i2t"], F.cross_entropy(logits, ids), atol=1e-5)
    assert torch.allclose(clip["t2i"], F.cross_entropy(logits.T, ids), atol=1e-5)
    # Two identities x two pairs, same-identity embeddings equal, identities orthogonal, a large
    # scale: p is uniform over the two positives = q, so SDM's KL is 0 and InfoNCE is H(q) = log 2.
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    sdm = cross_modal_contrastive(e, e, labels, 100.0, "sdm")
    nce = cross_modal_contrastive(e, e, labels, 100.0, "infonce")
    for direction in ("i2t", "t2i"):
        assert sdm[direction].abs() < 1e-4
        assert torch.allclose(nce[direction], torch.log(torch.tensor(2.0)), atol=1e-4)
    # The positives are the identity's other captions too, not only the diagonal.
    swapped = cross_modal_contrastive(e, e[[1, 0, 3, 2]], labels, 100.0, "infonce")
    assert torch.allclose(swapped["i2t"], nce["i2t"], atol=1e-5)
    with pytest.raises(ValueError, match="paired"):
        cross_modal_contrastive(e, e[:3], labels, 1.0)


def test_t2i_paper_preset_is_irra_and_tiny_is_shorter():
    method = fake_t2i()
    (stage,) = method.stages()
    assert (stage.optimizer, stage.lr, stage.epochs, stage.schedule) == ("adam", 1e-5, 60, "cosine")
    assert (stage.warmup_epochs, stage.warmup_factor, stage.weight_decay) == (5, 0.1, 4e-5)
    assert stage.param_groups == (("classifier.", 5.0),)
    assert dict(stage.loss_weights) == {"i2t": 1.0, "t2i": 1.0, "id": 1.0}
    assert method.scale() == pytest.approx(50.0)  # 1 / 0.02
    tiny = fake_t2i(**get_method("t2i_baseline").PRESETS["tiny"])
    assert tiny.stages()[0].epochs < stage.epochs


def test_t2i_fixed_scale_freezes_the_backbone_logit_scale_and_learned_trains_it():
    batch = caption_batch()
    fixed = fake_t2i()
    assert "backbone.logit_scale" not in set_trainable_names(fixed)
    a = fixed.training_step(batch, fixed.stages()[0])["i2t"]
    with torch.no_grad():
        fixed.backbone.logit_scale.add_(1.0)
    assert torch.equal(fixed.training_step(batch, fixed.stages()[0])["i2t"], a)

    learned = fake_t2i(logit_scale="learned")
    assert "backbone.logit_scale" in set_trainable_names(learned)
    assert learned.scale().item() == pytest.approx(learned.backbone.logit_scale.exp().item())
    learned.training_step(batch, learned.stages()[0])["i2t"].backward()
    assert learned.backbone.logit_scale.grad is not None


def set_trainable_names(method):
    from reidbench.harness.optim import set_trainable

    return set(set_trainable(method, method.stages()[0]))


def test_t2i_loss_switches():
    import torch.nn.functional as F

    batch = caption_batch()
    both = fake_t2i()
    both.eval()
    terms = both.training_step(batch, both.stages()[0])
    with torch.no_grad():
        img, txt = both.embed_image(batch), both.embed_text(batch)
    ce = [F.cross_entropy(both.classifier(x), batch["pid"]) for x in (img, txt)]
    assert torch.allclose(terms["id"], (ce[0] + ce[1]) / 2, atol=1e-5)

    image_only = fake_t2i(id_loss="image").eval()
    with torch.no_grad():
        expected = F.cross_entropy(image_only.classifier(image_only.embed_image(batch)), batch["pid"])
    assert torch.allclose(image_only.training_step(batch, image_only.stages()[0])["id"], expected, atol=1e-5)

    no_id = fake_t2i(id_loss="none")
    assert no_id.classifier is None and not any(n.startswith("classifier") for n, _ in no_id.named_parameters())
    (stage,) = no_id.stages()
    assert set(no_id.training_step(batch, stage)) == {"i2t", "t2i"} and "id" not in dict(stage.loss_weights)

    no_nce = fake_t2i(contrastive="none")
    assert set(no_nce.training_step(batch, no_nce.stages()[0])) == {"id"}
    with pytest.raises(ValueError, match="text embeddings would stay untrained"):
        fake_t2i(contrastive="none", id_loss="image")


def test_t2i_a_few_steps_pull_captions_to_their_identity_images():
    method = fake_t2i()
    (stage,) = method.stages()
    batch = caption_batch()
    losses, _ = train_steps(method, stage, batch, steps=15, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
    method.eval()
    with torch.no_grad():
        dist = method.distance(method.embed_text(batch), method.embed_image(batch))
    nearest = batch["pid"][dist.argmin(dim=1)]
    assert (nearest == batch["pid"]).float().mean() >= 0.75


def test_t2i_without_captions_is_a_clear_error():
    method = fake_t2i()
    batch = caption_batch()
    del batch["caption"]
    with pytest.raises(ValueError, match="no 'caption' texts"):
        method.embed_text(batch)


def test_every_image_method_fine_tunes_the_tiny_clip_at_the_one_calibrated_lr():
    """The tiny preset's rows differ by the method, not by how hard each one trains the
    image tower (components.TINY_IMAGE_LR, calibrated against the untrained backbone)."""
    from reidbench.harness.run_config import build_run_config, method_config
    from reidbench.methods.components import TINY_IMAGE_LR

    seen = []
    for name in list_methods():
        cls = get_method(name)
        if "image" not in cls.tasks:
            continue
        cfg = method_config(build_run_config(overrides=[f"method={name}", "preset=tiny"]))
        method = cls(cfg, FakeCLIP(num_cameras=2), DataSpec(NUM_CLASSES, 2, num_clothes=2 * NUM_CLASSES))
        image_stage = method.stages()[-1]  # the CLIP-ReID family's last stage fine-tunes the image tower
        assert image_stage.lr == TINY_IMAGE_LR, (name, image_stage.name, image_stage.lr)
        seen.append(name)
    assert {"baseline", "clip_reid", "profd", "scing", "ccaf", "clip_scgi"} <= set(seen)
