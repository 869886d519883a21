"""ProFD: every equation on constructed inputs, every ablation switch, training,
and the Eq. 14 distance through the streaming evaluator (fake and real tiny CLIP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fakes import FakeCLIP, chunks, identity_batch
from reidbench.methods import DataSpec
from reidbench.config import ConfigError, from_dict
from reidbench.harness.evaluate import rank_metrics, rank_metrics_from_features
from reidbench.methods import get_method
from reidbench.methods.profd import (
    NUM_PARTS,
    MemoryBank,
    ProFD,
    ProFDConfig,
    alignment_loss,
    attention_loss,
    attention_target,
    diversity_loss,
    patch_labels,
    visibility_loss,
    visibility_weighted_distance,
    weighted_average_pool,
)

NUM_CLASSES = 4
SIZE = (32, 16)  # FakeCLIP: patch 8 -> 4x2 grid


def part_mask(n: int, occlude_from: torch.Tensor | None = None) -> torch.Tensor:
    """Five horizontal bands (labels 1..5) on a background frame; rows at or below
    ``occlude_from[i]`` are background (an occluder) in image ``i``."""
    mask = torch.zeros(n, *SIZE, dtype=torch.long)
    for k in range(NUM_PARTS):
        mask[:, 2 + 6 * k: 2 + 6 * (k + 1), 2:14] = k + 1
    if occlude_from is not None:
        rows = torch.arange(SIZE[0])[None, :, None]
        mask = torch.where(rows >= occlude_from[:, None, None], torch.zeros_like(mask), mask)
    return mask


def make_batch(seed: int = 0, n_per_id: int = 2) -> dict:
    batch = identity_batch(NUM_CLASSES, SIZE, seed, n_per_id)
    n = batch["pid"].numel()
    g = torch.Generator().manual_seed(seed + 1)
    mask = part_mask(n, occlude_from=torch.randint(14, 33, (n,), generator=g))
    visible = torch.stack([(mask == k + 1).flatten(1).any(1) for k in range(NUM_PARTS)], dim=1)
    return {**batch, "mask": mask, "visible": visible, "has_mask": torch.ones(n, dtype=torch.bool)}


def fake_profd(**overrides) -> ProFD:
    torch.manual_seed(0)
    cfg = from_dict(ProFDConfig, {"n_ctx": 2, **overrides})
    return ProFD(cfg, FakeCLIP(num_cameras=2), DataSpec(NUM_CLASSES, 2))


def ready(method: ProFD, batch: dict):
    stage = method.stages()[0]
    method.begin_stage(stage, lambda: chunks(batch))
    return stage


def weighted_loss(terms: dict, stage) -> torch.Tensor:
    weights = dict(stage.loss_weights)
    return sum(weights.get(k, 1.0) * v for k, v in terms.items())


def grads_after(method: ProFD, batch: dict, only: str | None = None) -> dict[str, torch.Tensor | None]:
    """Parameter gradients of the summed loss (or of the one term ``only``)."""
    stage = ready(method, batch)
    method.train()
    method.zero_grad(set_to_none=True)
    terms = method.training_step(batch, stage)
    (terms[only] if only else weighted_loss(terms, stage)).backward()
    return {n: p.grad for n, p in method.named_parameters()}


def has_grad(grads: dict, fragment: str) -> bool:
    hits = [g for n, g in grads.items() if fragment in n]
    assert hits, f"no parameter named *{fragment}*"
    return any(g is not None and bool(g.abs().sum() > 0) for g in hits)


# ------------------------------------------------------------ Eqs. 5-6: masks -> patch labels


def test_patch_labels_average_pool_masks_with_the_patch_stride():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4, :4] = 1  # patch (0,0): all head
    mask[0, :4, 4:6] = 2  # patch (0,1): half label 2, half background
    mask[0, 4:, :4] = torch.tensor([3, 4, 5, 0])  # patch (1,0): one column per label
    labels = patch_labels(mask, (2, 2))
    assert labels.shape == (1, NUM_PARTS + 1, 4)
    assert torch.allclose(labels.sum(1), torch.ones(1, 4))
    assert labels[0, 1, 0] == 1.0
    assert labels[0, 2, 1] == 0.5 and labels[0, 0, 1] == 0.5
    assert torch.allclose(labels[0, [3, 4, 5, 0], 2], torch.full((4,), 0.25))
    assert labels[0, 0, 3] == 1.0  # all background
    with pytest.raises(ValueError, match="does not tile"):
        patch_labels(mask, (3, 2))
    with pytest.raises(ValueError, match="labels must lie in 0..5"):
        patch_labels(mask + 3, (2, 2))


def test_alignment_loss_is_soft_cross_entropy_and_ignore_mode_skips_background():
    labels = patch_labels(part_mask(2), (4, 2))
    target = labels.transpose(1, 2)
    matched = target.clamp_min(1e-12).log()  # scores whose softmax is the soft patch labels: the minimum
    flat = torch.zeros_like(matched)
    entropy = -(target * matched).sum(-1).mean()
    assert torch.allclose(alignment_loss(matched, labels, "learned"), entropy, atol=1e-5)
    assert alignment_loss(flat, labels, "learned") > entropy + 0.5
    expected = -(target * F.log_softmax(flat, -1)).sum(-1).mean()
    assert torch.allclose(alignment_loss(flat, labels, "learned"), expected)
    # "ignore": N-way, background-dominated patches do not count, whatever their scores
    labels = patch_labels(part_mask(2, occlude_from=torch.tensor([16, 16])), (4, 2))  # bottom half occluded
    parts_only = torch.randn(2, 8, NUM_PARTS)
    bg = labels.argmax(1) == 0
    changed = parts_only.clone()
    changed[bg] = 100 * torch.randn(int(bg.sum()), NUM_PARTS)
    assert bool(bg.any())
    assert torch.allclose(alignment_loss(parts_only, labels, "ignore"), alignment_loss(changed, labels, "ignore"))


# ------------------------------------------------------------ Eq. 9: SPA attention target


def test_attention_target_concentrates_on_the_part_and_is_uniform_for_absent_parts():
    labels = patch_labels(part_mask(1, occlude_from=torch.tensor([20])), (4, 2))[:, 1:]
    target = attention_target(labels, 0.1)
    assert torch.allclose(target.sum(-1), torch.ones(1, NUM_PARTS))
    for k in range(NUM_PARTS):
        covered = labels[0, k] > 0
        if covered.any():
            assert target[0, k][covered].sum() > 0.95
            # more coverage, more attention
            order = labels[0, k].argsort()
            assert bool((target[0, k][order].diff() >= -1e-7).all())
        else:  # occluded part: uniform over the image
            assert torch.allclose(target[0, k], torch.full((8,), 1 / 8))
    assert not (labels[0, 4] > 0).any()  # feet are occluded in this mask
    # temperature 1 is the literal softmax of Eq. 9: much flatter
    assert attention_target(labels, 1.0).max() < 0.3


def test_attention_loss_is_minimal_at_the_target():
    labels = patch_labels(part_mask(2, occlude_from=torch.tensor([33, 18])), (4, 2))[:, 1:]
    target = attention_target(labels, 0.1)
    at_target = attention_loss(target.log(), target)
    entropy = -(target * target.log()).sum(-1).mean()
    assert torch.allclose(at_target, entropy, atol=1e-5)
    for seed in range(5):
        other = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
        assert attention_loss(other, target) > at_target


def test_spa_attention_term_is_supervised_by_the_mask_patch_labels():
    method = fake_profd(attention="spa", memory_bank="none")
    batch = make_batch()
    stage = ready(method, batch)
    method.eval()  # no dropout: the same forward twice
    with torch.no_grad():
        terms = method.training_step(batch, stage)
        out = method.forward_features(batch)
    assert len(out.spa_logits) == 2  # one SPA map per decoder layer
    target = attention_target(patch_labels(batch["mask"], (4, 2))[:, 1:], method.config.attn_target_temperature)
    expected = torch.stack([attention_loss(lg, target) for lg in out.spa_logits]).mean()
    assert torch.allclose(terms["attn"], expected, atol=1e-6)


# ------------------------------------------------------------ Eq. 12


def test_diversity_loss_values_on_constructed_parts():
    eye = torch.eye(NUM_PARTS)[None]  # orthogonal parts
    assert diversity_loss(eye).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(2, NUM_PARTS, 3)
    assert diversity_loss(same).item() == pytest.approx(0.5, abs=1e-6)  # the maximum: 1/(N(N-1)) * N(N-1)/2
    assert diversity_loss(torch.randn(4, NUM_PARTS, 8)).item() < 0.5
    three = torch.tensor([[[1.0, 0, 0], [1, 1, 0], [0, 0, -2]]])  # |cos| pairs: 1/sqrt2, 0, 0
    assert diversity_loss(three).item() == pytest.approx((1 / math.sqrt(2)) / 6, abs=1e-6)
    flipped = torch.tensor([[[1.0, 0], [-1.0, 0]]])  # opposite parts are as redundant as identical ones
    assert diversity_loss(flipped).item() == pytest.approx(0.5, abs=1e-6)


# ------------------------------------------------------------ Eq. 13


def test_visibility_focal_loss_is_eq_13():
    from torchvision.ops import sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, NUM_PARTS, generator=g)
    visible = torch.rand(6, NUM_PARTS, generator=g) > 0.4
    v = logits.sigmoid()
    a, gamma = 0.65, 2.0
    eq13 = torch.where(visible, -a * (1 - v) ** gamma * v.log(), -(1 - a) * v ** gamma * (1 - v).log()).mean()
    assert torch.allclose(visibility_loss(logits, visible, a, gamma), eq13, atol=1e-6)
    ref = sigmoid_focal_loss(logits, visible.float(), alpha=a, gamma=gamma, reduction="mean")
    assert torch.allclose(visibility_loss(logits, visible, a, gamma), ref)


def test_method_visibility_term_uses_the_masks_visibility_and_the_configured_focal_parameters():
    method = fake_profd(focal_alpha=0.8, focal_gamma=1.0, memory_bank="none")
    batch = make_batch()
    assert not bool(batch["visible"].all())  # the constructed occluders hide some parts
    stage = ready(method, batch)
    method.eval()
    with torch.no_grad():
        terms = method.training_step(batch, stage)
        out = method.forward_features(batch)
    expected = visibility_loss(out.visibility_logits, batch["visible"], 0.8, 1.0)
    assert torch.allclose(terms["vis"], expected, atol=1e-6)


# ------------------------------------------------------------ Eqs. 15-18


def test_memory_bank_initialisation_is_the_normalised_identity_mean():
    bank = MemoryBank(num_classes=2, dim=2, momentum=0.2)
    feats = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 5.0], [0.0, 1.0]])
    bank.initialise(feats, torch.tensor([0, 0, 1, 1]))
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank.features, torch.tensor([[s, s], [0.0, 1.0]]))
    assert bool(bank.initialised)
    with pytest.raises(ValueError, match="no training image for identities \\[2\\]"):
        MemoryBank(3, 2, 0.2).initialise(feats, torch.tensor([0, 0, 1, 1]))


def test_memory_bank_momentum_update_every_sample_and_hardest():
    start = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])

    bank = MemoryBank(2, 2, momentum=0.2, update="every")
    bank.features.copy_(start)
    bank.update(x, labels)
    row0 = F.normalize(0.2 * start[0] + 0.8 * torch.tensor([0.0, 1.0]), dim=0)  # first sample of identity 0
    row0 = F.normalize(0.2 * row0 + 0.8 * F.normalize(torch.tensor([1.0, 1.0]), dim=0), dim=0)  # then the second
    row1 = F.normalize(0.2 * start[1] + 0.8 * torch.tensor([-1.0, 0.0]), dim=0)
    assert torch.allclose(bank.features, torch.stack([row0, row1]), atol=1e-6)

    hard = MemoryBank(2, 2, momentum=0.2, update="hardest")
    hard.features.copy_(start)
    hard.update(x, labels)
    # identity 0's least similar sample is [0, 3] (cos 0 with [1, 0]); only it moves the row
    assert torch.allclose(hard.features[0], F.normalize(torch.tensor([0.2, 0.8]), dim=0), atol=1e-6)

    frozen = MemoryBank(2, 2, momentum=1.0)
    frozen.features.copy_(start)
    frozen.update(x, labels)
    assert torch.equal(frozen.features, start)


def test_memory_bank_update_equals_the_sequential_per_sample_loop_on_a_pk_batch():
    """The batched update (rounds of distinct identities) is Eq. 15's loop over samples."""
    torch.manual_seed(0)
    start = F.normalize(torch.randn(10, 8), dim=1)
    labels = torch.tensor([3, 7, 3, 1, 7, 3, 9, 1, 3, 7, 0, 0])  # repeats, interleaved, uneven counts
    x = torch.randn(len(labels), 8)
    bank = MemoryBank(10, 8, momentum=0.3)
    bank.features.copy_(start)
    bank.update(x, labels)
    expected = start.clone()
    for feature, y in zip(F.normalize(x, dim=1), labels.tolist()):
        expected[y] = F.normalize(0.3 * expected[y] + 0.7 * feature, dim=0)
    assert torch.allclose(bank.features, expected, atol=1e-6)

    hard = MemoryBank(10, 8, momentum=0.3, update="hardest")
    hard.features.copy_(start)
    hard.update(x, labels)
    expected = start.clone()
    for y in labels.unique().tolist():
        rows = (labels == y).nonzero().flatten()
        pick = rows[(F.normalize(x[rows], dim=1) @ start[y]).argmin()]
        expected[y] = F.normalize(0.3 * start[y] + 0.7 * F.normalize(x[pick], dim=0), dim=0)
    assert torch.allclose(hard.features, expected, atol=1e-6)


def test_pcl_loss_is_cross_entropy_over_cosines_to_the_bank_before_the_update():
    bank = MemoryBank(3, 2, momentum=0.5)
    bank.initialise(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0]]), torch.tensor([0, 1, 2]))
    x = torch.tensor([[2.0, 2.0]], requires_grad=True)
    loss = bank.loss(x, torch.tensor([1]), temperature=0.05)
    s = 1 / math.sqrt(2)
    cos = torch.tensor([s, s, -s])
    assert loss.item() == pytest.approx(-(cos / 0.05).log_softmax(0)[1].item(), abs=1e-5)
    bank.update(x, torch.tensor([1]))  # in-place update after the loss must not break its backward
    loss.backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_begin_stage_initialises_banks_from_bn_features_and_mask_pooled_parts():
    method = fake_profd()
    batch = make_batch()
    ready(method, batch)
    method.eval()
    with torch.no_grad():
        out = method.forward_features(batch)
        g = method.neck_global(out.global_feat)[0]
        pooled = weighted_average_pool(out.patches, patch_labels(batch["mask"], (4, 2))[:, 1:])
        p = method.neck_parts(pooled.flatten(1))[0]
    for bank, feats in ((method.global_bank, g), (method.part_bank, p)):
        means = torch.stack([feats[batch["pid"] == c].mean(0) for c in range(NUM_CLASSES)])
        assert torch.allclose(bank.features, F.normalize(means, dim=1), atol=1e-5)
    assert method.global_bank.momentum == 0.2 and method.part_bank.momentum == 0.2


def test_initialised_banks_survive_a_checkpoint_and_are_not_reinitialised_on_resume():
    method = fake_profd(m_g=0.5, m_p=0.9)
    batch = make_batch()
    stage = ready(method, batch)
    method.train()
    method.training_step(batch, stage)  # moves the banks away from their initial values
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert "global_bank.features" in state and "part_bank.features" in state

    resumed = fake_profd(m_g=0.5, m_p=0.9)
    resumed.load_state_dict(state)

    def must_not_run():
        raise AssertionError("begin_stage re-initialised a bank that the checkpoint carried")

    resumed.begin_stage(stage, must_not_run)
    assert torch.equal(resumed.global_bank.features, state["global_bank.features"])
    assert (resumed.global_bank.momentum, resumed.part_bank.momentum) == (0.5, 0.9)


# ------------------------------------------------------------ Eq. 14


def test_eq14_distance_on_a_hand_computed_case():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    q = {"global": torch.tensor([e1]),
         "parts": torch.tensor([[e1, e1, e1, e1, e2]]),
         "visibility": torch.tensor([[1.0, 0.5, 0.0, 1.0, 1.0]])}
    g = {"global": torch.tensor([e2, e1]),
         "parts": torch.tensor([[e1, [-1.0, 0.0], e2, e2, e1],  # part distances 0, 2, 1, 1, 1
                                [e1, e1, e1, e1, e2]]),  # identical to the query
         "visibility": torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]])}
    d = visibility_weighted_distance(q, g)
    # weights q*g = [1, 0.5, 0, 0, 0.5]; d_g = 1
    assert d[0, 0].item() == pytest.approx((1 * 0 + 0.5 * 2 + 0.5 * 1 + 1) / (1 + 0.5 + 0.5 + 1), abs=1e-6)
    assert d[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    hidden = {**q, "visibility": torch.zeros(1, NUM_PARTS)}  # nothing visible: the global distance alone
    assert torch.allclose(visibility_weighted_distance(hidden, g)[0], torch.tensor([1.0, 0.0]), atol=1e-6)
    with pytest.raises(TypeError, match="'global', 'parts' and 'visibility'"):
        visibility_weighted_distance(torch.zeros(1, 2), g)


def test_distance_works_through_the_streaming_evaluator():
    method = fake_profd()
    method.eval()
    with torch.no_grad():
        feats = [method.embed_image(make_batch(seed=s)) for s in range(3)]
    gallery = {k: torch.cat([f[k] for f in feats[:2]]) for k in feats[0]}
    query = feats[2]
    q_pids, g_pids = np.arange(8) // 2, np.arange(16) % 8 // 2
    q_cams, g_cams = np.zeros(8, dtype=int), np.ones(16, dtype=int)
    streamed = rank_metrics_from_features(query, gallery, q_pids, g_pids, q_cams, g_cams,
                                          metric=method.distance, chunk_size=3)
    full = rank_metrics(method.distance(query, gallery).numpy(), q_pids, g_pids, q_cams, g_cams)
    assert streamed.mAP == pytest.approx(full.mAP) and np.allclose(streamed.cmc, full.cmc)
    assert get_method("profd").distance is ProFD.distance


def test_embed_image_predicts_visibility_and_never_reads_masks():
    method = fake_profd(test_visibility="binary")
    batch = make_batch()
    method.eval()
    with torch.no_grad():
        a = method.embed_image(batch)
        no_masks = {k: v for k, v in batch.items() if k not in ("mask", "visible", "has_mask")}
        b = method.embed_image(no_masks)
        scrambled = {**batch, "mask": torch.randint(0, 6, batch["mask"].shape), "visible": ~batch["visible"]}
        c = method.embed_image(scrambled)
    for out in (b, c):
        assert all(torch.equal(a[k], out[k]) for k in a)
    assert a["parts"].shape == (8, NUM_PARTS, 16) and a["global"].shape == (8, 16)
    assert set(a["visibility"].unique().tolist()) <= {0.0, 1.0}
    scores = fake_profd(visibility_floor=0.4)
    scores.eval()
    with torch.no_grad():
        v = scores.embed_image(batch)["visibility"]
    assert bool(((v == 0) | (v >= 0.4)).all()) and bool((v <= 1).all())


# ------------------------------------------------------------ ablation switches


def test_attention_none_has_no_decoder_and_pools_parts_by_the_predicted_parsing():
    method = fake_profd(attention="none")
    assert method.decoder is None
    assert not any(n.startswith("decoder.") for n, _ in method.named_parameters())
    grads = grads_after(method, make_batch())
    terms = method.training_step(make_batch(), method.stages()[0])
    assert "attn" not in terms
    # the parts come from the parsing scores, so the prompts learn through the ID loss of F_c
    method.zero_grad(set_to_none=True)
    terms["id_parts"].backward()
    assert method.prompt_learner.ctx.grad is not None and bool(method.prompt_learner.ctx.grad.abs().sum() > 0)
    assert has_grad(grads, "background")


@pytest.mark.parametrize("attention, sea, spa", [("sea", True, False), ("spa", False, True), ("both", True, True)])
def test_attention_switch_builds_exactly_the_named_branches(attention, sea, spa):
    method = fake_profd(attention=attention)
    names = [n for n, _ in method.named_parameters()]
    assert any(".sea." in n for n in names) == sea
    assert any(".spa." in n for n in names) == spa
    grads = grads_after(method, make_batch())
    if sea:
        assert has_grad(grads, ".sea.")
    if spa:
        assert has_grad(grads, ".spa.key")
        # L_attn alone reaches SPA's keys: the attention map is supervised
        attn_only = grads_after(fake_profd(attention=attention), make_batch(), only="attn")
        assert has_grad(attn_only, ".spa.key")
    assert has_grad(grads, "reverse_attn") and has_grad(grads, "final_attn") and has_grad(grads, "ffn")
    terms = method.training_step(make_batch(), method.stages()[0])
    assert ("attn" in terms) == spa


def test_use_align_false_removes_the_alignment_term_and_its_background_class():
    on = fake_profd()
    off = fake_profd(use_align=False)
    assert on.alignment.background is not None and off.alignment.background is None
    batch = make_batch()
    assert "align" in on.training_step(batch, ready(on, batch))
    terms = off.training_step(batch, ready(off, batch))
    assert "align" not in terms
    assert off.forward_features(batch).scores is None  # the score map S is not even computed
    # with alignment on, L_align alone trains the prompts and the background class
    align_only = grads_after(fake_profd(), batch, only="align")
    assert has_grad(align_only, "prompt_learner.ctx") and has_grad(align_only, "background")
    assert fake_profd(background="ignore").alignment.background is None


def test_use_div_false_removes_the_diversity_term():
    batch = make_batch()
    on, off = fake_profd(), fake_profd(use_div=False)
    assert "div" in on.training_step(batch, ready(on, batch))
    assert "div" not in off.training_step(batch, ready(off, batch))


@pytest.mark.parametrize("bank, expect", [("none", set()), ("global", {"pcl_global"}), ("part", {"pcl_parts"}),
                                          ("both", {"pcl_global", "pcl_parts"})])
def test_memory_bank_switch(bank, expect):
    method = fake_profd(memory_bank=bank)
    bank_of = {"pcl_global": "global_bank", "pcl_parts": "part_bank"}
    buffers = {n.split(".")[0] for n, _ in method.named_buffers() if "_bank." in n}
    assert buffers == {bank_of[t] for t in expect}
    batch = make_batch()
    stage = method.stages()[0]
    if bank == "none":
        def must_not_run():
            raise AssertionError("no bank to initialise, yet begin_stage read the training split")
        method.begin_stage(stage, must_not_run)
    else:
        method.begin_stage(stage, lambda: chunks(batch))
    terms = method.training_step(batch, stage)
    assert {k for k in terms if k.startswith("pcl")} == expect


def test_momentum_switches_reach_the_banks():
    method = fake_profd(m_g=0.99, m_p=0.1)
    assert method.global_bank.momentum == 0.99 and method.part_bank.momentum == 0.1


# ------------------------------------------------------------ config, stages, errors


def test_paper_preset_and_stage():
    assert ProFD.PRESETS["paper"] == {}
    cfg = ProFDConfig()
    assert (cfg.n_ctx, cfg.decoder_layers, cfg.decoder_heads, cfg.focal_alpha, cfg.focal_gamma) == (16, 2, 8, 0.65, 2.0)
    assert (cfg.m_g, cfg.m_p, cfg.pcl_temperature) == (0.2, 0.2, 0.05)
    method = fake_profd()
    (stage,) = method.stages()
    assert (stage.optimizer, stage.lr, stage.weight_decay, stage.epochs) == ("adam", 5e-5, 5e-4, 120)
    assert (stage.schedule, stage.milestones, stage.gamma) == ("steps", (30, 50), 0.1)
    assert all(w == 1.0 for _, w in stage.loss_weights)
    # the text encoder stays frozen; the prompt prefix, the new modules and the image side train
    assert "prompt_learner." in stage.trainable and "decoder." in stage.trainable
    assert not any(p.startswith("backbone.text") or "token_embedding" in p for p in stage.trainable)


def test_tiny_preset_and_ablation_rows_resolve_through_the_config_layer():
    tiny = from_dict(ProFDConfig, ProFD.PRESETS["tiny"])
    assert tiny.epochs < 30 and tiny.n_ctx == 4
    rows = [{"attention": a} for a in ("none", "sea", "spa", "both")]
    rows += [{"memory_bank": b} for b in ("none", "global", "part", "both")]
    rows += [{"use_align": a, "use_div": d} for a in (False, True) for d in (False, True)]
    rows += [{"m_g": m} for m in (0.1, 0.2, 0.5, 0.9, 0.99)] + [{"m_p": m} for m in (0.1, 0.2, 0.5, 0.9, 0.99)]
    for row in rows:
        cfg = from_dict(ProFDConfig, {**ProFD.PRESETS["tiny"], **row})
        assert all(getattr(cfg, k) == v for k, v in row.items())
    with pytest.raises(ConfigError, match="did you mean 'both'"):
        from_dict(ProFDConfig, {"attention": "bothh"})
    with pytest.raises(ValueError, match="not divisible by decoder_heads=5"):
        fake_profd(decoder_heads=5)


def test_training_without_masks_is_a_clear_error():
    method = fake_profd()
    batch = make_batch()
    stage = ready(method, batch)
    with pytest.raises(ValueError, match="2 of 8 images in this batch have none"):
        method.training_step({**batch, "has_mask": torch.arange(8) >= 2}, stage)
    with pytest.raises(ValueError, match="needs part masks"):
        fake_profd().begin_stage(stage, lambda: iter([{k: v for k, v in batch.items() if k != "mask"}]))


# ------------------------------------------------------------ training


def test_a_few_steps_reduce_the_loss_with_every_term_on():
    method = fake_profd()
    batch = make_batch()
    stage = ready(method, batch)
    prefixes = stage.trainable
    for name, p in method.named_parameters():
        p.requires_grad_(any(name.startswith(pref) for pref in prefixes))
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    method.train()
    losses = []
    for _ in range(15):
        terms = method.training_step(batch, stage)
        assert set(terms) == {"id_global", "id_parts", "triplet_global", "triplet_parts", "div", "pcl_global",
                              "pcl_parts", "align", "attn", "vis"}
        loss = weighted_loss(terms, stage)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    # the text encoder was frozen: no gradient reached it
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith("backbone.text"))


def test_real_tiny_backbone_step_and_embedding():
    from reidbench.backbones import build_clip

    torch.manual_seed(0)
    backbone = build_clip("tiny", pretrained=None)
    assert backbone.patch_grid == (8, 4) and backbone.embed_dim % 8 == 0
    method = ProFD(from_dict(ProFDConfig, ProFD.PRESETS["tiny"]), backbone, DataSpec(2))
    n = 4
    mask = torch.zeros(n, 128, 64, dtype=torch.long)
    for k in range(NUM_PARTS):
        mask[:, 8 + 22 * k: 8 + 22 * (k + 1), 16:48] = k + 1
    batch = {"image": torch.randn(n, 3, 128, 64), "pid": torch.tensor([0, 0, 1, 1]), "camid": torch.zeros(n).long(),
             "index": torch.arange(n), "mask": mask, "visible": torch.ones(n, NUM_PARTS, dtype=torch.bool),
             "has_mask": torch.ones(n, dtype=torch.bool)}
    stage = ready(method, batch)
    method.train()
    terms = method.training_step(batch, stage)
    weighted_loss(terms, stage).backward()
    assert method.prompt_learner.ctx.grad is not None
    method.eval()
    with torch.no_grad():
        out = method.embed_image(batch)
    assert out["parts"].shape == (n, NUM_PARTS, backbone.embed_dim)
    assert method.distance(out, out).shape == (n, n)
