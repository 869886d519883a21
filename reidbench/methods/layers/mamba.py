"""Mamba-1 selective state-space mixer, with mamba-ssm's CUDA kernels on GPU and an
exact pure-PyTorch scan everywhere else (BDAM's fusion, Sec. III-D).

``Mamba`` has mamba-ssm's ``Mamba`` parameters under the same names and shapes
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and
the same initialisation, so a ``state_dict`` moves between this module, mamba-ssm's
and transformers' ``MambaMixer`` unchanged, and between the two paths below.

Which path runs is decided per call, from the input's device (``kernel_path``):

* CUDA tensor, ``use_kernels`` set (the default) and mamba-ssm importable (the
  ``gpu`` extra): mamba-ssm's fused ``mamba_inner_fn`` when causal-conv1d is
  installed too, else PyTorch's depthwise convolution and mamba-ssm's
  ``selective_scan_fn``, as mamba-ssm's own module does.
* anything else (CPU, or CUDA without mamba-ssm): ``selective_scan``, a
  sequential scan in PyTorch, O(L) in time and in memory.

mamba-ssm is imported only inside the CUDA branch, so a CPU tensor never reaches
a CUDA kernel, and merely having the package installed changes nothing on CPU
(transformers, by contrast, chooses its Mamba kernels when it is imported, which
is why this module does not build on its ``MambaMixer``; the tests use that
mixer's slow path as an independent oracle).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

# Time steps per chunk of the CPU scan: the discretised decays and inputs ([B, T, d_inner,
# d_state] each) are materialised for one chunk at a time, so without autograd the scan's
# extra memory is O(T * d_inner * d_state) whatever the length.
SCAN_CHUNK = 64


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   chunk: int = SCAN_CHUNK) -> torch.Tensor:
    """Mamba-1's selective scan in PyTorch, with mamba-ssm's ``selective_scan_fn`` layout.

    ``u, delta, z [B, d, L]``, ``A [d, n]``, ``B, C [B, n, L]`` (input-dependent),
    ``D, delta_bias [d]``; returns ``y [B, d, L]`` in ``u``'s dtype::

        delta_t = softplus(delta_t + delta_bias)
        h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t          (h_0 = 0, h_t [B, d, n])
        y_t = (h_t C_t) + D u_t, times silu(z_t)

    The recurrence runs one time step after another (one fused multiply-add per
    step), computed in float32 at least (float64 inputs stay float64): time is O(L) and so is
    memory, exact up to float rounding. A parallel (log-space cumulative-sum) scan
    would need fewer Python steps but overflows ``exp(-cumsum(delta A))`` once the
    decays are strong, which training reaches; the sequential form cannot.
    ``chunk`` time steps' decays and inputs are materialised at a time (see
    ``SCAN_CHUNK``); the result does not depend on it.
    """
    dtype = u.dtype
    batch, d, length = u.shape
    if A.shape[0] != d or B.shape != C.shape or B.shape[0] != batch or B.shape[2] != length:
        raise ValueError(f"selective_scan: shapes u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)} do not fit u [B,d,L], A [d,n], B and C [B,n,L]")
    work = torch.promote_types(dtype, torch.float32)  # never below float32, float64 stays
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # time-major [B, L, ...] layout, so that each step reads contiguous slices
    dt_u = (delta * u).transpose(1, 2)
    delta, B, C = delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)
    h = u.new_zeros(batch, d, A.shape[1])
    outs = []
    with torch.autocast(u.device.type, enabled=False):  # autocast would run the readout bmm in 16 bits
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            decay = torch.exp(delta[:, start:stop, :, None] * A)  # [B, T, d, n]
            drive = dt_u[:, start:stop, :, None] * B[:, start:stop, None, :]  # [B, T, d, n]
            readout = C[:, start:stop, :, None]  # [B, T, n, 1]
            # unbind, not indexing: one backward node per chunk; a select per step would
            # scatter each step's gradient into a zeroed chunk-sized tensor (O(T) per step)
            for drive_t, decay_t, readout_t in zip(drive.unbind(1), decay.unbind(1), readout.unbind(1)):
                h = torch.addcmul(drive_t, decay_t, h)
                outs.append(torch.bmm(h, readout_t))
    y = torch.cat(outs, dim=2)
    if D is not None:
        y = y + u * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


def _import_kernels() -> SimpleNamespace | None:
    """mamba-ssm's (and causal-conv1d's) CUDA entry points, or None when not installed.
    Imported at call time, and only for CUDA inputs (see ``Mamba.kernel_path``)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except ImportError:
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        causal_conv1d_fn = None
    return SimpleNamespace(mamba_inner_fn=mamba_inner_fn, selective_scan_fn=selective_scan_fn,
                           causal_conv1d_fn=causal_conv1d_fn)


class Mamba(nn.Module):
    """One Mamba-1 selective-SSM mixer: ``[B, L, d_model] -> [B, L, d_model]``, causal
    (the output at position t depends on inputs at positions <= t only).

    ``d_inner = expand * d_model``; ``dt_rank = ceil(d_model / 16)``; no bias on the
    input and output projections; a depthwise causal convolution of width
    ``d_conv`` with bias; S4D-real ``A`` (``A_log = log(1..d_state)`` per channel);
    ``D = 1``; the ``dt`` projection's bias initialised so that ``softplus(bias)``
    is log-uniform in [1e-3, 0.1] (mamba-ssm's defaults, so the two modules start
    from the same distribution). ``A_log`` and ``D`` carry ``_no_weight_decay``
    as in mamba-ssm.

    ``use_kernels=False`` forces the PyTorch scan on CUDA too (for comparisons).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, *,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 use_kernels: bool = True) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if int(value) != value or value < 1:
                raise ValueError(f"Mamba: {name} must be a positive integer, got {value!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.use_kernels = use_kernels

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        std = self.dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True

    def kernel_path(self, device: torch.device) -> SimpleNamespace | None:
        """The CUDA kernels a call on ``device`` would use, or None for the PyTorch scan.
        Never imports mamba-ssm for a non-CUDA device."""
        if torch.device(device).type != "cuda" or not self.use_kernels:
            return None
        return _import_kernels()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: expected input [B, L, {self.d_model}], got {tuple(x.shape)}")
        kernels = self.kernel_path(x.device)
        if kernels is not None:
            return self._forward_kernels(x, kernels)
        return self._forward_reference(x)

    def _ssm_inputs(self, x: torch.Tensor):
        """Conv + SiLU on the x half, then the input-dependent dt, B, C (layout [B, *, L])."""
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # [B, 2*d_inner, L]
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # the bias is added (in float32) inside the scan
        return u, z, dt, B.transpose(1, 2), C.transpose(1, 2)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        u, z, dt, B, C = self._ssm_inputs(x)
        y = selective_scan(u, dt, -torch.exp(self.A_log.float()), B, C, self.D, z=z,
                           delta_bias=self.dt_proj.bias, delta_softplus=True, chunk=SCAN_CHUNK)
        return self.out_proj(y.transpose(1, 2))

    def _forward_kernels(self, x: torch.Tensor, kernels: SimpleNamespace) -> torch.Tensor:
        batch, length, _ = x.shape
        # [d, B*L] -> [B, d, L] with L contiguous: the layout mamba-ssm's own module hands its kernels
        xz = (self.in_proj.weight @ x.reshape(batch * length, -1).T).reshape(-1, batch, length).transpose(0, 1)
        A = -torch.exp(self.A_log.float())
        if kernels.causal_conv1d_fn is not None:
            return kernels.mamba_inner_fn(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                          self.dt_proj.weight, self.out_proj.weight, None, A, None, None,
                                          self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])
        x_dbl = self.x_proj(u.transpose(1, 2).reshape(batch * length, -1))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.T).reshape(-1, batch, length).transpose(0, 1)
        B = B.reshape(batch, length, -1).transpose(1, 2).contiguous()
        C = C.reshape(batch, length, -1).transpose(1, 2).contiguous()
        y = kernels.selective_scan_fn(u, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                                      delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """``x + Dropout(Mamba(LayerNorm(x)))`` (pre-norm residual; mamba-ssm's ``Block``
    names its parts ``norm`` and ``mixer`` too)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.mixer(self.norm(x)))


class MambaStack(nn.Module):
    """``n_layers`` residual pre-norm Mamba layers, then a final LayerNorm:
    ``[B, L, d_model] -> [B, L, d_model]`` (BDAM: 2 layers, d_model 256, state 16,
    conv 4, dropout 0.1; ``f^(l+1) = Mamba(f^(l)) + f^(l)``).

    Decisions where the paper is silent: each layer normalises its input
    (LayerNorm) before the mixer, dropout acts on the mixer's output before the
    residual sum, and a final LayerNorm (``norm_f``) closes the stack, since a
    pre-norm stack leaves its residual stream unnormalised. The stack is causal
    along L, like every Mamba: put padding at the end of a sequence, and the
    outputs at real positions do not depend on it (pool them with your own mask).
    """

    def __init__(self, d_model: int, n_layers: int = 2, d_state: int = 16, d_conv: int = 4,
                 dropout: float = 0.1, expand: int = 2) -> None:
        super().__init__()
        if int(n_layers) != n_layers or n_layers < 1:
            raise ValueError(f"MambaStack: n_layers must be a positive integer, got {n_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MambaStack: dropout must be in [0, 1), got {dropout!r}")
        self.layers = nn.ModuleList(MambaBlock(d_model, d_state, d_conv, expand, dropout) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)


__all__ = ["Mamba", "MambaBlock", "MambaStack", "selective_scan"]
