"""The method contract (``reidbench/methods/base.py``), checked for every registered
method on each task it declares, on the small fake backbone: a method is covered the
moment ``methods/zoo.py`` imports it.

For every preset and stage: after the harness's ``set_trainable`` and the method's
``begin_stage``, one ``training_step`` and backward give a nonzero gradient to every
parameter the stage trains and none to (and leave unchanged) every frozen one; the loss
terms are finite scalars and every weighted term name is one the stage returns; logged
values are finite and stay out of the loss. Embeddings have the documented shapes, in
one joint space for text methods; ``distance`` is a finite [Q, G]; the state dict goes
through the harness's checkpoint files into a freshly built method and gives the same
embeddings. The slow tests run one short ``fit`` per task.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from fakes import FakeCLIP, chunks, requirement_batch, text_query_batch
from reidbench.config import ConfigError, from_dict
from reidbench.harness import checkpoint as ckpt
from reidbench.harness.optim import set_trainable
from reidbench.methods import LOGGED, DataSpec, Method, get_method, list_methods

NUM_CLASSES = 4
NUM_CAMERAS = 2
NUM_CLOTHES = 6

CASES = [(name, task, preset) for name in list_methods() for task in get_method(name).tasks
         for preset in sorted(get_method(name).PRESETS)]


def build(name: str, task: str, preset: str, seed: int = 0) -> Method:
    cls = get_method(name)
    torch.manual_seed(seed)
    config = from_dict(cls.config_cls, cls.PRESETS[preset])
    return cls(config, FakeCLIP(num_cameras=NUM_CAMERAS, context_length=32), DataSpec(NUM_CLASSES, NUM_CAMERAS, NUM_CLOTHES, task))


def training_batch(method: Method) -> dict:
    return requirement_batch(type(method).requires, NUM_CLASSES, tuple(method.backbone.image_size))


def eval_batch(method: Method) -> dict:
    """What the evaluation loader gives: no label maps, no training texts, only the texts the
    method declares in ``eval_text_kinds``."""
    kinds = method.eval_text_kinds()
    batch = requirement_batch(kinds, NUM_CLASSES, tuple(method.backbone.image_size), seed=1)
    return {k: batch[k] for k in ("image", "pid", "camid", "clothes_id", "index", *kinds)}


# ------------------------------------------------------------------ checks


def check_stage(method: Method, stage, batch: dict) -> dict[str, torch.Tensor]:
    """One contract step of ``stage``: raises AssertionError naming what broke."""
    trained = set(set_trainable(method, stage))
    method.zero_grad(set_to_none=True)
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if n not in trained}
    method.train()
    method.begin_stage(stage, lambda: chunks(batch, 3))
    terms = dict(method.training_step(batch, stage))
    logged = terms.pop(LOGGED, {})
    for name, value in logged.items():
        assert math.isfinite(float(value)), f"stage {stage.name!r}: logged value {name!r} is not finite: {value}"
    assert terms, f"stage {stage.name!r}: training_step returned no loss term"
    for name, value in terms.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, \
            f"stage {stage.name!r}: loss term {name!r} is not a scalar tensor ({type(value).__name__} " \
            f"{getattr(value, 'shape', '')})"
        assert torch.isfinite(value), f"stage {stage.name!r}: loss term {name!r} = {value}"
    unknown = sorted(set(dict(stage.loss_weights)) - set(terms))
    assert not unknown, f"stage {stage.name!r} weighs terms {unknown} that training_step does not return " \
                        f"(returned: {sorted(terms)})"
    weights = dict(stage.loss_weights)
    sum(weights.get(name, 1.0) * value for name, value in terms.items()).backward()
    no_grad = [n for n, p in method.named_parameters()
               if n in trained and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert not no_grad, f"stage {stage.name!r} trains {len(no_grad)} parameter(s) that get no gradient: {no_grad[:8]}"
    leaked = [n for n, p in method.named_parameters() if n not in trained and p.grad is not None]
    assert not leaked, f"stage {stage.name!r}: frozen parameter(s) got a gradient: {leaked[:8]}"
    changed = [n for n, p in method.named_parameters() if n in frozen and not torch.equal(p.detach(), frozen[n])]
    assert not changed, f"stage {stage.name!r}: frozen parameter(s) changed: {changed[:8]}"
    return terms


def embeddings(method: Method, task: str) -> dict:
    method.eval()
    with torch.no_grad():
        out = {"image": method.embed_image(eval_batch(method))}
        if task == "text":
            out["text"] = method.embed_text(text_query_batch(NUM_CLASSES))
    return out


def rows(embedding, index):
    if isinstance(embedding, dict):
        return {k: v[index] for k, v in embedding.items()}
    return embedding[index]


def check_embeddings(method: Method, task: str, out: dict) -> None:
    n = NUM_CLASSES * 2
    image = out["image"]
    if isinstance(image, dict):
        assert image, "embed_image returned an empty dict"
        for key, value in image.items():
            assert isinstance(value, torch.Tensor) and value.shape[0] == n, f"embed_image[{key!r}] must have B rows"
            assert torch.isfinite(value).all(), f"embed_image[{key!r}] has non-finite values"
    else:
        assert image.dim() == 2 and image.shape[0] == n and image.shape[1] > 0, \
            f"embed_image must give [B, D] or a dict of [B, ...] tensors, got {tuple(image.shape)}"
        assert torch.isfinite(image).all(), "embed_image has non-finite values"
    if task == "text":
        text = out["text"]
        assert isinstance(text, torch.Tensor) and text.dim() == 2 and text.shape[0] == n, \
            f"embed_text must give [B, D], got {getattr(text, 'shape', type(text))}"
        assert torch.isfinite(text).all(), "embed_text has non-finite values"
        query, gallery = text, image
    else:
        query, gallery = rows(image, slice(0, 3)), image
    with torch.no_grad():
        dist = method.distance(query, gallery)
    assert dist.shape == (3 if task != "text" else n, n), f"distance must give [Q, G], got {tuple(dist.shape)}"
    assert torch.isfinite(dist).all(), "distance has non-finite values"


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), \
            f"embeddings differ after a state_dict round trip (max {(a - b).abs().max():.3g})"


# ------------------------------------------------------------------- tests


def test_every_method_is_covered():
    names = {name for name, _, _ in CASES}
    assert names == set(list_methods()) and len(names) >= 5
    assert any(task == "text" for _, task, _ in CASES) and any(task == "image" for _, task, _ in CASES)


def run_contract(make, task: str, tmp_path) -> None:
    """The whole contract for the method ``make(seed)`` builds."""
    method = make(0)
    stages = method.stages()
    assert stages and len({s.name for s in stages}) == len(stages), [s.name for s in stages]
    batch = training_batch(method)
    for stage in stages:
        check_stage(method, stage, batch)

    out = embeddings(method, task)
    check_embeddings(method, task, out)

    path = tmp_path / "model.safetensors"
    ckpt.save_weights(method, path)
    fresh = make(1)
    ckpt.load_weights(fresh, path)
    assert_same(embeddings(fresh, task), out)


@pytest.mark.parametrize("name,task,preset", CASES, ids=[f"{n}-{t}-{p}" for n, t, p in CASES])
def test_method_contract(name, task, preset, tmp_path):
    run_contract(lambda seed: build(name, task, preset, seed), task, tmp_path)


def unset_fields(config_cls, prefix: str = "") -> list[str]:
    """Fields of a config dataclass (nested ones too) without a default."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += unset_fields(hints[f.name], f"{prefix}{f.name}.")
    return out


@pytest.mark.parametrize("name", list_methods())
def test_configs_have_defaults_and_presets_validate(name):
    cls = get_method(name)
    assert not unset_fields(cls.config_cls), f"{name}: config fields without a default: {unset_fields(cls.config_cls)}"
    cls.config_cls()
    assert {"paper", "tiny"} <= set(cls.PRESETS), f"{name} needs a 'paper' and a 'tiny' preset"
    epochs = {}
    for preset in cls.PRESETS:
        method = build(name, cls.tasks[0], preset)  # from_dict validates the preset's keys
        epochs[preset] = sum(s.epochs for s in method.stages())
    assert epochs["tiny"] < epochs["paper"], f"{name}: the CPU preset trains longer than the paper's: {epochs}"
    if hasattr(cls.config_cls, "preset"):
        with pytest.raises(KeyError, match="known: paper, tiny"):
            cls.config_cls.preset("huge")
    field = max((f.name for f in dataclasses.fields(cls.config_cls)), key=len)
    with pytest.raises(ConfigError, match=f"did you mean 'params.{field}'"):
        from_dict(cls.config_cls, {field + "x": 1}, prefix="params.")


def test_text_methods_read_the_texts_they_require():
    for name in list_methods():
        cls = get_method(name)
        if "text" in cls.tasks:
            assert "caption" in cls.requires, f"{name} handles text queries, which are captions"


# ------------------------------------------- the contract catches planted mistakes


def planted(stages=None, begin=None, step_extra=None, init=None, embed_text=None, seed=0):
    """An unregistered ``t2i_baseline`` with one planted mistake."""
    from reidbench.methods.t2i_baseline import T2IBaseline

    class Planted(T2IBaseline):
        def __init__(self, *args):
            super().__init__(*args)
            if init:
                init(self)

        def embed_text(self, batch):
            out = super().embed_text(batch)
            return embed_text(self, out) if embed_text and not self.training else out  # at evaluation only

        def stages(self):
            return stages(super().stages()) if stages else super().stages()

        def begin_stage(self, stage, train_batches):
            if begin:
                begin(self)

        def training_step(self, batch, stage):
            terms = super().training_step(batch, stage)
            if step_extra:
                terms.update(step_extra(self))
            return terms

    torch.manual_seed(seed)
    return Planted(from_dict(Planted.config_cls, Planted.PRESETS["tiny"]),
                   FakeCLIP(num_cameras=NUM_CAMERAS, context_length=32), DataSpec(NUM_CLASSES, NUM_CAMERAS, 0, "text"))


def unfreeze_scale(method):
    method.backbone.logit_scale.requires_grad_(True)


def nudge_scale(method):
    with torch.no_grad():
        method.backbone.logit_scale.add_(1.0)


@pytest.mark.parametrize("mistake,message", [
    (dict(stages=lambda s: [dataclasses.replace(s[0], trainable=(*s[0].trainable, "backbone.logit_scale"))]),
     r"trains 1 parameter\(s\) that get no gradient: \['backbone.logit_scale'\]"),
    (dict(begin=unfreeze_scale, step_extra=lambda m: {"scale": m.backbone.logit_scale * 1e-3}),
     r"frozen parameter\(s\) got a gradient: \['backbone.logit_scale'\]"),
    (dict(begin=nudge_scale), r"frozen parameter\(s\) changed: \['backbone.logit_scale'\]"),
    (dict(stages=lambda s: [dataclasses.replace(s[0], loss_weights=(*s[0].loss_weights, ("itc", 1.0)))]),
     r"weighs terms \['itc'\] that training_step does not return"),
    (dict(step_extra=lambda m: {"nan": torch.tensor(float("nan"))}), r"loss term 'nan' = "),
    (dict(step_extra=lambda m: {"vector": m.classifier.weight.sum(1)}), r"'vector' is not a scalar tensor"),
], ids=["unused-trainable-prefix", "frozen-param-trained", "frozen-param-changed", "weight-without-term",
        "nan-term", "non-scalar-term"])
def test_the_contract_fails_on_a_planted_mistake(mistake, message):
    method = planted(**mistake)
    with pytest.raises(AssertionError, match=message):
        check_stage(method, method.stages()[0], training_batch(method))


# ------------------------------------------------------------- one fit per task


@pytest.fixture(scope="module")
def synthetic_roots(tmp_path_factory):
    from reidbench.datasets.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, flavor=["market", "pedes"], ids={"market": 16, "pedes": 30}, seed=0, workers=1,
                      image_size=(64, 32), images_per_id={"market": 4, "pedes": 4})


def short_fit(tmp_path, backbone_kind, method, dataset, root):
    from reidbench.harness.run_config import build_run_config
    from reidbench.harness.trainer import WorkerEnv, fit

    cfg = build_run_config(overrides=[
        f"method={method}", f"data.dataset={dataset}", f"data.root={root}", "data.image_size=[32,16]", "data.p=4",
        "data.k=2", "data.num_workers=0", "data.val_fraction=0.25", f"backbone.kind={backbone_kind}",
        "backbone.pretrained=null", "optim.epochs_scale=0.25", f"output_dir={tmp_path}"])
    epochs: list[dict] = []
    final = fit(cfg, WorkerEnv(on_epoch=epochs.append))
    return cfg, epochs, final


def check_fit(cfg, epochs, final, evaluation, terms):
    assert len(epochs) >= 2
    for metrics in epochs:
        assert {f"train/{t}" for t in terms} <= set(metrics), sorted(metrics)
        assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/mAP"] <= 100.0
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]
    assert 0.0 < final[f"test/{evaluation}/mAP"] <= 100.0
    from pathlib import Path

    assert (Path(cfg.output_dir) / cfg.run_name / "best.safetensors").is_file()


@pytest.mark.slow
def test_an_image_method_fits_on_a_synthetic_image_set(tmp_path, fake_backbone_kind, synthetic_roots):
    cfg, epochs, final = short_fit(tmp_path, fake_backbone_kind, "baseline", "market1501", synthetic_roots["market"])
    check_fit(cfg, epochs, final, "standard", ("id", "triplet"))


@pytest.mark.slow
def test_the_text_to_image_baseline_fits_on_synthetic_pedes(tmp_path, fake_backbone_kind, synthetic_roots):
    cfg, epochs, final = short_fit(tmp_path, fake_backbone_kind, "t2i_baseline", "cuhk_pedes", synthetic_roots["pedes"])
    check_fit(cfg, epochs, final, "t2i", ("i2t", "t2i", "id"))


def unsaved_offset(method):
    method.offset = torch.randn(method.backbone.embed_dim)  # a plain attribute: not in the state dict


@pytest.mark.parametrize("mistake,message", [
    (dict(init=unsaved_offset, embed_text=lambda m, out: out + m.offset), "differ after a state_dict round trip"),
    (dict(embed_text=lambda m, out: out.sum(1)), r"embed_text must give \[B, D\]"),
    (dict(embed_text=lambda m, out: out * float("nan")), "embed_text has non-finite values"),
], ids=["state-outside-the-state-dict", "text-embedding-shape", "nan-embedding"])
def test_the_embedding_contract_fails_on_a_planted_mistake(mistake, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        run_contract(lambda seed: planted(**mistake, seed=seed), "text", tmp_path)
