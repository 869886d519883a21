"""GradNorm (BDAM Eqs. 5-6) against LibMTL's independent GradNorm on a toy two-task
problem, the gradient routing (model <- weighted loss only, task weights <- GradNorm
loss only), the alpha roles, and DDP over two gloo ranks."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch
from torch import nn

from reidbench.methods import LOGGED
from reidbench.methods.components import GradNorm


def toy_problem(seed: int = 0, n: int = 32):
    """A shared linear layer feeding two regression tasks of different scale and
    difficulty, so that their gradient norms and training rates differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y_a = x @ torch.randn(6, 2, generator=g)
    y_b = 3.0 * torch.tanh(x @ torch.randn(6, 1, generator=g)) + 0.3 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    shared = nn.Linear(6, 3)
    return shared, x, y_a, y_b


def task_losses(shared: nn.Linear, x, y_a, y_b) -> dict[str, torch.Tensor]:
    h = shared(x)
    return {"a": (h[:, :2] - y_a).pow(2).mean(), "b": 4.0 * (h[:, 2:] - y_b).pow(2).mean()}


def load_libmtl_gradnorm(monkeypatch):
    """LibMTL's GradNorm class, loaded from its two source files: the package's own
    ``__init__`` imports ``torchvision.models.utils``, gone from current torchvision."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LibMTL (the test extra's GradNorm oracle) is not installed")
    root = spec.submodule_search_locations[0]
    for name in ("LibMTL", "LibMTL.weighting"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    modules = {}
    for name in ("abstract_weighting", "GradNorm"):
        full = f"LibMTL.weighting.{name}"
        file_spec = importlib.util.spec_from_file_location(full, f"{root}/weighting/{name}.py")
        module = importlib.util.module_from_spec(file_spec)
        monkeypatch.setitem(sys.modules, full, module)
        file_spec.loader.exec_module(module)
        modules[name] = module
    return modules["GradNorm"]


def run_libmtl(monkeypatch, alpha: float, normalise: bool, steps: int, lr: float) -> torch.Tensor:
    libmtl = load_libmtl_gradnorm(monkeypatch)
    if not normalise:
        # the paper's w_k = exp(s_k) instead of LibMTL's K softmax(s): LibMTL computes
        # task_num * F.softmax(s), so a softmax returning exp(s) / task_num gives exp(s)
        patched = types.SimpleNamespace(softmax=lambda s, dim: torch.exp(s) / s.shape[dim])
        monkeypatch.setattr(libmtl, "F", patched)
    shared, x, y_a, y_b = toy_problem()
    params = list(shared.parameters())

    class Oracle(libmtl.GradNorm):
        def get_share_params(self):
            return params

        def zero_grad_share_params(self):
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()

    oracle = Oracle()
    oracle.task_num, oracle.device, oracle.rep_grad, oracle.epoch = 2, torch.device("cpu"), False, 1
    oracle.init_param()
    with torch.no_grad():
        oracle.loss_scale.zero_()
    opt = torch.optim.SGD([*params, oracle.loss_scale], lr=lr)
    trajectory = []
    for step in range(steps):
        losses = torch.stack(list(task_losses(shared, x, y_a, y_b).values()))
        if step == 0:  # LibMTL's reference losses are its first epoch's; ours the first step's
            oracle.train_loss_buffer = losses.detach().clone()[:, None]
        opt.zero_grad()
        w = oracle.backward(losses, alpha=alpha)
        trajectory.append(torch.as_tensor(w, dtype=torch.float32))
        opt.step()
    return torch.stack(trajectory)


def run_ours(alpha: float, normalise: bool, steps: int, lr: float, reg_lambda: float = 0.0,
             losses: list | None = None) -> torch.Tensor:
    shared, x, y_a, y_b = toy_problem()
    gn = GradNorm(("a", "b"), alpha=alpha, reg_lambda=reg_lambda, normalise=normalise)
    opt = torch.optim.SGD([*shared.parameters(), *gn.parameters()], lr=lr)
    trajectory = []
    for _ in range(steps):
        out = gn(task_losses(shared, x, y_a, y_b), shared=list(shared.parameters()))
        trajectory.append(torch.stack(list(out.weights.values())))
        if losses is not None:
            losses.append(torch.stack(list(out.losses.values())))
        opt.zero_grad()
        (out.weighted + out.gradnorm).backward()
        opt.step()
    return torch.stack(trajectory)


@pytest.mark.parametrize("normalise", [True, False], ids=["K-softmax", "exp"])
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_weight_trajectory_agrees_with_libmtl(monkeypatch, alpha, normalise):
    steps, lr = 40, 0.02
    want = run_libmtl(monkeypatch, alpha, normalise, steps, lr)
    got = run_ours(alpha, normalise, steps, lr)
    assert (got - 1).abs().max() > 0.1, "the toy problem must move the weights"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_restoring_force_raises_the_weight_of_the_slower_task():
    losses = []
    flat = run_ours(alpha=0.0, normalise=True, steps=40, lr=0.02, losses=losses)
    strong = run_ours(alpha=3.0, normalise=True, steps=40, lr=0.02)
    ratios = losses[-1] / losses[0]  # L_k / L_k^0 under gradient-norm equalisation alone
    slower = int(ratios.argmax())
    assert ratios[slower] > 1.2 * ratios[1 - slower]
    # a restoring force pulls weight towards the task that trains slower (Chen et al.'s r_k^alpha)
    assert strong[-1, slower] > flat[-1, slower] + 0.1


def _grads(module_params):
    return [None if p.grad is None else p.grad.clone() for p in module_params]


def test_model_gets_only_the_weighted_loss_and_weights_only_the_gradnorm_loss():
    shared, x, y_a, y_b = toy_problem()
    gn = GradNorm(("a", "b"), alpha=1.5, reg_lambda=0.3)
    with torch.no_grad():
        gn.log_weights.copy_(torch.tensor([0.4, -0.2]))
    out = gn(task_losses(shared, x, y_a, y_b), shared=shared.weight)
    out.gradnorm.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in shared.parameters())
    assert gn.log_weights.grad is not None and gn.log_weights.grad.abs().min() > 0
    gn.zero_grad()
    out.weighted.backward()
    assert gn.log_weights.grad is None or not gn.log_weights.grad.any()
    got = _grads(shared.parameters())
    shared.zero_grad()
    w = torch.exp(torch.tensor([0.4, -0.2]))
    losses = task_losses(shared, x, y_a, y_b)
    (w[0] * losses["a"] + w[1] * losses["b"]).backward()
    for g, want in zip(got, _grads(shared.parameters())):
        torch.testing.assert_close(g, want)


def test_regulariser_and_alpha_roles():
    def s_grad(**kwargs):
        shared, x, y_a, y_b = toy_problem()
        gn = GradNorm(("a", "b"), **kwargs)
        with torch.no_grad():
            gn.log_weights.copy_(torch.tensor([0.5, -0.25]))
        gn(task_losses(shared, x, y_a, y_b), shared=shared.weight)  # first step: sets L^0
        with torch.no_grad():
            shared.weight.mul_(0.7)  # change the losses, so that the ratios differ from 1
        out = gn(task_losses(shared, x, y_a, y_b), shared=shared.weight)
        out.gradnorm.backward()
        return gn.log_weights.grad

    base = s_grad(alpha=1.0, reg_lambda=0.0)
    # lambda sum (log w)^2 adds 2 lambda s_k to s_k's gradient
    torch.testing.assert_close(s_grad(alpha=1.0, reg_lambda=0.2), base + 0.4 * torch.tensor([0.5, -0.25]))
    # "weight": Eq. 6's alpha * L_GradNorm with Eq. 5's exponent-free target
    torch.testing.assert_close(s_grad(alpha=2.5, alpha_role="weight", reg_lambda=0.0), 2.5 * base)
    # "exponent": alpha is the restoring force's exponent, so it changes the direction too
    assert not torch.allclose(s_grad(alpha=2.5, reg_lambda=0.0), 2.5 * base, rtol=0.05)


def test_logged_values_reference_losses_and_eval_mode():
    shared, x, y_a, y_b = toy_problem()
    gn = GradNorm(("a", "b"))
    losses = task_losses(shared, x, y_a, y_b)
    out = gn(losses, shared=shared.weight)
    assert set(out.logged) == {"w_a", "w_b", "raw_a", "raw_b"}
    assert all(not v.requires_grad for v in out.logged.values())
    assert out.logged["raw_b"].item() == pytest.approx(losses["b"].item())
    terms = {"weighted": out.weighted, "gradnorm": out.gradnorm, LOGGED: out.logged}  # a training_step's return
    assert terms[LOGGED]["w_a"].item() == pytest.approx(1.0)
    torch.testing.assert_close(gn.initial_losses, torch.stack([losses["a"], losses["b"]]).detach())
    with torch.no_grad():
        shared.weight.mul_(0.5)
    gn(task_losses(shared, x, y_a, y_b), shared=shared.weight)
    torch.testing.assert_close(gn.initial_losses, torch.stack([losses["a"], losses["b"]]).detach())  # first step only
    gn.eval()
    out = gn(task_losses(shared, x, y_a, y_b), shared=shared.weight)
    assert out.gradnorm.item() == 0.0 and out.gradnorm.requires_grad


def test_a_loss_that_starts_at_zero_takes_its_reference_when_it_first_is_positive():
    shared, x, y_a, y_b = toy_problem()
    gn = GradNorm(("a", "b"))
    losses = task_losses(shared, x, y_a, y_b)
    out = gn({"a": losses["a"], "b": 0.0 * losses["b"]}, shared=shared.weight)
    assert torch.isfinite(out.gradnorm) and gn.initialised.tolist() == [True, False]
    gn({"a": losses["a"], "b": losses["b"]}, shared=shared.weight)
    assert gn.initialised.tolist() == [True, True]
    torch.testing.assert_close(gn.initial_losses, torch.stack([losses["a"], losses["b"]]).detach())


def test_bad_input_is_refused():
    shared, x, y_a, y_b = toy_problem()
    losses = task_losses(shared, x, y_a, y_b)
    with pytest.raises(ValueError, match="at least two distinct"):
        GradNorm(("a", "a"))
    with pytest.raises(ValueError, match="alpha_role"):
        GradNorm(("a", "b"), alpha_role="strength")
    gn = GradNorm(("a", "b"))
    with pytest.raises(ValueError, match=r"expected losses for tasks \['a', 'b'\]"):
        gn({"a": losses["a"]}, shared=shared.weight)
    unrelated = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="'a' does not depend on the shared parameter"):
        gn(losses, shared=unrelated)


# ---------------------------------------------------------------- DDP, 2 gloo ranks


class _Toy(nn.Module):
    """What the harness wraps in DDP: a module whose forward is a training step."""

    def __init__(self, alpha: float):
        super().__init__()
        self.shared, _, _, _ = toy_problem()
        self.gradnorm = GradNorm(("a", "b"), alpha=alpha, reg_lambda=0.05)

    def forward(self, x, y_a, y_b):
        out = self.gradnorm(task_losses(self.shared, x, y_a, y_b), shared=self.shared.weight)
        return {"weighted": out.weighted, "gradnorm": out.gradnorm, LOGGED: out.logged}


def _train(model: nn.Module, x, y_a, y_b, steps: int) -> torch.Tensor:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    trajectory = []
    for _ in range(steps):
        terms = model(x, y_a, y_b)
        logged = terms.pop(LOGGED)
        trajectory.append(torch.stack([logged["w_a"], logged["w_b"]]))
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    return torch.stack(trajectory)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, steps: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_Toy(alpha=1.5), find_unused_parameters=True)
        _, x, y_a, y_b = toy_problem()
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        trajectory = _train(model, x[part], y_a[part], y_b[part], steps)
        torch.save(trajectory, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights_equal_to_one_process(tmp_path):
    import torch.multiprocessing as mp

    steps = 25
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), steps), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    _, x, y_a, y_b = toy_problem()
    single = _train(_Toy(alpha=1.5), x, y_a, y_b, steps)
    assert (single[-1] - 1).abs().max() > 0.05
    # the two halves all-reduced are the whole batch: the same trajectory as one process
    torch.testing.assert_close(rank0, single, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(rank0.sum()))
