"""The Triton selective scan against the float64 oracle, on CPU through Triton's interpreter.

Triton decides whether kernels are compiled or interpreted when ``triton.language`` is first imported, which in a
full test session happens early (timm imports triton). So the parent session runs this file again in a child Python
started with TRITON_INTERPRET=1, where the actual tests below are defined. The cases cover both tile layouts
(``ch_minor``), tiles and chunks that do not divide L, a chunk equal to the backward tile (no recompute pass),
grouped and shared B/C, every optional input, 1 to 4 random orders and real Hilbert orders, large decays, bf16
inputs and the model's channels-last views. The compiled kernels (GPU-only paths: inline PTX exp2, compiled scans)
are checked by test_selective_scan_gpu.py on a CUDA device.
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
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
        assert " passed" in child.stdout and " skipped" not in child.stdout, child.stdout[-2000:]

else:
    from pamm.ops import scan_orders, selective_scan
    from pamm.ops.selective_scan_triton import kernel_config, selective_scan_triton
    from scan_oracle import (
        assert_matches_oracle,
        channels_last_views,
        make_inputs,
        random_orders,
        rel_err,
        sequential_scan,
    )

    def config(tile, block_d, ch_minor, bwd_tile, bwd_block_d, bwd_ch_minor, chunk):
        return dict(
            tile=tile,
            block_d=block_d,
            ch_minor=ch_minor,
            bwd_tile=bwd_tile,
            bwd_block_d=bwd_block_d,
            bwd_ch_minor=bwd_ch_minor,
            chunk=chunk,
            num_warps=1,
            bwd_num_warps=1,
        )

    CASES = [  # (groups, softplus, bias, skip, K or "hilbert", L, N, decay scale, config)
        # grouped B/C, every option, 2 random orders, N not a power of two; tiles 4 / 2 and chunk 8 don't divide L
        (2, True, True, True, 2, 13, 5, 5.0, config(4, 4, 1, 2, 4, 0, 8)),
        # shared B/C, natural order, nothing optional; chunk == backward tile: the backward has no recompute pass
        (None, False, False, False, None, 18, 4, 5.0, config(4, 4, 0, 4, 2, 1, 4)),
        # 4 groups of 2 channels, 1 random order, |dt * A| up to ~50
        (4, True, True, True, 1, 11, 4, 50.0, config(2, 2, 1, 2, 2, 1, 4)),
        # the real Hilbert orders of a 3 x 5 grid (K = 4), a backward tile larger than the forward's
        (2, True, True, True, "hilbert", 15, 4, 5.0, config(4, 4, 1, 8, 2, 1, 8)),
    ]

    @pytest.mark.parametrize("groups,softplus,bias,skip,K,L,N,decay,cfg", CASES)
    def test_triton_matches_reference_float64(groups, softplus, bias, skip, K, L, N, decay, cfg):
        inputs = make_inputs(b=1, d=8, N=N, L=L, groups=groups, bias=bias, skip=skip, decay_scale=decay, seed=100 + L)
        if decay > 10:  # dt in [0.5, 1] (softplus of delta + bias): |dt * A| up to decay
            with torch.no_grad():
                inputs["delta"].uniform_(1.0, 2.0)
        orders = scan_orders(3, 5) if K == "hilbert" else (None if K is None else random_orders(K, L, seed=L + 7))
        assert_matches_oracle(
            selective_scan_triton, inputs, 1e-10, delta_softplus=softplus, orders=orders, knobs=dict(config=cfg)
        )

    def test_triton_shared_B_grouped_C_float64():
        """B shared by all channels (b, N, L), C grouped (b, 2, N, L)."""
        inputs = make_inputs(b=1, d=8, N=4, L=10, groups=None, seed=5)
        gen = torch.Generator().manual_seed(6)
        inputs["C"] = torch.randn(1, 2, 4, 10, generator=gen, dtype=torch.float64).requires_grad_()
        assert_matches_oracle(
            selective_scan_triton,
            inputs,
            1e-10,
            delta_softplus=True,
            orders=random_orders(2, 10, seed=3),
            knobs=dict(config=config(4, 4, 1, 4, 4, 0, 8)),
        )

    def test_triton_float32_large_decays_channels_last():
        """The model's memory layout (channels-last u, delta; B, C views of (b, L, g, N)), |dt * A| up to 50 (decays
        down to e^-50, finite and exact: only products of decays are formed), 4 random orders."""
        b, g, N, L, d = 1, 2, 4, 10, 8
        inputs = make_inputs(b=b, d=d, N=N, L=L, groups=g, dtype=torch.float32, decay_scale=50.0, bias=False, seed=11)
        with torch.no_grad():
            inputs["delta"].uniform_(0.2, 1.0)
        views = channels_last_views(inputs)
        assert views["u"].stride(1) == 1 and views["B"].stride(2) == 1
        assert_matches_oracle(
            selective_scan_triton,
            views,
            1e-5,
            orders=random_orders(4, L, seed=12),
            knobs=dict(config=config(4, 4, 1, 4, 4, 1, 8)),
        )

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_triton_low_precision_computes_in_float32(dtype):
        """bf16 / fp16 activations (autocast) are computed exactly as float32 inputs of the same values (the values
        and every gradient are the float32 results rounded to the input dtype once), channels-last views too."""
        inputs = channels_last_views(make_inputs(b=1, d=4, N=4, L=9, groups=2, dtype=dtype, seed=13))
        orders = random_orders(2, 9, seed=14)
        kw = dict(delta_softplus=True, orders=orders, config=config(4, 4, 1, 2, 4, 1, 4))
        wide = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in inputs.items()}
        y, y_wide = selective_scan_triton(**inputs, **kw), selective_scan_triton(**wide, **kw)
        assert y.dtype == dtype and torch.equal(y, y_wide.to(dtype))
        exact = {k: (v.detach().double() if v is not None else None) for k, v in inputs.items()}
        assert rel_err(y, sequential_scan(**exact, delta_softplus=True, orders=orders)) < 1e-2
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        y.backward(g.to(dtype))
        y_wide.backward(g.to(dtype).float())
        for name in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
            grad, grad_wide = inputs[name].grad, wide[name].grad
            assert grad.dtype == inputs[name].dtype and torch.equal(grad, grad_wide.to(grad.dtype)), name

    def test_triton_kernels_get_B_and_C_with_unit_stride_along_the_state():
        """The model's B, C are contiguous (b, g, N, L) maps; the kernels load (tile, N) rows of them, so the wrapper
        hands them over with unit stride along N (a copy, values unchanged); (b, L, g, N) views pass as they are."""
        from pamm.ops.selective_scan_triton import _launch_args

        inputs = make_inputs(b=2, d=8, N=4, L=10, groups=2, seed=21)
        assert inputs["B"].is_contiguous() and inputs["B"].stride(2) != 1
        args = _launch_args(*(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")), None, 4, 8)
        for name in ("B", "C"):
            assert args[name + "g"].stride(2) == 1 and torch.equal(args[name + "g"], inputs[name])
        view = channels_last_views(inputs)["B"]
        assert (
            _launch_args(*(inputs[k] for k in ("u", "delta", "A")), view, inputs["C"], None, None, None, 4, 8)[
                "Bg"
            ].data_ptr()
            == view.data_ptr()
        )

    def test_triton_backend_through_the_dispatcher():
        """backend="triton" runs this kernel with its default launch config."""
        inputs = make_inputs(b=1, d=4, N=4, L=7, seed=15)
        kw = dict(delta_softplus=True, orders=random_orders(2, 7, seed=16))
        with torch.no_grad():
            assert torch.equal(selective_scan(**inputs, **kw, backend="triton"), selective_scan_triton(**inputs, **kw))
            assert rel_err(selective_scan(**inputs, **kw, backend="triton"), sequential_scan(**inputs, **kw)) < 1e-12

    def test_triton_rejects_bad_orders_and_configs():
        inputs = make_inputs(L=6)
        with pytest.raises(ValueError, match="permutation"):
            selective_scan_triton(**inputs, orders=torch.tensor([[0, 1, 2, 3, 4, 4]]))
        with pytest.raises(ValueError, match="power of two"):
            selective_scan_triton(**inputs, config=dict(tile=3, chunk=6))
        with pytest.raises(ValueError, match="multiple of tile"):
            selective_scan_triton(**inputs, config=dict(tile=4, bwd_tile=8, chunk=12))
        for bad in (16, 256):
            with pytest.raises(ValueError, match="bwd_maxnreg must be 0 .* 24..255, got"):
                selective_scan_triton(**inputs, config=dict(bwd_maxnreg=bad))
        assert kernel_config(64, 2048)["bwd_maxnreg"] == 0  # capping the N = 64 backward spills (BENCHMARKS.md)
        cfg = kernel_config(16, 1536)
        assert cfg["chunk"] % cfg["tile"] == 0 and cfg["chunk"] % cfg["bwd_tile"] == 0
