"""The two-layer perceptron every attention block and prompt generator uses."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class Mlp(nn.Sequential):
    """``Linear(in, hidden) -> act -> [Dropout] -> Linear(hidden, out)``.

    A ``nn.Sequential`` so that the state-dict keys are the positional ones the
    methods had when they built this inline (``0.weight`` for the first linear,
    ``2.`` or ``3.`` for the second), and checkpoints written before the move
    still load. ``dropout=None`` leaves the Dropout module out altogether (the
    second linear is then ``2.``); a float, even 0, keeps it (``3.``).
    ``act`` is a factory called once, e.g. ``nn.GELU`` or
    ``functools.partial(nn.ReLU, inplace=True)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None,
                 act: Callable[[], nn.Module] = nn.GELU, dropout: float | None = None) -> None:
        if in_dim < 1 or hidden_dim < 1 or (out_dim is not None and out_dim < 1):
            raise ValueError(f"Mlp: widths must be >= 1, got in_dim={in_dim}, hidden_dim={hidden_dim}, "
                             f"out_dim={out_dim}")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"Mlp: dropout must be in [0, 1) or None, got {dropout}")
        blocks: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), act()]
        if dropout is not None:
            blocks.append(nn.Dropout(dropout))
        blocks.append(nn.Linear(hidden_dim, in_dim if out_dim is None else out_dim))
        super().__init__(*blocks)

    @property
    def fc1(self) -> nn.Linear:
        return self[0]

    @property
    def fc2(self) -> nn.Linear:
        return self[-1]


__all__ = ["Mlp"]
