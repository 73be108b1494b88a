"""The v2 Triton selective scan (v3: test_selective_scan_triton_tiled.py) against the sequential reference, on CPU
through Triton's interpreter.

Triton decides whether kernels are compiled or interpreted when ``triton.language`` is first imported, which in a
full test session happens early (timm imports triton). So the parent session runs this file again in a child Python
started with TRITON_INTERPRET=1, where the actual tests below are defined. On a GPU the same comparisons run inside
benchmarks/scan.py on the compiled kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

CHILD = "PAMM_TRITON_INTERPRETER_CHILD"

if not os.environ.get(CHILD):

    def test_triton_backend_under_interpreter():
        pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run here")
        env = {**os.environ, "TRITON_INTERPRET": "1", CHILD: "1"}
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                               capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
        assert " passed" in child.stdout and " skipped" not in child.stdout, child.stdout[-2000:]

else:
    from pamm.ops import scan_orders, selective_scan, selective_scan_reference
    from pamm.ops.selective_scan_triton import selective_scan_triton
    from test_selective_scan import assert_matches_reference, make_inputs, random_orders, rel_err

    CASES = [  # (groups, softplus, bias, skip, K or "hilbert", L, N, chunk)
        (None, True, True, True, None, 13, 4, 8),
        (2, True, True, True, 2, 18, 5, 8),
        (2, False, False, False, "hilbert", 15, 8, 4),
    ]

    @pytest.mark.parametrize("groups,softplus,bias,skip,K,L,N,chunk", CASES)
    def test_triton_matches_reference_float64(groups, softplus, bias, skip, K, L, N, chunk):
        inputs = make_inputs(b=1 if K == "hilbert" else 2, d=8, N=N, L=L, groups=groups, bias=bias, skip=skip,
                             seed=L)
        orders = scan_orders(3, 5) if K == "hilbert" else (None if K is None else random_orders(K, L, seed=L))
        assert_matches_reference(selective_scan_triton, inputs, 1e-10, delta_softplus=softplus, orders=orders,
                                 knobs=dict(kernel="v2", config=dict(chunk=chunk, block_d=4, bwd_block_d=4)))

    def test_triton_float32_large_decays_channels_last():
        """The model's memory layout (channels-last u, delta; (b, L, g, N) B, C), |dt * A| up to 50, 4 orders."""
        b, g, N, L, d = 1, 2, 4, 14, 8
        inputs = make_inputs(b=b, d=d, N=N, L=L, groups=g, dtype=torch.float32, decay_scale=50.0, bias=False)
        with torch.no_grad():
            inputs["delta"].uniform_(0.2, 1.0)
        views = dict(inputs)
        for name in ("u", "delta"):
            views[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        for name in ("B", "C"):
            views[name] = inputs[name].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            views[name].requires_grad_()
        assert_matches_reference(selective_scan_triton, views, 1e-5, orders=random_orders(4, L),
                                 knobs=dict(kernel="v2", config=dict(chunk=8, block_d=4, bwd_block_d=8)))

    def test_triton_bfloat16_returns_input_dtype():
        inputs = make_inputs(b=1, d=4, N=4, L=9, dtype=torch.bfloat16)
        orders = random_orders(2, 9)
        y = selective_scan(**inputs, delta_softplus=True, orders=orders, backend="triton")
        assert y.dtype == torch.bfloat16
        wide = {k: (v.detach().float() if v is not None else None) for k, v in inputs.items()}
        y_ref = selective_scan_reference(**wide, delta_softplus=True, orders=orders)
        assert rel_err(y, y_ref) < 1e-2
        y.float().sum().backward()
        assert inputs["B"].grad.dtype == torch.bfloat16 and torch.isfinite(inputs["B"].grad).all()

    def test_triton_rejects_orders_that_are_not_permutations():
        with pytest.raises(ValueError, match="permutation"):
            selective_scan_triton(**make_inputs(L=6), orders=torch.tensor([[0, 1, 2, 3, 4, 4]]))
