"""Reusable layers: HSIC against an independent computation, the cross-attention block, the MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reidbench.methods.layers import CrossAttentionBlock, Mlp, hsic

# ---------------------------------------------------------------- HSIC


def hsic_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. 2 of BDAM written out: tr(K H L H) / (N-1)^2 with K = X X^T, L = Y Y^T."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h) / (n - 1) ** 2)


def test_hsic_equals_the_trace_formula_of_eq_2():
    rng = np.random.default_rng(0)
    for n, dx, dy in ((2, 1, 1), (7, 3, 5), (16, 12, 4)):
        x = rng.normal(size=(n, dx))
        y = x[:, :1] * rng.normal(size=(1, dy)) + 0.5 * rng.normal(size=(n, dy))  # dependent on x
        got = hsic(torch.tensor(x), torch.tensor(y)).item()
        assert got == pytest.approx(hsic_numpy(x, y), rel=1e-5, abs=1e-7)


def test_hsic_is_zero_for_a_constant_feature_and_ignores_a_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 4, generator=g), torch.randn(10, 6, generator=g)
    constant = torch.randn(1, 6, generator=g).expand(10, -1)
    assert hsic(x, constant).item() == pytest.approx(0.0, abs=1e-6)
    shifted = hsic(x + torch.randn(1, 4, generator=g) * 5, y - 3.0)
    assert shifted.item() == pytest.approx(hsic(x, y).item(), rel=1e-4)


def test_hsic_scales_quadratically_in_each_argument_and_is_symmetric():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 5, generator=g), torch.randn(12, 3, generator=g)
    base = hsic(x, y).item()
    assert hsic(2.0 * x, y).item() == pytest.approx(4.0 * base, rel=1e-5)
    assert hsic(2.0 * x, 0.5 * y).item() == pytest.approx(base, rel=1e-5)
    assert hsic(y, x).item() == pytest.approx(base, rel=1e-5)


def test_hsic_separates_dependent_from_independent_features():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 8, generator=g)
    independent = hsic(x, torch.randn(256, 8, generator=g)).item()
    dependent = hsic(x, x @ torch.randn(8, 8, generator=g)).item()
    assert dependent > 20 * independent > 0


def test_hsic_trains_features_apart_and_refuses_bad_shapes():
    x = torch.randn(8, 4, requires_grad=True)
    hsic(x, x.detach() * 2).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same samples"):
        hsic(torch.randn(8, 4), torch.randn(7, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        hsic(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\[N,D\]"):
        hsic(torch.randn(2, 3, 4), torch.randn(2, 4))


# ---------------------------------------------------------------- cross-attention


def test_cross_attention_shapes_with_shared_and_batched_queries():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, heads=4, kv_dim=24).eval()
    tokens = torch.randn(3, 7, 24)
    shared = torch.randn(5, 16)
    out = block(shared, tokens)
    assert out.shape == (3, 5, 16)
    assert torch.allclose(out, block(shared.expand(3, -1, -1), tokens), atol=1e-6)
    attn, weights = block.attend(shared, tokens, need_weights=True)
    assert attn.shape == (3, 5, 16) and weights.shape == (3, 5, 7)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 5), atol=1e-5)
    with pytest.raises(ValueError, match="kv_dim=24"):
        block(shared, torch.randn(3, 7, 16))
    with pytest.raises(ValueError, match="batch size 3"):
        block(torch.randn(2, 5, 16), tokens)


def test_a_masked_key_has_no_influence():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, heads=2).eval()
    queries, tokens = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True  # sample 0 has two padding tokens
    out = block(queries, tokens, key_padding_mask=mask)
    changed = tokens.clone()
    changed[0, 4:] = torch.randn(2, 16) * 100
    assert torch.allclose(block(queries, changed, key_padding_mask=mask), out, atol=1e-5)
    # the same keys without the mask do change the output, and the unmasked sample is the same as unpadded
    assert not torch.allclose(block(queries, changed), out, atol=1e-3)
    alone = block(queries[:1], tokens[:1, :4])
    assert torch.allclose(out[:1], alone, atol=1e-5)
    with pytest.raises(ValueError, match="True = padding"):
        block(queries, tokens, key_padding_mask=mask.float())


def test_a_sample_with_only_padding_keeps_its_queries_finite():
    torch.manual_seed(0)
    block = CrossAttentionBlock(8, heads=2, mlp_ratio=0).eval()
    queries, tokens = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1] = True
    out = block(queries, tokens, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], queries[1])  # no key, no FFN: the residual alone
    assert not torch.allclose(out[0], queries[0])


def test_zero_init_starts_as_the_identity_and_still_trains():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, heads=4, kv_dim=8, zero_init=True)
    queries, tokens = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    out = block(queries, tokens)
    assert torch.equal(out, queries)
    out.pow(2).sum().backward()
    assert block.attn.out_proj.weight.grad.abs().sum() > 0 and block.ffn.fc2.weight.grad.abs().sum() > 0
    assert not torch.equal(CrossAttentionBlock(16, heads=4, kv_dim=8)(queries, tokens), queries)


def test_ffn_norm_switch_and_residual_structure():
    torch.manual_seed(0)
    block = CrossAttentionBlock(8, heads=2, ffn_norm=False).eval()
    queries, tokens = torch.randn(1, 2, 8), torch.randn(1, 3, 8)
    q_c = queries + block.attend(queries, tokens)[0]  # Eq. 4
    assert torch.allclose(block(queries, tokens), q_c + block.ffn(q_c), atol=1e-6)  # Eq. 5
    normed = CrossAttentionBlock(8, heads=2).eval()
    normed.load_state_dict(block.state_dict(), strict=False)
    q_c = queries + normed.attend(queries, tokens)[0]
    assert torch.allclose(normed(queries, tokens), q_c + normed.ffn(normed.norm_ffn(q_c)), atol=1e-6)
    with pytest.raises(ValueError, match="multiple of heads"):
        CrossAttentionBlock(10, heads=4)


# ---------------------------------------------------------------- MLP


def test_mlp_layout_and_state_dict_keys():
    with_dropout = Mlp(4, 8, 2, act=nn.GELU, dropout=0.0)
    without = Mlp(4, 8)
    assert [k for k in with_dropout.state_dict()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert [k for k in without.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert without(torch.randn(3, 4)).shape == (3, 4) and with_dropout(torch.randn(3, 4)).shape == (3, 2)
    assert with_dropout.fc2 is with_dropout[3]
    with pytest.raises(ValueError, match="dropout"):
        Mlp(4, 8, dropout=1.0)


def test_every_layer_module_is_re_exported_by_the_package():
    import importlib
    import pkgutil

    import reidbench.methods.layers as layers

    for info in pkgutil.iter_modules(layers.__path__):
        module = importlib.import_module(f"{layers.__name__}.{info.name}")
        for public in module.__all__:
            assert getattr(layers, public) is getattr(module, public) and public in layers.__all__
