"""The Numba CPU selective scan (backend "cpu") against the float64 oracle: values and every input's gradient.

The kernels compile on first use (two signatures: float32 and float64; about 10 s each on a CI core, then cached
on disk), so the cases use small shapes and share them.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

from pamm.ops import scan_orders
from pamm.ops.selective_scan_cpu import selective_scan_cpu
from scan_oracle import (
    NAMES,
    assert_matches_oracle,
    channels_last_views,
    make_inputs,
    random_orders,
    rel_err,
    sequential_scan,
)

cpu_module = importlib.import_module("pamm.ops.selective_scan_cpu")  # the module (pamm.ops may export the function)

CASES = [  # (groups, softplus, bias, skip, K or "hilbert", L, block width or None for the default)
    (None, True, True, True, None, 13, None),
    (None, False, False, False, None, 29, 3),
    (2, True, True, True, 2, 21, None),
    (4, True, False, True, 4, 30, 8),
    (2, False, True, False, 1, 17, 5),
    (2, True, True, True, "hilbert", 20, None),
]


def _orders(K, L, seed):
    return scan_orders(4, 5) if K == "hilbert" else (None if K is None else random_orders(K, L, seed=seed))


@pytest.fixture
def width(monkeypatch):
    """Force the kernels' block width (channels side by side) to exercise several blocks and a partial last one."""

    def force(w):
        if w is not None:
            monkeypatch.setattr(cpu_module, "block_width", lambda channels, length: min(w, channels))

    return force


@pytest.mark.parametrize("groups,softplus,bias,skip,K,L,w", CASES)
def test_matches_reference_float64(groups, softplus, bias, skip, K, L, w, width):
    width(w)
    inputs = make_inputs(d=24, L=L, groups=groups, bias=bias, skip=skip, seed=L)
    assert_matches_oracle(selective_scan_cpu, inputs, 1e-10, delta_softplus=softplus, orders=_orders(K, L, L))


@pytest.mark.parametrize("groups,K,L", [(None, None, 31), (4, "hilbert", 20)])
def test_matches_reference_float32(groups, K, L):
    inputs = make_inputs(b=2, d=32, N=8, L=L, groups=groups, dtype=torch.float32, seed=L)
    assert_matches_oracle(selective_scan_cpu, inputs, 1e-5, delta_softplus=True, orders=_orders(K, L, L))


def test_shared_B_grouped_C():
    """One of B, C shared by all channels (b, N, L), the other grouped (b, g, N, L): as the reference does."""
    inputs = make_inputs(d=12, L=14, groups=3)
    inputs["B"] = make_inputs(d=12, L=14, seed=5)["B"]
    assert_matches_oracle(selective_scan_cpu, inputs, 1e-10, delta_softplus=True, orders=random_orders(2, 14))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_large_decays_finite_and_exact(dtype, tol):
    """|dt * A| up to 50 per step, and 2000 at the extreme positions (decays that underflow to 0)."""
    inputs = make_inputs(d=8, N=4, L=40, dtype=dtype, decay_scale=50.0, bias=False)
    with torch.no_grad():
        inputs["delta"].uniform_(0.2, 1.0)
        inputs["delta"][:, :, ::7] = 40.0
    assert_matches_oracle(selective_scan_cpu, inputs, tol, orders=random_orders(2, 40))


def test_softplus_threshold_and_extremes():
    """delta + bias around torch's softplus threshold (20) and far below it (dt ~ 1e-30)."""
    inputs = make_inputs(d=8, L=16)
    with torch.no_grad():
        inputs["delta"][:, :4] = torch.linspace(15.0, 25.0, 16)
        inputs["delta"][:, 4:] = torch.linspace(-80.0, -10.0, 16)
    assert_matches_oracle(selective_scan_cpu, inputs, 1e-10, delta_softplus=True, orders=random_orders(2, 16))


def test_orders_with_repeated_positions_and_int32():
    """Any index rows, as in the reference (gather, then scatter-add); int32 orders."""
    inputs = make_inputs(L=10)
    orders = torch.tensor([[0, 1, 1, 3, 4, 5, 6, 9, 9, 2], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]], dtype=torch.int32)
    assert_matches_oracle(selective_scan_cpu, inputs, 1e-10, delta_softplus=True, orders=orders)


def test_strided_inputs():
    """The model's layouts: u, delta views of (b, L, d) memory; B, C views of (b, L, g, N) memory; A, orders
    transposed views."""
    inputs = make_inputs(b=2, d=8, N=4, L=15, groups=2)
    views = channels_last_views(inputs)
    assert views["u"].stride(1) == 1
    views["A"] = inputs["A"].detach().t().contiguous().t().requires_grad_()
    orders = scan_orders(3, 5).t().contiguous().t()
    assert not orders.is_contiguous()
    assert_matches_oracle(selective_scan_cpu, views, 1e-10, delta_softplus=True, orders=orders)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    inputs = make_inputs(d=8, N=4, L=20, dtype=dtype)
    orders = random_orders(2, 20)
    y = selective_scan_cpu(**inputs, delta_softplus=True, orders=orders)
    assert y.dtype == dtype
    wide = {k: (v.detach().double() if v is not None else None) for k, v in inputs.items()}
    y_ref = sequential_scan(**wide, delta_softplus=True, orders=orders)
    assert rel_err(y, y_ref) < 1e-2
    y.float().sum().backward()
    assert all(inputs[n].grad.dtype == dtype and torch.isfinite(inputs[n].grad).all() for n in NAMES)


def test_threads_give_identical_results():
    """Work items are split over threads, each item's sums in a fixed order: results don't depend on the count."""
    inputs = make_inputs(b=3, d=16, L=12, groups=2, dtype=torch.float32)
    orders = random_orders(2, 12)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = selective_scan_cpu(**inputs, delta_softplus=True, orders=orders)
            results.append([y, *torch.autograd.grad(y, [inputs[n] for n in NAMES], torch.ones_like(y))])
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_leaves_pytorch_thread_count_alone():
    """numba's "omp" threading layer shares OpenMP's thread count with PyTorch; a scan must not change PyTorch's
    (it did: every later PyTorch op then ran on numba's count, and bilinear resizes in the data pipeline rounded
    differently after a resume)."""
    import numba

    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            inputs = make_inputs(b=2, d=8, L=10, groups=2, dtype=torch.float32)
            y = selective_scan_cpu(**inputs, orders=random_orders(2, 10))
            y.sum().backward()
            assert torch.get_num_threads() == threads, (numba.threading_layer(), numba.get_num_threads())
    finally:
        torch.set_num_threads(previous)


def test_no_grad_inputs_and_no_warnings():
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(L=9).items()}
    inputs["u"].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = selective_scan_cpu(**inputs, delta_softplus=True)
        (g_u,) = torch.autograd.grad(y.sum(), inputs["u"])
    y_ref = sequential_scan(**inputs, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-10 and g_u.shape == inputs["u"].shape


def test_rejects_bad_orders_and_devices():
    inputs = make_inputs(L=6)
    with pytest.raises(ValueError, match="orders"):
        selective_scan_cpu(**inputs, orders=torch.tensor([[0, 1, 2, 3, 4, 6]]))
    with pytest.raises(ValueError, match="orders"):
        selective_scan_cpu(**inputs, orders=torch.tensor([[0, 1, 2, 3, 4, -1]]))
    with pytest.raises(ValueError):
        selective_scan_cpu(**{**inputs, "B": inputs["B"][:, :3]})
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU"):
            selective_scan_cpu(**{k: v.cuda() if v is not None else None for k, v in inputs.items()})


def test_vectorised_math_against_torch():
    """The kernels' exp, log1p, softplus and its derivative: within a few ulp of torch's, special values too."""
    specials = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        19.999,
        20.0,
        20.001,
        -87.5,
        -103.0,
        -745.0,
        88.5,
        709.0,
        np.inf,
        -np.inf,
        np.nan,
    ]
    for dtype, eps in ((torch.float32, 2.0**-23), (torch.float64, 2.0**-52)):
        x = torch.cat(
            [torch.linspace(-120.0, 100.0, 20001, dtype=torch.float64), torch.tensor(specials, dtype=torch.float64)]
        ).to(dtype)
        w = torch.cat([x.abs()[torch.isfinite(x)], torch.logspace(-40, 8, 2001, dtype=torch.float64).to(dtype)])
        z = x.double().clone().requires_grad_()
        torch.nn.functional.softplus(z).sum().backward()
        checks = {
            0: (x, torch.exp(x.double())),
            1: (w, torch.log1p(w.double())),
            2: (x, torch.nn.functional.softplus(x.double())),
            3: (x, z.grad),
        }
        for kind, (arg, exact) in checks.items():
            got = torch.from_numpy(cpu_module._math_check(arg.numpy(), kind)).double()
            want = exact.to(dtype).double()  # what the format can hold: inf, subnormal, 0 where exact is beyond
            normal = torch.isfinite(want) & (want.abs() >= torch.finfo(dtype).tiny)
            ulps = ((got - exact).abs() / (exact.abs() * eps))[normal]
            assert ulps.max() < 4, (dtype, kind, ulps.max().item())
            rest = ~normal
            assert torch.equal(torch.isnan(got[rest]), torch.isnan(want[rest])), (dtype, kind)
            close = (got[rest] == want[rest]) | ((got[rest] - want[rest]).abs() <= 2 * torch.finfo(dtype).tiny)
            assert (close | torch.isnan(want[rest])).all(), (dtype, kind)


def test_uncacheable_falls_back_with_one_warning(monkeypatch):
    """Without a writable cache directory numba refuses cache=True; the kernels are then compiled per process,
    with one warning."""
    from numba.core import caching

    cache_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.60
    monkeypatch.setattr(cache_impl, "_locator_classes", [])
    monkeypatch.setattr(cpu_module, "_cache_warned", [])
    with pytest.warns(RuntimeWarning, match="cache") as record:
        square = cpu_module._jit()(lambda x: x * x)
        cube = cpu_module._jit()(lambda x: x * x * x)
    assert len(record) == 1 and square(3.0) == 9.0 and cube(2.0) == 8.0
