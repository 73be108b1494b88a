"""Selective scan backends against the sequential reference: values and every input's gradient.

The Triton backend's tests are in test_selective_scan_triton.py (they need Triton's interpreter).
"""

from __future__ import annotations

import pytest
import torch

from pamm.ops import scan_orders
from pamm.ops.selective_scan import selective_scan, selective_scan_reference
from pamm.ops.selective_scan_chunked import selective_scan_chunked

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(b=2, d=8, N=4, L=13, groups=None, dtype=torch.float64, bias=True, skip=True, decay_scale=5.0,
                seed=0):
    """Fresh random inputs; A = -(0..decay_scale), delta around softplus^-1(0.5)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    bc_shape = (b, N, L) if groups is None else (b, groups, N, L)
    inputs = {
        "u": randn(b, d, L),
        "delta": randn(b, d, L) * 0.5,
        "A": -(torch.rand(d, N, generator=gen, dtype=torch.float64) * decay_scale).to(dtype),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(d) if skip else None,
        "delta_bias": randn(d) * 0.5 if bias else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}


def random_orders(K, L, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=gen) for _ in range(K)])


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def outputs_and_grads(fn, inputs, seed=2, **kwargs):
    """y and the gradients of <y, g> (g random, a channels-last view as a downstream layer would give) with respect
    to every input that is given."""
    y = fn(**inputs, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    b, d, L = y.shape
    g = torch.randn(b, L, d, generator=gen, dtype=torch.float64).to(y.dtype).transpose(1, 2)
    present = [n for n in NAMES if inputs[n] is not None]
    grads = torch.autograd.grad(y, [inputs[n] for n in present], g)
    return y, dict(zip(present, grads))


def assert_matches_reference(fn, inputs, tol, knobs=None, **kwargs):
    """fn(**inputs, **kwargs, **knobs) against the reference (which gets no knobs): y and every gradient."""
    y_ref, g_ref = outputs_and_grads(selective_scan_reference, inputs, **kwargs)
    y, g = outputs_and_grads(fn, inputs, **kwargs, **(knobs or {}))
    assert y.dtype == inputs["u"].dtype and y.shape == y_ref.shape
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) <= tol, f"y: {rel_err(y, y_ref):.2e}"
    for name, grad in g.items():
        assert torch.isfinite(grad).all(), name
        assert grad.shape == inputs[name].shape, name
        assert rel_err(grad, g_ref[name]) <= tol, f"d{name}: {rel_err(grad, g_ref[name]):.2e}"


# ---- chunked backend -------------------------------------------------------------------------------------------

CHUNKED_CASES = [  # (groups, softplus, bias, skip, K or "hilbert", L, lanes, steps)
    (None, True, True, True, None, 13, 1, 4),
    (None, False, False, False, None, 29, 4, 3),
    (2, True, True, True, 2, 21, 2, 4),
    (4, True, False, True, 4, 30, 3, 4),
    (2, False, True, False, 1, 17, 1, 64),
    (2, True, True, True, "hilbert", 20, 2, 3),
]


@pytest.mark.parametrize("groups,softplus,bias,skip,K,L,lanes,steps", CHUNKED_CASES)
def test_chunked_matches_reference_float64(groups, softplus, bias, skip, K, L, lanes, steps):
    inputs = make_inputs(L=L, groups=groups, bias=bias, skip=skip, seed=L)
    orders = scan_orders(4, 5) if K == "hilbert" else (None if K is None else random_orders(K, L, seed=L))
    assert_matches_reference(selective_scan_chunked, inputs, 1e-10, delta_softplus=softplus, orders=orders,
                             knobs=dict(lanes=lanes, steps=steps))


def test_chunked_matches_reference_float32_default_blocking():
    inputs = make_inputs(b=2, d=16, N=8, L=150, groups=2, dtype=torch.float32)
    assert_matches_reference(selective_scan_chunked, inputs, 1e-5, delta_softplus=True,
                             orders=random_orders(4, 150))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_large_decays_finite_and_exact(dtype, tol):
    """|dt * A| up to 50 per step and lanes of 32 steps: an exp(-cumsum) factorisation would overflow here."""
    inputs = make_inputs(d=8, N=4, L=64, dtype=dtype, decay_scale=50.0, bias=False)
    with torch.no_grad():
        inputs["delta"].uniform_(0.2, 1.0)  # dt in [0.2, 1]: |dt * A| up to 50, per-lane sums up to ~1600
    assert_matches_reference(selective_scan_chunked, inputs, tol, orders=random_orders(2, 64),
                             knobs=dict(lanes=2, steps=32))


def test_chunked_orders_with_repeated_positions():
    """The reference's semantics hold for any index rows (gather, then scatter-add): the chunked backend follows."""
    inputs = make_inputs(L=10)
    orders = torch.tensor([[0, 1, 1, 3, 4, 5, 6, 9, 9, 2], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert_matches_reference(selective_scan_chunked, inputs, 1e-10, delta_softplus=True, orders=orders)


def test_chunked_saves_no_full_state_tensor():
    """Autograd keeps the inputs and one state per segment and direction only: nothing of size (b, d, L, N)."""
    b, d, N, L, K, lanes, steps = 2, 8, 4, 128, 4, 2, 16
    inputs = make_inputs(b=b, d=d, N=N, L=L, dtype=torch.float32)
    orders = random_orders(K, L)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_chunked(**inputs, delta_softplus=True, orders=orders, lanes=lanes, steps=steps)
    segment_states = K * (L // (lanes * steps)) * b * d * N
    assert sum(saved) == sum(v.numel() for v in inputs.values()) + orders.numel() + segment_states
    assert max(saved) < b * d * L * N


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_low_precision_inputs(dtype):
    inputs = make_inputs(d=8, N=4, L=20, dtype=dtype)
    y = selective_scan_chunked(**inputs, delta_softplus=True, orders=random_orders(2, 20))
    assert y.dtype == dtype
    wide = {k: (v.detach().float() if v is not None else None) for k, v in inputs.items()}
    y_ref = selective_scan_reference(**wide, delta_softplus=True, orders=random_orders(2, 20))
    assert rel_err(y, y_ref) < 1e-2
    y.float().sum().backward()
    assert all(inputs[n].grad.dtype == dtype and torch.isfinite(inputs[n].grad).all() for n in NAMES)


def test_chunked_channels_last_views():
    """The model's layout: u, delta views of (b, L, d) memory; B, C views of (b, L, g, N) memory."""
    b, g, N, L, d = 2, 2, 4, 15, 8
    inputs = make_inputs(b=b, d=d, N=N, L=L, groups=g, dtype=torch.float64)
    views = dict(inputs)
    for name in ("u", "delta"):
        views[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        assert views[name].stride(1) == 1
    for name in ("B", "C"):
        views[name] = inputs[name].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1).requires_grad_()
    assert_matches_reference(selective_scan_chunked, views, 1e-10, delta_softplus=True, orders=scan_orders(3, 5))


# ---- dispatcher ------------------------------------------------------------------------------------------------

def test_auto_on_cpu_is_the_numba_kernel_when_installed_else_chunked(monkeypatch):
    import pamm.ops.selective_scan_cpu as cpu_module
    from pamm.ops.selective_scan_cpu import selective_scan_cpu

    inputs = make_inputs(L=21)
    orders = random_orders(2, 21)
    y_auto = selective_scan(**inputs, delta_softplus=True, orders=orders, backend="auto")
    expected = selective_scan_cpu if cpu_module.numba_available() else selective_scan_chunked
    assert torch.equal(y_auto, expected(**inputs, delta_softplus=True, orders=orders))
    monkeypatch.setattr(cpu_module, "numba_available", lambda: False)
    y_auto = selective_scan(**inputs, delta_softplus=True, orders=orders, backend="auto")
    assert torch.equal(y_auto, selective_scan_chunked(**inputs, delta_softplus=True, orders=orders))


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**make_inputs(), backend="cuda-magic")
