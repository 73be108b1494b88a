"""The pure-PyTorch reference backend against the float64 oracle (values and every input's gradient), its memory and
export properties, and the ``selective_scan`` dispatcher.

The Numba backend's tests are in test_selective_scan_cpu.py, the Triton backend's in test_selective_scan_triton.py
(Triton's interpreter) and test_selective_scan_gpu.py (compiled, CUDA only).
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from pamm.ops import SCAN_BACKENDS, resolve_scan_backend, scan_orders, selective_scan, selective_scan_reference
from scan_oracle import (
    NAMES,
    assert_matches_oracle,
    channels_last_views,
    make_inputs,
    random_orders,
    rel_err,
    sequential_scan,
)

reference_module = importlib.import_module("pamm.ops.selective_scan_reference")  # pamm.ops exports the function

# ---- reference backend -----------------------------------------------------------------------------------------

CASES = [  # (groups, softplus, bias, skip, K or "hilbert", L, segment budget in elements or None for the default)
    (None, True, True, True, None, 13, None),
    (None, False, False, False, None, 29, 1),  # one chunk per segment: 4 segments, the state carried across
    (2, True, True, True, 2, 21, 64),
    (4, True, False, True, 4, 30, None),
    (2, False, True, False, 1, 17, 1),
    (2, True, True, True, "hilbert", 20, 256),
]


@pytest.mark.parametrize("groups,softplus,bias,skip,K,L,budget", CASES)
def test_reference_matches_oracle_float64(groups, softplus, bias, skip, K, L, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(reference_module, "SEGMENT_ELEMENTS", budget)
    inputs = make_inputs(L=L, groups=groups, bias=bias, skip=skip, seed=L)
    orders = scan_orders(4, 5) if K == "hilbert" else (None if K is None else random_orders(K, L, seed=L))
    assert_matches_oracle(selective_scan_reference, inputs, 1e-10, delta_softplus=softplus, orders=orders)


def test_reference_matches_oracle_float32():
    inputs = make_inputs(b=2, d=16, N=8, L=150, groups=2, dtype=torch.float32)
    assert_matches_oracle(selective_scan_reference, inputs, 1e-5, delta_softplus=True, orders=random_orders(4, 150))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_reference_large_decays_finite_and_exact(dtype, tol):
    """|dt * A| up to 50 per step, 2000 at some positions (decays that underflow to 0), chunks of 8 and segments of
    several chunks: an exp(-cumsum) factorisation would overflow here."""
    inputs = make_inputs(d=8, N=4, L=64, dtype=dtype, decay_scale=50.0, bias=False)
    with torch.no_grad():
        inputs["delta"].uniform_(0.2, 1.0)
        inputs["delta"][:, :, ::7] = 40.0
    assert_matches_oracle(selective_scan_reference, inputs, tol, orders=random_orders(2, 64))


def test_reference_orders_with_repeated_positions():
    """Any index rows: gather, scan, scatter-add (the definition), not only permutations."""
    inputs = make_inputs(L=10)
    orders = torch.tensor([[0, 1, 1, 3, 4, 5, 6, 9, 9, 2], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert_matches_oracle(selective_scan_reference, inputs, 1e-10, delta_softplus=True, orders=orders)


def test_reference_channels_last_views_and_shared_B():
    """The model's layout (u, delta views of (b, L, d) memory; B, C views of (b, L, g, N) memory), and B shared
    by all channels beside a grouped C."""
    inputs = make_inputs(b=2, d=8, N=4, L=15, groups=2)
    views = channels_last_views(inputs)
    assert views["u"].stride(1) == 1 and views["B"].stride(2) == 1
    assert_matches_oracle(selective_scan_reference, views, 1e-10, delta_softplus=True, orders=scan_orders(3, 5))
    views["B"] = make_inputs(b=2, d=8, N=4, L=15, seed=9)["B"]
    assert_matches_oracle(selective_scan_reference, views, 1e-10, delta_softplus=True, orders=scan_orders(3, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision_inputs(dtype):
    inputs = make_inputs(d=8, N=4, L=20, dtype=dtype)
    orders = random_orders(2, 20)
    y = selective_scan_reference(**inputs, delta_softplus=True, orders=orders)
    assert y.dtype == dtype
    wide = {k: (v.detach().double() if v is not None else None) for k, v in inputs.items()}
    assert rel_err(y, sequential_scan(**wide, delta_softplus=True, orders=orders)) < 1e-2
    y.float().sum().backward()
    assert all(inputs[n].grad.dtype == dtype and torch.isfinite(inputs[n].grad).all() for n in NAMES)


def test_reference_keeps_no_full_state_tensor_for_backward(monkeypatch):
    """Under autograd, segments are checkpointed: what autograd keeps is O(inputs), nothing of size (b, d, L, N)
    (without checkpointing every round of the doubling scan would keep one), and the gradients are unchanged."""
    b, d, N, L, K = 2, 8, 4, 128, 4
    monkeypatch.setattr(reference_module, "segment_length", lambda *args, **kwargs: 32)  # 4 segments
    inputs = make_inputs(b=b, d=d, N=N, L=L, dtype=torch.float32)
    orders = random_orders(K, L)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = selective_scan_reference(**inputs, delta_softplus=True, orders=orders)
    assert max(saved) < b * d * L * N
    assert sum(saved) < 40 * b * d * L  # inputs, their gathers per order, and one state per segment and order
    monkeypatch.setattr(reference_module, "_checkpointing", lambda *tensors: False)
    y_plain = selective_scan_reference(**inputs, delta_softplus=True, orders=orders)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(inputs.values()), g)
    grads_plain = torch.autograd.grad(y_plain, list(inputs.values()), g)
    assert torch.equal(y, y_plain) and all(torch.equal(a, p) for a, p in zip(grads, grads_plain))


def _exported_graph(L, orders):
    """torch.export of the reference at length L (the model's call: grouped B, C, D, bias, softplus, orders)."""
    inputs = {
        k: (v.detach() if v is not None else None)
        for k, v in make_inputs(b=1, d=8, N=4, L=L, groups=2, dtype=torch.float32).items()
    }

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, delta_bias):
            return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus=True, orders=orders)

    with torch.no_grad():
        program = torch.export.export(Scan(), tuple(inputs.values()))
        eager = Scan()(*inputs.values())
    assert torch.allclose(program.module()(*inputs.values()), eager, rtol=1e-6, atol=1e-6)
    return program.graph


@pytest.mark.slow
def test_reference_exports_to_a_small_graph():
    """torch.export traces the reference into a graph whose size does not grow with the sequence: 16x longer
    sequences add only doubling rounds (log2 of the chunk count), no per-step nodes; and no custom op."""
    short = _exported_graph(64, scan_orders(8, 8, "hilbert", 4))
    long = _exported_graph(1024, scan_orders(32, 32, "hilbert", 4))
    n_short, n_long = len(short.nodes), len(long.nodes)
    assert n_long < 1.6 * n_short and n_long < 600, (n_short, n_long)
    targets = {str(node.target) for node in long.nodes if node.op == "call_function"}
    assert all(t.startswith("aten.") or t == "<built-in function getitem>" for t in targets), targets


# ---- dispatcher ------------------------------------------------------------------------------------------------


def test_backends_agree_through_the_dispatcher():
    from pamm.ops.selective_scan_cpu import selective_scan_cpu

    inputs = make_inputs(L=21)
    orders = random_orders(2, 21)
    kw = dict(delta_softplus=True, orders=orders)
    assert torch.equal(selective_scan(**inputs, **kw, backend="auto"), selective_scan_cpu(**inputs, **kw))
    assert torch.equal(selective_scan(**inputs, **kw, backend="cpu"), selective_scan_cpu(**inputs, **kw))
    assert torch.equal(selective_scan(**inputs, **kw, backend="reference"), selective_scan_reference(**inputs, **kw))
    assert set(SCAN_BACKENDS) == {"auto", "reference", "cpu", "triton"}


def test_removed_chunked_backend_runs_the_reference_with_a_warning():
    inputs = make_inputs(L=9)
    with pytest.warns(FutureWarning, match="'chunked' was removed; running 'reference'"):
        y = selective_scan(**inputs, delta_softplus=True, backend="chunked")
    assert torch.equal(y, selective_scan_reference(**inputs, delta_softplus=True))


def test_unknown_backend_rejected_in_one_line():
    with pytest.raises(ValueError, match=r"^unknown selective_scan backend 'cuda-magic'; expected one of \["):
        selective_scan(**make_inputs(), backend="cuda-magic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [resolve_scan_backend(n) for n in SCAN_BACKENDS] == list(SCAN_BACKENDS)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(u=torch.zeros(2, 8)), "u must be"),
        (dict(delta=torch.zeros(2, 8, 12)), "delta must have"),
        (dict(A=torch.zeros(7, 4)), "A must be"),
        (dict(B=torch.zeros(2, 3, 4, 13)), "B must be"),
        (dict(B=torch.zeros(2, 2, 4, 13), C=torch.zeros(2, 4, 4, 13)), "group counts"),
        (dict(D=torch.zeros(9)), "D must be"),
        (dict(orders=torch.zeros(2, 12, dtype=torch.long)), "orders must be"),
    ],
)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_shapes_rejected(change, match, backend):
    inputs = {k: (v.detach() if v is not None else None) for k, v in make_inputs(L=13).items()}
    with pytest.raises(ValueError, match=match):
        selective_scan(**{"orders": None, **inputs, **change}, backend=backend)
