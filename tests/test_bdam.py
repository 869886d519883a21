"""BDAM (reidbench/methods/bdam.py): its equations on small tensors against hand
computations, which parameters each loss moves, what training logs, what evaluation
reads, a short training run on synthetic pedes, and the clothes-changing probe."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from fakes import FakeCLIP, requirement_batch
from reidbench.config import from_dict
from reidbench.harness.optim import set_trainable
from reidbench.methods import LOGGED, DataSpec, get_method
from reidbench.methods.bdam import BDAM, BDAMConfig, MambaFusion, alignment_loss, squared_triplet

NUM_CLASSES = 4


def build(**params):
    cls = get_method("bdam")
    torch.manual_seed(0)
    config = from_dict(BDAMConfig, {**BDAMConfig.preset("tiny"), "bdam_depth": 1, "fusion_dim": 16, **params})
    return cls(config, FakeCLIP(num_cameras=2, context_length=32), DataSpec(NUM_CLASSES, 2, 6, "text"))


def batch_for(method, seed=0):
    return requirement_batch(type(method).requires, NUM_CLASSES, tuple(method.backbone.image_size), seed=seed)


# ------------------------------------------------------------------ equations


def test_alignment_loss_is_eq1_by_hand():
    clothes = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # normalised: e1, e2
    text = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # normalised: (1,1)/√2, e2
    tau = 0.5
    s = [[1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1.0]]
    by_hand = -0.5 * sum(math.log(math.exp(s[i][i] / tau) / sum(math.exp(v / tau) for v in s[i])) for i in range(2))
    assert alignment_loss(clothes, text, tau).item() == pytest.approx(by_hand, rel=1e-6)


def test_triplet_is_eq4_with_squared_distances_and_hardest_pairs():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    m = 0.5
    # anchor 0: hardest positive d^2=1, nearest negative d^2=4 -> max(1-4+m,0)=0
    # anchor 1: positive 1, negatives 1+9=10, 1+4=5 -> 0;  anchor 2: positive 1, negatives 9, 10 -> 0
    # anchor 3: positive 1, negatives 4, 5 -> 0. Move point 3 next to anchor 1:
    f[3] = torch.tensor([1.0, 0.5])
    d = torch.cdist(f, f).pow(2)
    by_hand = [max(d[0, 1] - min(d[0, 2], d[0, 3]) + m, 0), max(d[1, 0] - min(d[1, 2], d[1, 3]) + m, 0),
               max(d[2, 3] - min(d[2, 0], d[2, 1]) + m, 0), max(d[3, 2] - min(d[3, 0], d[3, 1]) + m, 0)]
    assert squared_triplet(f, labels, m).item() == pytest.approx(float(sum(by_hand)) / 4, rel=1e-6)
    assert float(sum(by_hand)) > 0  # the case is not trivially zero


def test_bdam_gate_pooling_and_the_switches():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 8)
    module = BDAM(8, 8, depth=1, heads=2, cross_attention=True, gate=True, dropout=0.0).eval()
    out = module(tokens)
    assert torch.allclose(out["f_hat_id"], out["id_tokens"].mean(1), atol=1e-6)  # GAP
    g = torch.sigmoid(module.gate(torch.cat([out["f_hat_id"], out["f_hat_clo"]], -1)))
    assert torch.allclose(out["g"], g)
    assert torch.allclose(out["f_id"], g * out["f_hat_id"]) and torch.allclose(out["f_clo"], (1 - g) * out["f_hat_clo"])
    no_gate = BDAM(8, 8, depth=1, heads=2, cross_attention=False, gate=False, dropout=0.0).eval()
    plain = no_gate(tokens)
    assert no_gate.gate is None and no_gate.id_from_clo is None
    assert torch.equal(plain["f_id"], plain["f_hat_id"]) and torch.equal(plain["f_clo"], plain["f_hat_clo"])
    # without cross-attention the identity branch never sees the clothing half of the projection
    x = tokens.clone().requires_grad_()
    no_gate(x)["f_id"].sum().backward()
    assert no_gate.proj.weight.grad[8:].abs().sum() == 0 and no_gate.proj.weight.grad[:8].abs().sum() > 0


class Recorder(torch.nn.Module):
    """Stands in for the Mamba stack: records what it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


def test_fusion_runs_mamba_over_image_then_text_tokens_with_weights_summing_to_one():
    cfg = BDAMConfig(dropout=0.0, fusion_dim=8)
    torch.manual_seed(0)
    fusion = MambaFusion(6, 4, 8, 5, cfg).eval()
    fusion.mamba = Recorder()
    image, text = torch.randn(2, 7, 6), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    final, weights = fusion(image, text, mask)
    assert final.shape == (2, 5) and torch.allclose(weights.sum(1), torch.ones(2))
    seq = fusion.mamba.seen[0]
    assert seq.shape == (2, 7 + 3, 8)  # real token sequences: image tokens, then the description's tokens
    assert torch.allclose(seq[:, :7], weights[:, 0, None, None] * fusion.align_img(image))
    assert seq[1, -1].abs().sum() == 0  # padding is zeroed
    changed = text.clone()
    changed[1, 2] = 100.0  # a padded token's value must not matter
    assert torch.allclose(fusion(image, changed, mask)[0], final, atol=1e-6)
    fixed = MambaFusion(6, 4, 8, 5, BDAMConfig(dropout=0.0, fusion_dim=8, fusion_gate=False)).eval()
    assert torch.equal(fixed(image, text, mask)[1], torch.full((2, 2), 0.5))
    literal = MambaFusion(6, 4, 8, 5, BDAMConfig(dropout=0.0, fusion_dim=8, fusion_sequence="global")).eval()
    literal.mamba = Recorder()
    literal(torch.randn(2, 6), torch.randn(2, 4))
    assert literal.mamba.seen[0].shape == (2, 1, 8)  # the printed formula: one position


# ------------------------------------------------------------------ training step


def reached(method, term):
    """Names of the parameters ``term`` alone gives a nonzero gradient."""
    method.zero_grad(set_to_none=True)
    term.backward(retain_graph=True)
    return {n for n, p in method.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def test_which_parameters_each_loss_moves():
    method = build(cross_attention=False, gate=False, dropout=0.0, triplet_margin=1e4)  # every triplet active
    stage = method.stages()[0]
    set_trainable(method, stage)
    method.train()
    terms = method.training_step(batch_for(method), stage)
    assert set(terms) == {"info", "triplet", "aln", "decouple", "gradnorm", LOGGED}

    def under(names, prefix):
        return {n for n in names if n.startswith(prefix)}

    aln = reached(method, terms["aln"])
    assert under(aln, "bdam.clo_layers.") and under(aln, "clo_to_text.") and under(aln, "backbone.text")
    assert not under(aln, "bdam.id_layers.") and not under(aln, "fusion.") and not under(aln, "gradnorm.")
    triplet = reached(method, terms["triplet"])
    assert under(triplet, "bdam.id_layers.") and under(triplet, "backbone.vision")
    assert not under(triplet, "bdam.clo_layers.") and not under(triplet, "backbone.text") and not under(triplet, "fusion.")
    info = reached(method, terms["info"])
    assert under(info, "fusion.mamba.") and under(info, "fusion.align_txt.") and under(info, "backbone.text")
    assert not under(info, "bdam.clo_layers.") and not under(info, "clo_to_text.")
    decouple = reached(method, terms["decouple"])
    assert under(decouple, "bdam.id_layers.") and under(decouple, "bdam.clo_layers.")
    assert not under(decouple, "backbone.text") and not under(decouple, "fusion.")
    for name in ("info", "triplet", "aln", "decouple"):  # the main loss never trains the task weights
        assert not under(reached(method, terms[name]), "gradnorm.")
    balance = reached(method, terms["gradnorm"])
    assert balance == under(balance, "gradnorm.") and balance  # the balancing term trains only the weights


def test_logged_weights_raw_losses_and_gate_means():
    method = build(dropout=0.0)
    stage = method.stages()[0]
    set_trainable(method, stage)
    method.train()
    terms = method.training_step(batch_for(method), stage)
    logged = terms[LOGGED]
    for k in ("info", "triplet", "aln", "decouple"):
        assert math.isfinite(float(logged[f"w_{k}"])) and float(logged[f"w_{k}"]) > 0
        assert float(logged[f"raw_{k}"]) == pytest.approx(float(terms[k].detach()) / float(logged[f"w_{k}"]), rel=1e-5)
    assert float(logged["gate_id"]) + float(logged["gate_clo"]) == pytest.approx(1.0)
    assert float(logged["fusion_w_img"]) + float(logged["fusion_w_txt"]) == pytest.approx(1.0)
    assert all(not v.requires_grad for v in logged.values())


def test_rows_without_a_module_or_a_loss_train_only_what_they_use():
    baseline = build(bdam=False, fusion=False)
    assert baseline.task_names == ("info", "triplet") and baseline.clo_to_text is None
    assert not any(n.startswith("bdam.clo") for n, _ in baseline.named_parameters())
    no_info = build(info=False)
    trainable = no_info.stages()[0].trainable
    assert "fusion." not in trainable  # only L_info trains the fused embedding
    plain = build(gradnorm=False)
    terms = plain.training_step(batch_for(plain), plain.stages()[0])
    assert "gradnorm" not in terms and "w_info" not in terms[LOGGED]
    with pytest.raises(ValueError, match="nothing trains"):
        BDAMConfig(info=False, triplet=False, fusion=False)


def test_new_modules_train_at_their_lr_multiplier_and_the_backbone_at_the_base_lr():
    from reidbench.harness.optim import param_groups

    def lrs(method):
        stage = method.stages()[0]
        set_trainable(method, stage)
        by_param = {id(p): g["lr"] for g in param_groups(method, stage) for p in g["params"]}
        return {n: by_param[id(p)] for n, p in method.named_parameters() if id(p) in by_param}

    plain, fast = lrs(build()), lrs(build(new_module_lr_mult=10.0))
    lr = build().config.lr
    for name, value in fast.items():
        top = name.split(".")[0]
        expected = {"bdam": 10 * lr, "fusion": 10 * lr, "clo_to_text": 10 * lr, "gradnorm": plain[name]}.get(top, lr)
        assert value == pytest.approx(expected), name
    assert any(n.startswith("backbone.") for n in fast) and all(v == pytest.approx(lr) for n, v in plain.items()
                                                               if not n.startswith("gradnorm."))
    with pytest.raises(ValueError, match="new_module_lr_mult"):
        BDAMConfig(new_module_lr_mult=0.0)


# ------------------------------------------------------------------ evaluation


def test_evaluation_reads_identity_descriptions_and_never_clothing_ones():
    method = build()
    assert method.eval_text_kinds() == ("id_description",)
    batch = batch_for(method, seed=1)
    gallery = {k: batch[k] for k in ("image", "pid", "camid", "index", "id_description")}
    method.eval()
    with torch.no_grad():
        fused = method.embed_image(gallery)
        other = method.embed_image({**gallery, "id_description": list(reversed(gallery["id_description"]))})
    assert fused.shape == (8, method.backbone.embed_dim)
    assert not torch.allclose(fused, other)  # the description is fused, not ignored
    with pytest.raises(ValueError, match="id_description"):
        method.embed_image({k: v for k, v in gallery.items() if k != "id_description"})
    image_only = build(gallery_texts="none")
    assert image_only.eval_text_kinds() == () and image_only.fusion.align_txt is None
    with torch.no_grad():
        assert image_only.eval().embed_image({k: v for k, v in gallery.items() if k != "id_description"}).shape == (8, 16)


@pytest.fixture(scope="module")
def pedes_root(tmp_path_factory):
    from reidbench.datasets.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, flavor="pedes", ids=30, seed=0, workers=1, image_size=(64, 32), images_per_id=4,
                      difficulty=0.0)["pedes"]


@pytest.mark.slow
def test_a_tiny_run_on_synthetic_pedes_validates_with_text_and_logs_the_balancing(tmp_path, fake_backbone_kind,
                                                                                     pedes_root, monkeypatch):
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.trainer import WorkerEnv, fit
    from reidbench.methods.bdam import BDAMethod

    seen_keys: list[set] = []
    original = BDAMethod.embed_image

    def spy(self, batch):
        seen_keys.append(set(batch))
        return original(self, batch)

    monkeypatch.setattr(BDAMethod, "embed_image", spy)
    cfg = build_run_config(overrides=[
        "method=bdam", "preset=tiny", "data.dataset=cuhk_pedes", f"data.root={pedes_root}", "data.image_size=[32,16]",
        "data.p=4", "data.k=2", "data.num_workers=0", f"backbone.kind={fake_backbone_kind}", "backbone.pretrained=null",
        "params.bdam_depth=1", "params.fusion_dim=16", "optim.epochs_scale=0.17", f"output_dir={tmp_path}"])
    epochs: list[dict] = []
    final = fit(cfg, WorkerEnv(on_epoch=epochs.append))
    assert len(epochs) >= 2
    for metrics in epochs:
        for k in ("info", "triplet", "aln", "decouple"):
            assert {f"train/w_{k}", f"train/raw_{k}", f"train/{k}"} <= set(metrics)
        assert {"train/gate_id", "train/gate_clo", "train/fusion_w_img", "train/fusion_w_txt"} <= set(metrics)
        assert 0.0 <= metrics["val/mAP"] <= 100.0  # validated with caption queries
    assert any(epochs[0][f"train/w_{k}"] != epochs[-1][f"train/w_{k}"] for k in ("info", "triplet", "aln", "decouple"))
    assert 0.0 < final["test/t2i/mAP"] <= 100.0
    eval_keys = [keys for keys in seen_keys if "clothes_id" in keys and "caption" not in keys]
    assert eval_keys and all("id_description" in keys and "clothes_description" not in keys for keys in eval_keys)


# ------------------------------------------------------------------ the clothes-changing probe


def test_the_probe_describes_outfits_the_gallery_never_shows(pedes_root):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from cc_t2i_probe import build_probe

    from reidbench.datasets import build_dataset
    from reidbench.datasets.synthetic_sets import DEFAULT_GENERATION

    dataset = build_dataset("cuhk_pedes", str(pedes_root))
    generation = {**DEFAULT_GENERATION, "ids": 30, "image_size": [64, 32]}
    probe = build_probe(dataset, generation)
    worn = {(s.pid, s.clothes_id) for s in probe["gallery"]}
    assert probe["changed_outfit"] and all((q.pid, q.clothes_id) not in worn for q in probe["changed_outfit"])
    assert all((q.pid, q.clothes_id) in worn for q in probe["same_outfit"])
    captions = {q.texts_of("caption")[0] for q in dataset.splits["test_texts"]}
    assert captions <= {q.texts_of("caption")[0] for q in probe["same_outfit"]}
    for wrong in ({"seed": 1}, {"difficulty": 0.5}):  # a world that did not write the dataset is refused
        with pytest.raises(ValueError, match="not written by this generator"):
            build_probe(dataset, {**generation, **wrong})


# ------------------------------------------------------------------ the α x λ plots


def test_the_alpha_lambda_grid_gets_curves_and_a_heatmap(tmp_path):
    import itertools

    import pandas as pd

    from reidbench.harness import plots

    rows = []
    for alpha, lam, seed in itertools.product((0.5, 1.0, 1.5, 2.0), (0.01, 0.1, 1.0), (0, 1)):
        map_ = 50 + 4 * alpha - 3 * lam + seed  # a known surface
        rows.append({"method": "bdam", "ablation": f"gradnorm_alpha={alpha},gradnorm_lambda={lam}",
                     "dataset": "synthetic_pedes", "seed": str(seed), "setup": "tiny/synthetic",
                     "params.params.gradnorm_alpha": str(alpha), "params.params.gradnorm_lambda": str(lam),
                     "metrics.test/t2i/mAP": map_, "metrics.test/t2i/R1": map_ + 5,
                     "metrics.test/t2i/R5": map_ + 20, "metrics.test/t2i/R10": map_ + 30})
    runs = pd.DataFrame(rows)
    table = plots.grid_table(runs, "params.params.gradnorm_alpha", "params.params.gradnorm_lambda", "t2i")
    assert table.shape == (3, 4) and table.loc[0.1, 1.5] == pytest.approx(50 + 6 - 0.3 + 0.5)  # seed mean
    names = sorted(p.name for p in plots.write_plots(runs, tmp_path))
    assert any(n.startswith("grid_bdam_synthetic_pedes_t2i") and "gradnorm_alpha" in n for n in names)
    assert any(n.startswith("sensitivity_bdam") and n.endswith("gradnorm_alpha.png") for n in names)
    assert any(n.startswith("sensitivity_bdam") and n.endswith("gradnorm_lambda.png") for n in names)
    hole = (runs["params.params.gradnorm_alpha"] == "2.0") & (runs["params.params.gradnorm_lambda"] == "0.1")
    assert len(plots.grid_pairs(runs)) == 1 and not plots.grid_pairs(runs[~hole])  # an incomplete grid: no heatmap


def test_a_gallery_without_identity_descriptions_is_refused_before_training(pedes_root):
    from dataclasses import replace

    from reidbench.datasets import build_dataset
    from reidbench.harness.trainer import check_eval_texts
    from reidbench.harness.validation import plan_validation

    dataset = build_dataset("cuhk_pedes", str(pedes_root))
    train, validation = plan_validation(dataset, 0.1, 0)
    check_eval_texts(build(), dataset, validation, "bdam")  # the synthetic set has them everywhere
    check_eval_texts(build(gallery_texts="none"), dataset, validation, "bdam")
    bare = [replace(s, texts=tuple(t for t in s.texts if t[0] != "id_description"))
            for s in dataset.splits["test_images"]]
    dataset.splits["test_images"] = bare
    with pytest.raises(ValueError, match=r"requires id_description: \d+ of \d+ test_images \(evaluated\) samples"):
        check_eval_texts(build(), dataset, validation, "bdam")
    check_eval_texts(build(gallery_texts="none"), dataset, validation, "bdam")  # image only reads none
