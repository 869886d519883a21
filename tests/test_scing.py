"""SCING: SVIP touches exactly the first M tokens, the meta-net adds one vector to
every token, L_con's values, PDCA's perturbations, what trains in each stage (the
stage-2 text side gets no gradient), stage-2 text features, image-only
inference and its export, every ablation switch, and that a few steps reduce
the loss (fake and real tiny backbones)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fakes import FakeCLIP, chunks, identity_batch
from reidbench.methods import DataSpec
from reidbench.config import from_dict, merge
from reidbench.methods import get_method
from reidbench.methods.scing import (
    MetaNetFusion,
    Perturbation,
    PerturbationConfig,
    Scing,
    ScingConfig,
    SelectiveVisualPromptFusion,
    consistency_loss,
    cross_modal_triplet,
    infonce_losses,
)

NUM_CLASSES = 4
TEXT_SIDE_PREFIXES = ("backbone.text", "prompt_learner", "fusion", "backbone.logit_scale")


def make_batch(size=(32, 16), seed=0, n_per_id=2):
    return identity_batch(NUM_CLASSES, size, seed, n_per_id)


def scing(backbone=None, **overrides) -> Scing:
    torch.manual_seed(0)
    cfg = from_dict(ScingConfig, overrides)
    return Scing(cfg, backbone if backbone is not None else FakeCLIP(num_cameras=2), DataSpec(NUM_CLASSES, 2))


def train_steps(method, stage, batch, steps, lr):
    """The harness's stage semantics: freeze all but ``trainable``; weighted sum of the terms."""
    for name, p in method.named_parameters():
        p.requires_grad_(any(name.startswith(prefix) for prefix in stage.trainable))
    method.zero_grad(set_to_none=True)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.train()
    weights = dict(stage.loss_weights)
    losses = []
    for _ in range(steps):
        terms = method.training_step(batch, stage)
        loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, terms


def no_perturbation(**kw):
    return {"perturb": {"flip_p": 0.0, "crop_p": 0.0, "erase_p": 0.0, "occlude_p": 0.0, "feature_dropout": 0.0, **kw}}


# ------------------------------------------------------------- fusion


def test_svip_gate_and_fusion_touch_exactly_the_first_m_tokens():
    torch.manual_seed(0)
    fusion = SelectiveVisualPromptFusion(image_dim=16, token_dim=8, n_prompt=5, n_fused=3)
    ctx, image = torch.randn(6, 5, 8), torch.randn(6, 16)
    out = fusion(ctx, image)
    assert torch.equal(out[:, 3:], ctx[:, 3:])  # tokens M+1..L static
    c, alpha = fusion.condition(image), fusion.selection(image)
    assert c.shape == (6, 1, 8) and alpha.shape == (6, 1, 8)  # Eqs. 8-9: c in R^d, alpha in [0,1]^d
    assert bool(((alpha > 0) & (alpha < 1)).all())
    assert torch.allclose(out[:, :3], ctx[:, :3] + c * alpha)  # Eq. 10
    assert not torch.allclose(out[:, :3], ctx[:, :3])
    # gradients of the fused output reach only the first M tokens
    ctx.requires_grad_(True)
    fusion(ctx, image)[:, :3].sum().backward()
    assert torch.equal(ctx.grad[:, 3:], torch.zeros_like(ctx.grad[:, 3:]))
    # a closed gate (alpha = 0) leaves every token static: the gate selects
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(-1e4)
    assert torch.allclose(fusion(ctx, image), ctx)
    assert torch.equal(fusion(ctx, None), ctx)


def test_svip_per_token_conditions_and_token_gates():
    torch.manual_seed(0)
    ctx, image = torch.randn(2, 4, 8), torch.randn(2, 16)
    per_token = SelectiveVisualPromptFusion(16, 8, 4, 2, condition="per_token")
    c = per_token.condition(image)
    assert c.shape == (2, 2, 8) and not torch.allclose(c[:, 0], c[:, 1])
    delta = per_token(ctx, image) - ctx
    assert not torch.allclose(delta[:, 0], delta[:, 1]) and torch.equal(delta[:, 2:], torch.zeros(2, 2, 8))
    token_gate = SelectiveVisualPromptFusion(16, 8, 4, 2, gate="token")
    alpha = token_gate.selection(image)
    assert alpha.shape == (2, 2, 1)  # one scalar weight per fused token
    assert token_gate.gate.out_features == 2
    with pytest.raises(ValueError, match="n_fused"):
        SelectiveVisualPromptFusion(16, 8, 4, 5)


def test_svip_and_metanet_sizes_match_table_4_at_vit_b16_widths():
    """SCING 126.95 M - CLIP-ReID 126.55 M = 0.40 M; CoCoOp 126.59 M: +0.04 M."""
    svip = SelectiveVisualPromptFusion(512, 512, 4, 2)
    metanet = MetaNetFusion(512, 512)
    assert abs(sum(p.numel() for p in svip.parameters()) / 1e6 - 0.40) < 0.01
    assert abs(sum(p.numel() for p in metanet.parameters()) / 1e6 - 0.04) < 0.01


def test_metanet_adds_the_same_vector_to_every_token():
    torch.manual_seed(0)
    fusion = MetaNetFusion(16, 8)
    ctx, image = torch.randn(3, 4, 8), torch.randn(3, 16)
    delta = fusion(ctx, image) - ctx
    assert torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-6)
    assert not torch.allclose(delta[0], delta[1])  # image-conditioned
    assert delta.abs().sum() > 0


def test_fusion_switch_decides_whether_prompts_depend_on_the_image():
    labels = torch.tensor([1, 1])
    image = torch.randn(2, 16)
    static = scing(fusion="none", use_pdca=False)
    assert static.fusion is None
    w = static.encode_prompts(labels, image)
    assert torch.allclose(w[0], w[1])  # same identity -> same text, whatever the image
    for fusion in ("metanet", "svip"):
        method = scing(fusion=fusion, metanet_hidden_div=2)  # D // 16 is a single unit at the fake's D = 16
        w = method.encode_prompts(labels, image)
        assert not torch.allclose(w[0], w[1], atol=1e-5), fusion
    assert isinstance(scing(fusion="metanet").fusion, MetaNetFusion)
    with pytest.raises(ValueError, match="use_pdca needs image-conditioned prompts"):
        scing(fusion="none")
    with pytest.raises(ValueError, match="n_fused"):
        scing(n_prompt=2, n_fused=3)


# ------------------------------------------------------------- losses


def test_consistency_loss_values():
    w = torch.randn(5, 7)
    assert consistency_loss(w, w, w).abs() < 1e-6
    assert consistency_loss(w, 3 * w, 0.5 * w).abs() < 1e-6  # scale-invariant (cosine)
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    c = torch.tensor([[1.0, 1.0]])
    expected = 1 - (0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    assert torch.allclose(consistency_loss(a, b, c), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(consistency_loss(a, -a, a), torch.tensor(1 - (-1 - 1 + 1) / 3))
    # a batch mean of the per-sample values
    both = consistency_loss(torch.cat([a, a]), torch.cat([b, a]), torch.cat([c, a]))
    assert torch.allclose(both, torch.tensor(expected / 2), atol=1e-6)


def test_cross_modal_triplet_uses_own_text_and_the_hardest_negative_image():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # anchor 0: d_pos 0, hardest negative image 2 at 1 - cos45; margin 0.2
    d45 = 1 - 1 / math.sqrt(2)
    expected = (max(0, 0.2 - d45) * 3) / 3  # every anchor's nearest negative is at d45 (anchor 2: both)
    assert torch.allclose(cross_modal_triplet(image, text, labels, 0.2), torch.tensor(expected), atol=1e-6)
    # a far own text feature raises the loss by its distance
    far = text.clone()
    far[0] = torch.tensor([-1.0, 0.0])
    loss = cross_modal_triplet(image, far, labels, 0.2)
    assert torch.allclose(loss, torch.tensor((2 - d45 + 0.2 + 2 * max(0, 0.2 - d45)) / 3), atol=1e-6)
    assert cross_modal_triplet(image, text, torch.zeros(3, dtype=torch.long)).item() == 0.0  # no negatives


def test_infonce_is_eq1_with_diagonal_positives():
    x, w = torch.randn(4, 6), torch.randn(4, 6)
    terms = infonce_losses(x, w, torch.tensor(10.0))
    logits = 10 * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    assert torch.allclose(terms["i2t"], -logits.log_softmax(1).diagonal().mean(), atol=1e-5)
    assert torch.allclose(terms["t2i"], -logits.log_softmax(0).diagonal().mean(), atol=1e-5)


# -------------------------------------------------------- perturbation


def test_perturbation_ops_are_drawn_per_sample():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 32, 16)
    flip = Perturbation(PerturbationConfig(flip_p=1.0, crop_p=0, erase_p=0, occlude_p=0), (32, 16))
    assert torch.equal(flip(images), images.flip(-1))
    none = Perturbation(PerturbationConfig(flip_p=0, crop_p=0, erase_p=0, occlude_p=0), (32, 16))
    assert torch.equal(none(images), images)
    occ = Perturbation(PerturbationConfig(flip_p=0, crop_p=0, erase_p=0, occlude_p=1.0, occlude_area=(0.5, 0.5)),
                       (32, 16))
    out = occ(images)
    changed = (out != images).any(1)  # [B,H,W]
    assert bool(changed.any(-1).any(-1).all())  # every sample occluded
    for i in range(6):
        frac = changed[i].float().mean().item()
        assert 0.3 < frac <= 0.5  # a band of half the height or width (minus pixels equal by chance)
        # the band shows another sample's pixels at the same place
        donors = [j for j in range(6) if j != i and torch.equal(out[i][:, changed[i]], images[j][:, changed[i]])]
        assert donors
    erase = Perturbation(PerturbationConfig(flip_p=0, crop_p=0, erase_p=1.0, occlude_p=0), (32, 16))
    erased = (erase(images) != images).any(1)
    assert len({tuple(e.nonzero()[0].tolist()) for e in erased}) > 1  # different rectangles per sample
    crop = Perturbation(PerturbationConfig(flip_p=0, crop_p=1.0, erase_p=0, occlude_p=0), (32, 16))
    assert crop(images).shape == images.shape and not torch.equal(crop(images), images)


# ------------------------------------------------------------- stage 1


def test_stages_follow_the_paper_recipe_and_presets():
    method = scing()
    s1, s2 = method.stages()
    for s in (s1, s2):
        assert (s.optimizer, s.lr, s.weight_decay, s.epochs, s.milestones, s.gamma, s.schedule) == \
            ("adam", 5e-5, 5e-4, 120, (30, 50), 0.1, "steps")
    assert s1.name == "prompt" and s2.name == "image"
    assert s1.trainable == ("prompt_learner.", "fusion.")
    assert dict(s1.loss_weights) == {"con": 1.0}
    assert dict(scing(lambda_con=0.3).stages()[0].loss_weights) == {"con": 0.3}
    assert dict(scing(gamma=0.5).stages()[1].loss_weights) == {"ce": 1.0, "trp": 0.5}
    trained2 = {n for n, _ in method.named_parameters() if n.startswith(s2.trainable)}
    assert any(n.startswith("backbone.vision") for n in trained2) and "backbone.camera_embedding" in trained2
    assert not any(n.startswith(TEXT_SIDE_PREFIXES) for n in trained2)
    joint = scing(stage1_train_encoders=True).stages()[0]
    assert "backbone." in joint.trainable
    assert get_method("scing") is Scing
    assert Scing.PRESETS["paper"] == {}
    tiny = from_dict(ScingConfig, merge(Scing.PRESETS["tiny"], {}))
    assert tiny.prompt.epochs < 120 and tiny.image.epochs < 120


def test_stage1_trains_prompts_and_fusion_only_and_reduces_the_loss():
    method = scing()
    s1 = method.stages()[0]
    batch = make_batch()
    method.begin_stage(s1, lambda: chunks(batch))
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not n.startswith(s1.trainable)}
    torch.manual_seed(1)
    losses, terms = train_steps(method, s1, batch, steps=20, lr=1e-2)
    assert set(terms) == {"i2t", "t2i", "con"}
    assert losses[-1] < losses[0] - 0.05
    for n, p in method.named_parameters():
        if n.startswith(s1.trainable):
            assert p.grad is not None, n
        else:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    assert method.fusion.gate.weight.grad.abs().sum() > 0


def test_use_pdca_switch_and_what_the_consistency_term_sees():
    batch = make_batch()
    off = scing(use_pdca=False)
    off.begin_stage(off.stages()[0], lambda: chunks(batch))
    assert set(off.training_step(batch, off.stages()[0])) == {"i2t", "t2i"}

    on = scing()
    on.begin_stage(on.stages()[0], lambda: chunks(batch))
    torch.manual_seed(0)
    assert on.training_step(batch, on.stages()[0])["con"] > 1e-4
    # without any perturbation the views equal the cached original view: L_con = 0
    clean = scing(**no_perturbation())
    clean.begin_stage(clean.stages()[0], lambda: chunks(batch))
    assert clean.training_step(batch, clean.stages()[0])["con"].abs() < 1e-5
    # feature-level dropout alone perturbs
    drop = scing(**no_perturbation(feature_dropout=0.5))
    drop.begin_stage(drop.stages()[0], lambda: chunks(batch))
    assert drop.training_step(batch, drop.stages()[0])["con"] > 1e-4


def test_stage1_original_view_is_cached_unless_the_encoders_train():
    batch = make_batch()
    method = scing(use_pdca=False)
    s1 = method.stages()[0]
    method.begin_stage(s1, lambda: chunks(batch))
    a = method.training_step(batch, s1)
    b = method.training_step(dict(batch, image=torch.randn_like(batch["image"])), s1)
    assert torch.equal(a["i2t"], b["i2t"])  # the cache, not the batch pixels
    with pytest.raises(RuntimeError, match="begin_stage"):
        scing(use_pdca=False).training_step(batch, s1)

    joint = scing(stage1_train_encoders=True)
    j1 = joint.stages()[0]
    joint.begin_stage(j1, lambda: chunks(batch))
    assert joint._image_bank is None
    torch.manual_seed(0)
    losses, _ = train_steps(joint, j1, batch, steps=8, lr=1e-3)
    assert joint.backbone.vision["patch"].weight.grad is not None  # Sec. 3.5.1: everything trains
    assert joint.backbone.text["layer"].linear1.weight.grad is not None
    assert losses[-1] < losses[0]


def test_clip_loss_switch():
    batch = make_batch()
    sup, nce = scing(use_pdca=False), scing(use_pdca=False, clip_loss="infonce")
    for m in (sup, nce):
        m.begin_stage(m.stages()[0], lambda: chunks(batch))
    a, b = sup.training_step(batch, sup.stages()[0]), nce.training_step(batch, nce.stages()[0])
    assert not torch.allclose(a["i2t"], b["i2t"])
    image = nce._image_bank.lookup(batch["index"])
    text = nce.conditioned_text(batch["pid"], image)
    ref = infonce_losses(image, text, nce.backbone.logit_scale.exp())
    assert torch.allclose(b["i2t"], ref["i2t"]) and torch.allclose(b["t2i"], ref["t2i"])


# ------------------------------------------------------------- stage 2


def test_stage2_text_side_receives_no_gradient_and_the_image_side_learns():
    method = scing()
    s1, s2 = method.stages()
    batch = make_batch()
    method.begin_stage(s1, lambda: chunks(batch))
    train_steps(method, s1, batch, steps=3, lr=1e-2)
    method.begin_stage(s2, lambda: chunks(batch))
    bank = method.class_text.clone()
    # even with every parameter left trainable, the loss has no path into the text side
    for p in method.parameters():
        p.requires_grad_(True)
    method.zero_grad(set_to_none=True)
    terms = method.training_step(batch, s2)
    assert set(terms) == {"ce", "trp"}
    sum(terms.values()).backward()
    for n, p in method.named_parameters():
        if n.startswith(TEXT_SIDE_PREFIXES):
            assert p.grad is None, n
    assert method.backbone.vision["patch"].weight.grad.abs().sum() > 0

    text_side = {n: p.detach().clone() for n, p in method.named_parameters() if n.startswith(TEXT_SIDE_PREFIXES)}
    losses, _ = train_steps(method, s2, batch, steps=12, lr=1e-3)
    assert losses[-1] < losses[0]
    for n, p in method.named_parameters():
        if n in text_side:
            assert torch.equal(p, text_side[n]), n
    assert torch.equal(method.class_text, bank)  # w_k fixed through stage 2
    # ... and across a resume: the checkpoint carries them, begin_stage keeps them
    resumed = scing()
    resumed.load_state_dict(method.state_dict())
    resumed.begin_stage(s2, lambda: chunks(batch))
    assert torch.equal(resumed.class_text, bank)


def test_stage2_class_text_features_follow_the_switch():
    batch = make_batch(n_per_id=3)
    banks = {}
    for mode in ("mean_condition", "mean_text", "static"):
        method = scing(stage2_text=mode)
        method.begin_stage(method.stages()[1], lambda: chunks(batch))
        banks[mode] = method.class_text
        assert banks[mode].shape == (NUM_CLASSES, method.backbone.embed_dim)
    method = scing()
    with torch.no_grad():
        method.eval()
        feats = method.backbone.encode_image(batch["image"]).proj  # no camera, as stage 1
        mean = torch.stack([feats[batch["pid"] == k].mean(0) for k in range(NUM_CLASSES)])
        ids = torch.arange(NUM_CLASSES)
        expected = method.encode_prompts(ids, mean)
        per_image = method.encode_prompts(batch["pid"], feats)
        mean_text = torch.stack([per_image[batch["pid"] == k].mean(0) for k in range(NUM_CLASSES)])
        static = method.encode_prompts(ids)
    assert torch.allclose(banks["mean_condition"], expected, atol=1e-5)
    assert torch.allclose(banks["mean_text"], mean_text, atol=1e-5)
    assert torch.allclose(banks["static"], static, atol=1e-5)
    assert not torch.allclose(banks["mean_condition"], banks["static"], atol=1e-4)
    missing = scing()
    with pytest.raises(ValueError, match="no training image"):
        missing.begin_stage(missing.stages()[1], lambda: chunks({k: v[:4] for k, v in batch.items()}))


def test_stage2_ce_uses_the_cached_text_and_the_logit_switch():
    batch = make_batch()
    method = scing()
    s2 = method.stages()[1]
    method.begin_stage(s2, lambda: chunks(batch))
    method.eval()
    with torch.no_grad():
        image = method.backbone.encode_image(batch["image"], batch["camid"]).proj
        text = method.class_text
        logits = method.backbone.logit_scale.exp() * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
        terms = method.training_step(batch, s2)
    assert torch.allclose(terms["ce"], F.cross_entropy(logits, batch["pid"]), atol=1e-5)
    assert torch.allclose(terms["trp"], cross_modal_triplet(image, text[batch["pid"]], batch["pid"], 0.2), atol=1e-6)
    raw = scing(i2t_logits="raw")
    raw.begin_stage(s2, lambda: chunks(batch))
    assert torch.allclose(raw.i2t_logits(image, text), image @ text.T)
    with pytest.raises(RuntimeError, match="begin_stage"):
        scing().training_step(batch, s2)


def test_stage2_reid_losses_switch_adds_clip_reid_terms():
    method = scing(stage2_reid_losses=True, head_lr_mult=10.0)
    s2 = method.stages()[1]
    assert "head." in s2.trainable and s2.param_groups == (("head.", 10.0),)
    assert dict(s2.loss_weights) == {"ce": 1.0, "trp": 1.0, "id": 0.25, "triplet": 1.0}
    batch = make_batch()
    method.begin_stage(s2, lambda: chunks(batch))
    losses, terms = train_steps(method, s2, batch, steps=10, lr=1e-3)
    assert set(terms) == {"ce", "trp", "id", "triplet"} and losses[-1] < losses[0]
    assert scing().head is None


# ----------------------------------------------------------- inference


def test_evaluation_uses_the_image_encoder_alone_and_exports_without_text_side():
    batch = make_batch()
    method = scing().eval()
    with torch.no_grad():
        emb = method.embed_image(batch)
        expected = method.backbone.encode_image(batch["image"], batch["camid"]).proj
    assert torch.allclose(emb, expected)
    # corrupting every text-side parameter changes nothing at inference
    with torch.no_grad():
        for n, p in method.named_parameters():
            if n.startswith(TEXT_SIDE_PREFIXES):
                p.fill_(float("nan"))
        assert torch.equal(method.embed_image(batch), emb)

    exported = method.inference_model().eval()
    names = [n for n, _ in exported.named_parameters()]
    assert names and not any(n.startswith(("backbone.text", "backbone.logit_scale")) or "prompt" in n
                             or "fusion" in n or "token_embedding" in n for n in names)
    assert not hasattr(exported.backbone, "tokenizer")
    with torch.no_grad():
        assert torch.equal(exported(batch), emb)
    # the method itself keeps its text side (training and checkpoints need it)
    assert hasattr(method.backbone, "text") and method.backbone.tokenizer is not None
    n_image = sum(p.numel() for n, p in method.backbone.named_parameters() if not n.startswith(("text", "logit")))
    assert sum(p.numel() for p in exported.parameters()) == n_image


def test_embed_feature_and_sie_switches():
    batch = make_batch()
    both = scing(embed_feature="cls_proj").eval()
    no_sie = scing(sie=False).eval()
    with torch.no_grad():
        feats = both.backbone.encode_image(batch["image"], batch["camid"])
        assert torch.allclose(both.embed_image(batch), torch.cat([feats.cls, feats.proj], 1))
        assert torch.equal(no_sie.embed_image(batch), no_sie.embed_image(dict(batch, camid=1 - batch["camid"])))
        d = both.distance(both.embed_image(batch), both.embed_image(batch))
    assert torch.allclose(d.diagonal(), torch.zeros(len(d)), atol=1e-5)


# ---------------------------------------------------- real tiny backbone


@pytest.fixture(scope="module")
def tiny_clip():
    from reidbench.backbones import build_clip

    torch.manual_seed(0)
    return build_clip("tiny", pretrained=None, num_cameras=2)


def test_two_stages_on_the_real_tiny_backbone(tiny_clip):
    method = scing(copy.deepcopy(tiny_clip))
    s1, s2 = method.stages()
    batch = make_batch(size=method.backbone.image_size)
    method.begin_stage(s1, lambda: chunks(batch, 4))
    torch.manual_seed(0)
    losses1, terms1 = train_steps(method, s1, batch, steps=4, lr=1e-3)
    assert set(terms1) == {"i2t", "t2i", "con"} and losses1[-1] < losses1[0]
    assert all(p.grad is None for n, p in method.named_parameters() if not n.startswith(s1.trainable))
    method.begin_stage(s2, lambda: chunks(batch, 4))
    losses2, terms2 = train_steps(method, s2, batch, steps=4, lr=1e-4)
    assert set(terms2) == {"ce", "trp"} and losses2[-1] < losses2[0]
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith(TEXT_SIDE_PREFIXES))
    exported = method.inference_model().eval()
    assert not any(n.startswith(("backbone.text", "backbone.logit_scale")) for n, _ in exported.named_parameters())
    with torch.no_grad():
        assert torch.allclose(exported(batch), method.eval().embed_image(batch))
