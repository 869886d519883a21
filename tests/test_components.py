"""Shared method components against hand-computed values and reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fakes import FakeCLIP
from reidbench.methods.components import (
    BNNeck,
    CrossEntropyLabelSmooth,
    DualNeckHead,
    FeatureBank,
    PresetConfig,
    PromptLearner,
    ReidObjective,
    TripletLoss,
    cosine_distance,
    euclidean_dist,
    hard_example_mining,
    i2t_t2i_losses,
    image_side_prefixes,
    supcon_loss,
)

# ---------------------------------------------------------------- distances


def test_euclidean_dist_matches_cdist_and_cosine_distance_matches_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, generator=g), torch.randn(4, 7, generator=g)
    assert torch.allclose(euclidean_dist(x, y), torch.cdist(x, y), atol=1e-5)
    cos = torch.tensor([[F.cosine_similarity(a, b, dim=0).item() for b in y] for a in x])
    assert torch.allclose(cosine_distance(x, y), 1 - cos, atol=1e-6)
    assert torch.allclose(cosine_distance(x, x).diagonal(), torch.zeros(5), atol=1e-6)
    assert torch.allclose(cosine_distance(x, -x).diagonal(), torch.full((5,), 2.0), atol=1e-6)


# ------------------------------------------------------------------ triplet

# 1-D features on a line: ids 0 at {0, 1}, ids 1 at {3, 7}.
LINE = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])
# hardest positive per anchor: 1, 1, 4, 4; hardest negative: |0-3|, |1-3|, |3-1|, |7-1|
LINE_AP = torch.tensor([1.0, 1.0, 4.0, 4.0])
LINE_AN = torch.tensor([3.0, 2.0, 2.0, 6.0])


def test_hard_example_mining_finds_the_hardest_pairs():
    dist = euclidean_dist(LINE, LINE)
    ap, an, valid = hard_example_mining(dist, LINE_LABELS)
    assert torch.allclose(ap, LINE_AP, atol=1e-4)
    assert torch.allclose(an, LINE_AN, atol=1e-4)
    assert valid.all()


def test_triplet_margin_and_soft_margin_values():
    expected = torch.clamp(LINE_AP - LINE_AN + 0.3, min=0).mean()  # only anchor 2 is active: 2.3 / 4
    assert math.isclose(expected.item(), 0.575, rel_tol=1e-6)
    assert math.isclose(TripletLoss(0.3)(LINE, LINE_LABELS).item(), 0.575, rel_tol=1e-4)
    soft = torch.log1p(torch.exp(LINE_AP - LINE_AN)).mean()
    assert math.isclose(TripletLoss(None)(LINE, LINE_LABELS).item(), soft.item(), rel_tol=1e-4)


def test_triplet_gradient_reaches_only_the_mined_samples():
    x = LINE.clone().requires_grad_(True)
    TripletLoss(0.3)(x, LINE_LABELS).backward()
    # the one active triplet is anchor 3.0, positive 7.0, negative 1.0; 0.0 plays no part
    assert x.grad[0].abs().item() == 0.0
    assert all(x.grad[i].abs().item() > 0 for i in (1, 2, 3))


def test_triplet_handles_unequal_counts_and_batches_without_negatives():
    x = torch.tensor([[0.0], [1.0], [2.5], [3.0]])
    labels = torch.tensor([0, 0, 0, 1])
    ap, an, valid = hard_example_mining(euclidean_dist(x, x), labels)
    assert torch.allclose(an, torch.tensor([3.0, 2.0, 0.5, 0.5]), atol=1e-4)
    assert torch.allclose(ap[:3], torch.tensor([2.5, 1.5, 2.5]), atol=1e-4)
    assert ap[3].item() < 1e-3  # single image of id 1: its only positive is itself
    same = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(same, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert same.grad is not None


def test_triplet_normalize_feature_makes_loss_scale_invariant():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = TripletLoss(0.3, normalize_feature=True)
    assert math.isclose(loss(x, labels).item(), loss(10 * x, labels).item(), rel_tol=1e-5)
    assert not math.isclose(TripletLoss(0.3)(x, labels).item(), TripletLoss(0.3)(10 * x, labels).item())


# --------------------------------------------------------- label smoothing


def test_label_smoothing_matches_reference_formula():
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    eps, k = 0.1, 5
    q = torch.full((6, k), eps / k)
    q[torch.arange(6), targets] += 1 - eps
    reference = (-q * F.log_softmax(logits, dim=1)).sum(1).mean()  # bag-of-tricks CrossEntropyLabelSmooth
    assert math.isclose(CrossEntropyLabelSmooth(eps)(logits, targets).item(), reference.item(), rel_tol=1e-6)
    assert math.isclose(CrossEntropyLabelSmooth(0.0)(logits, targets).item(),
                        F.cross_entropy(logits, targets).item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(1.0)


# ------------------------------------------------------------------ supcon


def test_supcon_on_a_constructed_case():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ya, yc = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
    # row 0 logits [1,0,1], positives {0,2}: mean log p = 1 - log(2e+1); row 1 logits [0,1,1], positive {1}: same
    expected = math.log(2 * math.e + 1) - 1
    assert math.isclose(supcon_loss(a, c, ya, yc).item(), expected, rel_tol=1e-6)
    # temperature 0.5 doubles the logits
    expected_t = math.log(2 * math.e**2 + 1) - 2
    assert math.isclose(supcon_loss(a, c, ya, yc, temperature=0.5).item(), expected_t, rel_tol=1e-6)


def test_supcon_matches_official_code_and_i2t_t2i_are_its_two_directions():
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(8, 6, generator=g) * 3, torch.randn(8, 6, generator=g) * 3
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def official(anchor, contrast, ya, yc):  # CLIP-ReID loss/supcontrast.py, temperature 1
        mask = (ya[:, None] == yc[None, :]).float()
        logits = anchor @ contrast.T
        logits = logits - logits.max(dim=1, keepdim=True).values
        log_prob = logits - torch.log(torch.exp(logits).sum(1, keepdim=True))
        return -((mask * log_prob).sum(1) / mask.sum(1)).mean()

    losses = i2t_t2i_losses(img, txt, y)
    assert math.isclose(losses["i2t"].item(), official(img, txt, y, y).item(), rel_tol=1e-5)
    assert math.isclose(losses["t2i"].item(), official(txt, img, y, y).item(), rel_tol=1e-5)
    assert not math.isclose(losses["i2t"].item(), losses["t2i"].item())
    cos = i2t_t2i_losses(img, txt, y, normalize=True)
    assert math.isclose(cos["i2t"].item(), official(F.normalize(img, dim=1), F.normalize(txt, dim=1), y, y).item(),
                        rel_tol=1e-5)


def test_supcon_skips_anchors_without_positive_and_refuses_when_none_has_one():
    a, c = torch.eye(2), torch.eye(2)
    only_first = supcon_loss(a, c, torch.tensor([0, 5]), torch.tensor([0, 1]))
    assert math.isclose(only_first.item(), math.log(math.e + 1) - 1, rel_tol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        supcon_loss(a, c, torch.tensor([7, 8]), torch.tensor([0, 1]))


# ------------------------------------------------------------------ BNNeck


def test_bnneck_init_frozen_bias_and_classifier():
    neck = BNNeck(16, 10)
    names = dict(neck.named_parameters())
    assert set(names) == {"bn.weight", "classifier.weight"}  # the bias is not trainable, whatever a trainer does
    assert "bn.bias" in neck.state_dict()
    assert torch.equal(neck.bn.weight.data, torch.ones(16))
    assert neck.classifier.bias is None
    assert 0.0005 < neck.classifier.weight.std().item() < 0.002  # N(0, 0.001)
    opt = torch.optim.Adam(neck.parameters(), lr=0.1)
    x = torch.randn(8, 16) + 3.0
    for _ in range(3):
        feat, logits = neck(x)
        (feat.mean() + logits.pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(neck.bn.bias, torch.zeros(16))
    neck.train()
    feat, logits = neck(x)
    assert torch.allclose(feat.mean(0), torch.zeros(16), atol=1e-5)  # BN with zero bias centres the batch
    assert logits.shape == (8, 10)


def test_dual_neck_head_inference_feature_before_and_after_bn():
    backbone = FakeCLIP()
    head = DualNeckHead(backbone.vision_width, backbone.embed_dim, 5)
    with torch.no_grad():
        for _ in range(20):  # let the BN running statistics move away from (0, 1)
            head(backbone.encode_image(torch.randn(8, 3, 32, 16) + 2.0))
    head.eval()
    feats = backbone.encode_image(torch.randn(3, 3, 32, 16))
    out = head(feats)
    before = DualNeckHead.inference_feature(out, "before")
    after = DualNeckHead.inference_feature(out, "after")
    assert torch.equal(before, torch.cat([feats.cls, feats.proj], 1))
    assert after.shape == before.shape == (3, backbone.vision_width + backbone.embed_dim)
    assert not torch.allclose(before, after)
    assert out.penultimate is None
    with pytest.raises(ValueError, match="neck_feat"):
        DualNeckHead.inference_feature(out, "middle")


def test_reid_objective_sums_over_necks_and_features_including_penultimate():
    backbone = FakeCLIP()
    head = DualNeckHead(backbone.vision_width, backbone.embed_dim, 4)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    feats = backbone.encode_image(torch.randn(8, 3, 32, 16), return_hidden=True)
    out = head(feats)
    assert torch.equal(out.penultimate, feats.hidden_states[-2][:, 0])
    terms = ReidObjective(0.1, 0.3)(out, pids)
    ce = CrossEntropyLabelSmooth(0.1)
    tri = TripletLoss(0.3)
    assert math.isclose(terms["id"].item(), (ce(out.logits[0], pids) + ce(out.logits[1], pids)).item(), rel_tol=1e-5)
    expected_tri = tri(out.cls, pids) + tri(out.proj, pids) + tri(out.penultimate, pids)
    assert math.isclose(terms["triplet"].item(), expected_tri.item(), rel_tol=1e-5)


# ----------------------------------------------------------- prompt learner


def test_prompt_learner_splices_context_between_template_words():
    backbone = FakeCLIP()
    tok = backbone.tokenizer
    pl = PromptLearner(backbone.token_embedding, tok, num_classes=3, n_ctx=4)
    labels = torch.tensor([2, 0, 2])
    embeds, eos = pl(labels)
    # [BOS] a photo of a X X X X person . [EOS]
    words = tok.encode_words("a photo of a")
    after = tok.encode_words("person.")
    length = 1 + len(words) + 4 + len(after) + 1
    assert embeds.shape == (3, length, backbone.text_width)
    assert eos.tolist() == [length - 1] * 3
    ids = [tok.bos_token_id, *words]
    assert torch.equal(embeds[0, : len(ids)], backbone.token_embedding(torch.tensor(ids)))
    assert torch.equal(embeds[0, len(ids): len(ids) + 4], pl.ctx[2])
    assert torch.equal(embeds[1, len(ids): len(ids) + 4], pl.ctx[0])
    assert torch.equal(embeds[0, -1], backbone.token_embedding.weight[tok.eos_token_id])
    assert torch.equal(embeds[0], embeds[2])
    assert 0.01 < pl.ctx.std().item() < 0.03  # N(0, 0.02)
    # the token embedding is the backbone's, not a second copy
    assert list(pl.state_dict()) == ["ctx"]
    assert [n for n, _ in pl.named_parameters()] == ["ctx"]


def test_prompt_learner_gradients_reach_only_the_batch_identities_context():
    backbone = FakeCLIP()
    for p in backbone.parameters():
        p.requires_grad_(False)
    pl = PromptLearner(backbone.token_embedding, backbone.tokenizer, num_classes=4, n_ctx=2)
    embeds, eos = pl(torch.tensor([1, 3]))
    backbone.encode_text_embeddings(embeds, eos).pow(2).sum().backward()
    touched = pl.ctx.grad.abs().sum(dim=(1, 2)) > 0
    assert touched.tolist() == [False, True, False, True]
    assert backbone.token_embedding.weight.grad is None


def test_prompt_learner_truncation_is_exact_under_causal_attention():
    backbone = FakeCLIP()
    short = PromptLearner(backbone.token_embedding, backbone.tokenizer, 2, n_ctx=4)
    padded = PromptLearner(backbone.token_embedding, backbone.tokenizer, 2, n_ctx=4, pad_to_context=True)
    padded.ctx.data.copy_(short.ctx.data)
    e1, i1 = short()
    e2, i2 = padded()
    assert e2.shape[1] == backbone.tokenizer.context_length > e1.shape[1]
    assert torch.allclose(backbone.encode_text_embeddings(e1, i1), backbone.encode_text_embeddings(e2, i2), atol=1e-5)


def test_prompt_learner_shared_context_with_class_names():
    backbone = FakeCLIP()
    tok = backbone.tokenizer
    names = ["head", "upper arms and torso", "feet"]
    pl = PromptLearner(backbone.token_embedding, tok, 3, n_ctx=3, template="{ctx} {name}.", class_names=names,
                       class_specific=False)
    assert pl.ctx.shape == (3, backbone.text_width)
    embeds, eos = pl()
    lengths = [1 + 3 + len(tok.encode_words(n + ".")) + 1 for n in names]
    assert eos.tolist() == [n - 1 for n in lengths]
    assert embeds.shape[1] == max(lengths)
    assert torch.equal(embeds[0, 1:4], embeds[1, 1:4])  # one shared context
    assert torch.equal(embeds[0, eos[0]], backbone.token_embedding.weight[tok.eos_token_id])
    assert torch.equal(embeds[1, 4], backbone.token_embedding.weight[tok.vocab["upper"]])


def test_prompt_learner_rejects_bad_templates():
    backbone = FakeCLIP(context_length=8)
    emb, tok = backbone.token_embedding, backbone.tokenizer
    with pytest.raises(ValueError, match=r"\{ctx\}"):
        PromptLearner(emb, tok, 2, template="a photo of a person.")
    with pytest.raises(ValueError, match="class_names"):
        PromptLearner(emb, tok, 2, template="{ctx} {name}.")
    with pytest.raises(ValueError, match="context length 8"):
        PromptLearner(emb, tok, 2, n_ctx=8)


# ------------------------------------------------------------ misc helpers


def test_feature_bank_lookup_and_errors():
    bank = FeatureBank.from_batches([(torch.tensor([3, 0]), torch.tensor([[3.0], [0.0]]), torch.tensor([1, 0])),
                                     (torch.tensor([1]), torch.tensor([[1.0]]), torch.tensor([0]))], what="img")
    assert len(bank) == 4
    assert bank.lookup(torch.tensor([1, 3]), torch.tensor([0, 1])).flatten().tolist() == [1.0, 3.0]
    with pytest.raises(KeyError, match=r"\[2\]"):
        bank.lookup(torch.tensor([2]))
    with pytest.raises(KeyError, match=r"\[9\]"):
        bank.lookup(torch.tensor([9]))
    with pytest.raises(ValueError, match="mismatch"):
        bank.lookup(torch.tensor([3]), torch.tensor([0]))


def test_image_side_prefixes_exclude_the_text_tower():
    backbone = FakeCLIP(num_cameras=3)
    prefixes = image_side_prefixes(backbone)
    assert set(prefixes) == {"backbone.vision.", "backbone.camera_embedding", "backbone.visual_projection."}


def test_preset_lookup_errors_name_known_presets():
    class Cfg(PresetConfig):
        PRESETS = {"tiny": {"a": {"b": 1}}}

    assert Cfg.preset("paper") == {}
    got = Cfg.preset("tiny")
    got["a"]["b"] = 2
    assert Cfg.PRESETS["tiny"]["a"]["b"] == 1  # callers get a copy
    with pytest.raises(KeyError, match="paper, tiny"):
        Cfg.preset("huge")


# ---------------------------------------------------------------- package layout


def test_every_public_name_of_a_concept_module_is_importable_from_the_package():
    import importlib
    import pkgutil

    import reidbench.methods.components as components

    modules = [m.name for m in pkgutil.iter_modules(components.__path__)]
    assert {"distances", "losses", "heads", "prompts", "banks", "encoding", "stages"} <= set(modules)
    for name in modules:
        module = importlib.import_module(f"{components.__name__}.{name}")
        for public in module.__all__:
            assert getattr(components, public) is getattr(module, public), f"{name}.{public} not re-exported"
            assert public in components.__all__
