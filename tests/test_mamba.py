"""The Mamba mixer's CPU path against a step-by-step recurrence and transformers'
MambaMixer; causality, gradients, checkpoint names, and the CPU/CUDA dispatch with
a simulated mamba-ssm installation whose kernels must never see a CPU tensor."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from reidbench.methods.layers import Mamba, MambaStack, selective_scan
from reidbench.methods.layers import mamba as mamba_mod

# mamba-ssm's Mamba module: the names (and shapes) a checkpoint must carry
MAMBA_SSM_SHAPES = {
    "in_proj.weight": lambda d, di, n, r, k: (2 * di, d),
    "conv1d.weight": lambda d, di, n, r, k: (di, 1, k),
    "conv1d.bias": lambda d, di, n, r, k: (di,),
    "x_proj.weight": lambda d, di, n, r, k: (r + 2 * n, di),
    "dt_proj.weight": lambda d, di, n, r, k: (di, r),
    "dt_proj.bias": lambda d, di, n, r, k: (di,),
    "A_log": lambda d, di, n, r, k: (di, n),
    "D": lambda d, di, n, r, k: (di,),
    "out_proj.weight": lambda d, di, n, r, k: (d, di),
}


def stepwise_mamba(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The mixer as a loop over time, one token at a time, from the parameters alone:
    causal convolution over the last d_conv inputs, SiLU, input-dependent dt/B/C,
    h_t = exp(dt A) h_{t-1} + dt B u_t, y_t = C h_t + D u_t gated by SiLU(z_t)."""
    batch, length, _ = x.shape
    k = m.d_conv
    w_conv = m.conv1d.weight[:, 0, :]  # [d_inner, k]; tap k-1 multiplies the current input
    A = -torch.exp(m.A_log)
    h = x.new_zeros(batch, m.d_inner, m.d_state)
    history = [x.new_zeros(batch, m.d_inner)] * k  # the last k conv inputs, oldest first
    outs = []
    for t in range(length):
        xz = x[:, t] @ m.in_proj.weight.T
        u_in, z = xz[:, :m.d_inner], xz[:, m.d_inner:]
        history = history[1:] + [u_in]
        u = F.silu(sum(w_conv[:, j] * history[j] for j in range(k)) + m.conv1d.bias)
        proj = u @ m.x_proj.weight.T
        dt_low, B, C = proj[:, :m.dt_rank], proj[:, m.dt_rank:m.dt_rank + m.d_state], proj[:, m.dt_rank + m.d_state:]
        dt = F.softplus(dt_low @ m.dt_proj.weight.T + m.dt_proj.bias)  # [batch, d_inner]
        h = torch.exp(dt[:, :, None] * A) * h + (dt * u)[:, :, None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + m.D * u
        outs.append((y * F.silu(z)) @ m.out_proj.weight.T)
    return torch.stack(outs, dim=1)


def _mamba(d_model=8, d_state=4, d_conv=3, seed=0, dtype=torch.float64) -> Mamba:
    torch.manual_seed(seed)
    m = Mamba(d_model, d_state=d_state, d_conv=d_conv).to(dtype)
    with torch.no_grad():  # larger steps than the init's, so the decays matter over a short sequence
        m.dt_proj.bias.add_(1.0)
    return m


@pytest.mark.parametrize("chunk", [256, 5, 1])
def test_scan_equals_the_step_by_step_recurrence(monkeypatch, chunk):
    monkeypatch.setattr(mamba_mod, "SCAN_CHUNK", chunk)
    m = _mamba()
    x = torch.randn(3, 17, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), stepwise_mamba(m, x), rtol=1e-8, atol=1e-10)


def test_gradients_equal_those_of_the_step_by_step_recurrence(monkeypatch):
    monkeypatch.setattr(mamba_mod, "SCAN_CHUNK", 4)
    m = _mamba()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 11, 8, dtype=torch.float64)
    grads = []
    for fn in (m, lambda v: stepwise_mamba(m, v)):
        m.zero_grad()
        x.grad = None
        (fn(x) * target).sum().backward()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_selective_scan_passes_gradcheck():
    torch.manual_seed(1)
    b, d, n, L = 1, 3, 2, 5
    args = [torch.randn(b, d, L), torch.randn(b, d, L), -torch.rand(d, n) - 0.5, torch.randn(b, n, L),
            torch.randn(b, n, L), torch.randn(d), torch.randn(b, d, L), torch.randn(d)]
    args = [a.double().requires_grad_() for a in args]

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, chunk=2)

    assert torch.autograd.gradcheck(fn, args)


def test_output_at_t_does_not_depend_on_later_inputs():
    stack = MambaStack(16, n_layers=2, d_state=4, dropout=0.1).eval()
    x = torch.randn(2, 20, 16)
    y = stack(x)
    for t0 in (0, 7, 19):
        x2 = x.clone()
        x2[:, t0:] += torch.randn_like(x2[:, t0:])
        y2 = stack(x2)
        assert torch.equal(y2[:, :t0], y[:, :t0])
        assert not torch.allclose(y2[:, t0], y[:, t0])  # ...but on the input at t itself


def test_agrees_with_transformers_mamba_mixer_and_checkpoints_move_both_ways():
    import importlib.util

    if any(importlib.util.find_spec(p) is not None for p in ("mamba_ssm", "causal_conv1d")):
        # transformers (5.24) binds these packages' CUDA functions when it is imported and then
        # calls them for CPU tensors too: its mixer is no CPU oracle on such a machine
        pytest.skip("mamba-ssm / causal-conv1d installed: transformers' MambaMixer would call CUDA kernels on CPU")
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    ours = Mamba(16, d_state=8, d_conv=4)
    config = MambaConfig(hidden_size=16, state_size=8, conv_kernel=4, expand=2, use_bias=False, use_conv_bias=True)
    theirs = MambaMixer(config, layer_idx=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
        other = Mamba(16, d_state=8, d_conv=4)
        other.load_state_dict(theirs.state_dict(), strict=True)
        torch.testing.assert_close(other(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize("d_model,d_state,d_conv,expand", [(256, 16, 4, 2), (40, 8, 3, 1)])
def test_parameters_have_mamba_ssm_names_shapes_and_init(d_model, d_state, d_conv, expand):
    m = Mamba(d_model, d_state, d_conv, expand)
    di, r = expand * d_model, -(-d_model // 16)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        k: f(d_model, di, d_state, r, d_conv) for k, f in MAMBA_SSM_SHAPES.items()}
    assert torch.equal(m.A_log, torch.log(torch.arange(1, d_state + 1.0)).expand(di, d_state))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7


class _Forbidden(RuntimeError):
    pass


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """An importable mamba-ssm (and causal-conv1d) whose every kernel raises when called."""
    calls = []

    def kernel(name):
        def run(*args, **kwargs):
            calls.append(name)
            raise _Forbidden(f"{name} called with tensors on {[a.device for a in args if torch.is_tensor(a)]}")
        return run

    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.mamba_inner_fn = kernel("mamba_inner_fn")
    iface.selective_scan_fn = kernel("selective_scan_fn")
    conv = types.ModuleType("causal_conv1d")
    conv.causal_conv1d_fn = kernel("causal_conv1d_fn")
    for name, module in (("mamba_ssm", types.ModuleType("mamba_ssm")), ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
                         ("mamba_ssm.ops.selective_scan_interface", iface), ("causal_conv1d", conv)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_cpu_tensors_never_reach_mamba_ssm_kernels_even_when_installed(fake_mamba_ssm):
    stack = MambaStack(16, d_state=4)
    x = torch.randn(2, 9, 16, requires_grad=True)
    stack(x).sum().backward()  # forward and backward on CPU, with the (raising) kernels importable
    assert fake_mamba_ssm == []
    mixer = stack.layers[0].mixer
    assert mixer.kernel_path(torch.device("cpu")) is None
    # the simulated installation is live: a CUDA input would take the kernels
    kernels = mixer.kernel_path(torch.device("cuda", 0))
    assert kernels is not None and kernels.mamba_inner_fn.__name__ == "run"
    mixer.use_kernels = False
    assert mixer.kernel_path(torch.device("cuda")) is None


def test_kernel_branch_hands_mamba_ssm_its_layout():
    """The CUDA branch's plumbing, run on CPU with stand-ins that follow mamba-ssm's
    documented semantics (selective_scan_fn: [B,d,L] inputs; mamba_inner_fn: the
    whole mixer from its weights): both must reproduce the reference forward."""
    m = _mamba(d_model=16, d_state=4, d_conv=4, dtype=torch.float32)
    x = torch.randn(2, 13, 16)
    want = m(x)

    def inner_fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_w, out_b, A, B, C, D, delta_bias, delta_softplus):
        assert B is None and C is None and out_b is None
        length = xz.shape[-1]
        u, z = xz.chunk(2, dim=1)
        u = F.silu(F.conv1d(u, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=u.shape[1])[..., :length])
        proj = u.transpose(1, 2) @ x_proj_w.T
        r, n = dt_proj_w.shape[1], A.shape[1]
        delta = (proj[..., :r] @ dt_proj_w.T).transpose(1, 2)
        y = selective_scan(u, delta, A, proj[..., r:r + n].transpose(1, 2), proj[..., r + n:].transpose(1, 2), D,
                           z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
        return y.transpose(1, 2) @ out_w.T

    without_conv = types.SimpleNamespace(mamba_inner_fn=None, causal_conv1d_fn=None, selective_scan_fn=selective_scan)
    torch.testing.assert_close(m._forward_kernels(x, without_conv), want, rtol=1e-5, atol=1e-6)
    fused = types.SimpleNamespace(mamba_inner_fn=inner_fn, causal_conv1d_fn=object(), selective_scan_fn=None)
    torch.testing.assert_close(m._forward_kernels(x, fused), want, rtol=1e-5, atol=1e-6)


def test_stack_shapes_dropout_and_bad_arguments():
    stack = MambaStack(24, n_layers=3, d_state=8, d_conv=4, dropout=0.5)
    assert len(stack.layers) == 3
    x = torch.randn(2, 10, 24)
    stack.train()
    assert not torch.equal(stack(x), stack(x))  # dropout acts in training
    stack.eval()
    assert stack(x).shape == (2, 10, 24) and torch.equal(stack(x), stack(x))
    with pytest.raises(ValueError, match="expected input"):
        stack.layers[0].mixer(torch.randn(2, 10, 23))
    with pytest.raises(ValueError, match="n_layers"):
        MambaStack(24, n_layers=0)
    with pytest.raises(ValueError, match="d_state"):
        Mamba(24, d_state=0)
