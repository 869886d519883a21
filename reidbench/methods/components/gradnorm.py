"""GradNorm loss balancing (Chen et al., ICML 2018) as BDAM writes it (Eqs. 5-6).

Usage inside a method (the module is a submodule, so the harness's optimizer, DDP
and DeepSpeed treat its ``log_weights`` like any other parameter)::

    self.gradnorm = GradNorm(("info", "triplet", "aln", "decouple"), alpha=1.5, reg_lambda=0.1)

    def training_step(self, batch, stage):
        ...
        out = self.gradnorm({"info": l_info, "triplet": l_tri, "aln": l_aln, "decouple": l_dec},
                            shared=self.bdam.proj.weight)
        return {"weighted": out.weighted, "gradnorm": out.gradnorm, LOGGED: out.logged}

The harness sums the returned terms and runs one backward pass:

* ``weighted = sum_k w_k.detach() * L_k`` trains the model; the task weights get
  none of its gradient (``detach``).
* ``gradnorm`` (GradNorm's ``L_grad`` plus the ``lambda * sum_k (log w_k)^2``
  regulariser) trains only the task weights: each ``G_k = w_k * ||dL_k/dW||`` is
  built from a detached gradient norm, so the model gets none of its gradient
  and no second-order backward is needed.
* ``logged`` holds ``w_<task>`` and ``raw_<task>`` (the unweighted ``L_k``) for
  every task, detached: the harness logs them per epoch and never sums them.

``shared`` is the shared parameter ``W`` whose gradient norms are balanced (a
tensor that requires grad, or a list of them; Chen et al. use the last shared
layer). Each task's gradient with respect to it is taken with
``torch.autograd.grad`` (one partial backward per task, as far as ``W``), so a
late, small layer keeps the overhead low. A task whose loss does not reach ``W``
is an error: its weight could not be balanced.

The GradNorm step, per training step (``K`` tasks)::

    g_k = ||dL_k/dW||_2                   (all-reduced gradients under torch.distributed, see below)
    G_k = w_k g_k,      G_ref = mean_k G_k                    (G_ref detached)
    r_k = (L_k / L_k^0) / mean_j (L_j / L_j^0)               (L_k^0: L_k at the first step)
    L_grad = sum_k | G_k - G_ref r_k^p |                     (the target detached)

``L_k^0`` is taken at the first training step where ``L_k > 0`` (a margin loss can
start at exactly 0); until then task k's ratio counts as 1. A task that trains
slower than the others (larger ``r_k``) gets a larger gradient-norm target, hence
more weight, for ``p > 0``: Chen et al.'s restoring force. (LibMTL's GradNorm,
the test oracle, agrees; gradnorm-pytorch 0.2.3 targets ``G_ref r_k^-alpha``, the
opposite force, and matches this module only at ``alpha = 0``.)

``alpha_role`` resolves the paper's ambiguity about ``alpha`` (Sec. IV-A gives
"GradNorm (alpha = 1.5)", which is GradNorm's restoring-force exponent; Eq. 6
writes ``alpha * L_GradNorm`` as a loss weight, with Eq. 5's target ``r_k G_ref``
carrying no exponent):

* ``"exponent"`` (default): ``p = alpha`` and ``gradnorm = L_grad + lambda R``:
  GradNorm as Chen et al. define it, and the only reading in which Sec. IV-A's
  1.5 is GradNorm's own, published default.
* ``"weight"``: ``p = 1`` and ``gradnorm = alpha * L_grad + lambda R`` (Eq. 6 as
  written). Since ``L_grad`` reaches only the task weights, ``alpha`` then only
  trades the balancing pull against the regulariser (and scales the weights'
  step under SGD; Adam is almost blind to it).

``normalise``: with ``False`` (the default, the paper's) ``w_k = exp(s_k)``, free
in scale, and the regulariser ``lambda sum_k s_k^2`` holds the weights near 1;
``L_grad`` shrinks when every weight does, so ``lambda = 0`` lets them decay.
With ``True`` ``w_k = K softmax(s)_k``: the weights always sum to K, which is
Chen et al.'s renormalisation built into the parametrisation (LibMTL's form).

``reg_lambda`` defaults to 0.1, our choice: the paper gives no value (the α/λ
grid sweeps it). The task weights should train without weight decay and, under
the method's small learning rate, usually faster than the model: give the
module's prefix its own parameter group, e.g.
``Stage(param_groups=(("gradnorm.", 100.0, 0.0), ...))``.

Distributed (``torch.distributed`` initialised, more than one rank): the losses
are averaged over ranks before the ratios are formed (so ``L_k^0`` and ``r_k``
are the global batch's, identical on every rank), and so are the gradients
``dL_k/dW`` before their norms are taken, so every rank computes the same
``L_grad`` as one process on the whole batch would (exactly, when each rank's
loss is a mean over an equal share of the batch). The task weights then stay
identical across ranks whatever the data-parallel wrapper does with their
gradients. Costs ``K`` all-reduces of ``W``'s size per step.

Under DeepSpeed, ZeRO stages 1-2 work like DDP; ZeRO-3 partitions the shared
parameter, whose gradient ``torch.autograd.grad`` then cannot see: not supported.

Outside training (``module.eval()``) or without autograd, ``gradnorm`` is a zero
that still depends on the task weights (so DDP sees them used) and nothing is
recorded; the first training step sets ``L_k^0`` (a buffer, so it is
checkpointed and a resumed run keeps its reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

ALPHA_ROLES = ("exponent", "weight")


@dataclass
class GradNormOutput:
    """What ``GradNorm.forward`` returns (see the module docstring)."""

    weighted: torch.Tensor  # sum_k w_k.detach() L_k: the model's loss
    gradnorm: torch.Tensor  # L_grad (times alpha in the "weight" role) + lambda sum (log w)^2: the weights' loss
    weights: dict[str, torch.Tensor]  # task -> w_k, detached
    losses: dict[str, torch.Tensor]  # task -> raw L_k, detached
    logged: dict[str, torch.Tensor]  # w_<task>, raw_<task>: for the LOGGED dict of a training step


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if _world_size() == 1:
        return t
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


class GradNorm(nn.Module):
    """Learned task weights ``w_k`` balanced by GradNorm; see the module docstring."""

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, alpha_role: Literal["exponent", "weight"] = "exponent",
                 reg_lambda: float = 0.1, normalise: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if len(tasks) < 2 or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError(f"GradNorm: tasks must be at least two distinct non-empty names, got {tasks!r}")
        if alpha_role not in ALPHA_ROLES:
            raise ValueError(f"GradNorm: alpha_role must be one of {ALPHA_ROLES}, got {alpha_role!r}")
        if not alpha >= 0:
            raise ValueError(f"GradNorm: alpha must be >= 0, got {alpha!r}")
        if not reg_lambda >= 0:
            raise ValueError(f"GradNorm: reg_lambda must be >= 0, got {reg_lambda!r}")
        self.tasks = tasks
        self.alpha = float(alpha)
        self.alpha_role = alpha_role
        self.reg_lambda = float(reg_lambda)
        self.normalise = normalise
        self.eps = eps
        self.log_weights = nn.Parameter(torch.zeros(len(tasks)))  # s_k: w_k = exp(s_k) (or K softmax(s))
        self.register_buffer("initial_losses", torch.zeros(len(tasks)))
        self.register_buffer("initialised", torch.zeros(len(tasks), dtype=torch.bool))

    def weights(self) -> torch.Tensor:
        """``w_k`` as a differentiable tensor ``[K]`` (task order of ``tasks``)."""
        if self.normalise:
            return len(self.tasks) * torch.softmax(self.log_weights, dim=0)
        return torch.exp(self.log_weights)

    def forward(self, losses: Mapping[str, torch.Tensor],
                shared: torch.Tensor | Sequence[torch.Tensor]) -> GradNormOutput:
        if set(losses) != set(self.tasks):
            raise ValueError(f"GradNorm: expected losses for tasks {list(self.tasks)}, got {sorted(losses)}")
        raw = [losses[t] for t in self.tasks]
        for t, value in zip(self.tasks, raw):
            if value.numel() != 1:
                raise ValueError(f"GradNorm: loss {t!r} must be a scalar, got shape {tuple(value.shape)}")
        params = [shared] if isinstance(shared, torch.Tensor) else list(shared)
        w = self.weights()
        values = torch.stack([v.reshape(()).float() for v in raw])
        weighted = (w.detach() * values).sum()
        log_w = torch.log(w)
        regulariser = self.reg_lambda * (log_w ** 2).sum()

        if self.training and torch.is_grad_enabled():
            gradnorm = self._balance(raw, values.detach(), w, params) + regulariser
        else:
            gradnorm = regulariser * 0.0

        w_d = w.detach()
        weights = {t: w_d[i] for i, t in enumerate(self.tasks)}
        raw_d = {t: values[i].detach() for i, t in enumerate(self.tasks)}
        logged = {**{f"w_{t}": v for t, v in weights.items()}, **{f"raw_{t}": v for t, v in raw_d.items()}}
        return GradNormOutput(weighted=weighted, gradnorm=gradnorm, weights=weights, losses=raw_d, logged=logged)

    def _balance(self, raw: list[torch.Tensor], values: torch.Tensor, w: torch.Tensor,
                 params: list[torch.Tensor]) -> torch.Tensor:
        """GradNorm's L_grad (times alpha in the "weight" role); reaches only ``log_weights``."""
        if not params or not all(p.requires_grad for p in params):
            raise ValueError("GradNorm: `shared` must be one or more tensors that require grad (the shared layer's "
                             "weight), got " + ", ".join(f"{tuple(p.shape)} requires_grad={p.requires_grad}"
                                                          for p in params))
        norms = []
        for task, loss in zip(self.tasks, raw):
            grads = torch.autograd.grad(loss.reshape(()), params, retain_graph=True, allow_unused=True)
            if all(g is None for g in grads):
                raise ValueError(f"GradNorm: loss {task!r} does not depend on the shared parameter; every balanced "
                                 "loss must reach it")
            flat = torch.cat([g.detach().float().reshape(-1) for g in grads if g is not None])
            norms.append(torch.linalg.vector_norm(_mean_over_ranks(flat)))
        grad_norms = w * torch.stack(norms)  # G_k: the gradient norm of w_k L_k

        losses = _mean_over_ranks(values)
        # L_k^0 is L_k at the first step where it is positive (a triplet loss can start at 0);
        # until then that task's ratio is 1
        fresh = ~self.initialised & (losses > self.eps)
        self.initial_losses.copy_(torch.where(fresh, losses, self.initial_losses))
        self.initialised.logical_or_(fresh)
        ratios = torch.where(self.initialised, losses / self.initial_losses.clamp_min(self.eps),
                             torch.ones_like(losses))
        ratios = ratios / ratios.mean().clamp_min(self.eps)
        power = self.alpha if self.alpha_role == "exponent" else 1.0
        target = (grad_norms.mean() * ratios ** power).detach()
        l_grad = (grad_norms - target).abs().sum()
        return l_grad if self.alpha_role == "exponent" else self.alpha * l_grad


__all__ = ["ALPHA_ROLES", "GradNorm", "GradNormOutput"]
