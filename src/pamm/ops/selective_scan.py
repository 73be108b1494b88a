"""Selective scan (Mamba's S6 recurrence), with optional multi-order scanning.

For every batch element and channel ``c`` (``g(c)`` its B/C group)::

    dt_t  = softplus(delta[c, t] + delta_bias[c])          (softplus only if delta_softplus)
    h_t   = exp(dt_t * A[c, :]) * h_{t-1} + dt_t * B[g(c), :, t] * u[c, t]      h_t in R^N, h_{-1} = 0
    y[c, t] = <C[g(c), :, t], h_t> + D[c] * u[c, t]

With ``orders`` (K, L), the recurrence runs K times, the k-th time visiting positions ``orders[k, 0], orders[k, 1],
...``; the K outputs are put back at the positions they came from and summed (the D term is added once per order,
as K separate scans would).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_reference", "BACKENDS", "triton_available", "triton_kernel",
           "TRITON_KERNELS", "TRITON_KERNEL_ENV", "cpu_kernel_available"]

TRITON_KERNELS = ("v2", "v3")  # v2: selective_scan_triton.py; v3 (tiled): selective_scan_triton_tiled.py
TRITON_KERNEL_ENV = "PAMM_SCAN_KERNEL"
DEFAULT_TRITON_KERNEL = "v3"  # faster than v2 on an H100 (BENCHMARKS.md, 2026-11-27)


def _check_inputs(u, delta, A, B, C, D, delta_bias, orders) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (channels={d}, state), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (b, n, L)
        elif t.dim() == 4:
            ok = t.shape[0] == b and t.shape[2:] == (n, L) and t.shape[1] > 0 and d % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch={b}, state={n}, length={L}) or (batch, groups, state, length) with "
                f"channels={d} divisible by groups, got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be (channels={d},), got {tuple(t.shape)}")
    if orders is not None:
        if orders.dim() != 2 or orders.shape[1] != L or orders.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"orders must be an integer tensor (directions, length={L}), got {tuple(orders.shape)}")


def _grouped(t: Tensor) -> Tensor:
    """(b, N, L) -> (b, 1, N, L); grouped tensors pass through."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _visits(orders: Tensor | None, length: int, like: Tensor) -> Tensor:
    """How many times the scans visit each position (L,): the D * u term is added once per visit."""
    if orders is None:
        return like.new_ones(length)
    flat = orders.reshape(-1)
    # scatter_add rather than bincount: it also runs on meta tensors (shape inference, device moves).
    return like.new_zeros(length).scatter_add_(0, flat, like.new_ones(flat.shape))


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    orders: Tensor | None = None,
) -> Tensor:
    """Plain sequential selective scan: the ground truth the fast backends are tested against.

    Shapes: u, delta (b, d, L); A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,); orders (K, L).
    Returns (b, d, L) in u's dtype. Computes in float32 (float64 for float64 inputs).
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    dtype_in = u.dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    b, d, L = u.shape
    u, delta, A = u.to(cdt), delta.to(cdt), A.to(cdt)
    Bg, Cg = _grouped(B).to(cdt), _grouped(C).to(cdt)
    g = Bg.shape[1]
    if Cg.shape[1] != g:  # one of them shared, the other grouped
        g = max(g, Cg.shape[1])
        Bg = Bg.expand(b, g, *Bg.shape[2:]) if Bg.shape[1] == 1 else Bg
        Cg = Cg.expand(b, g, *Cg.shape[2:]) if Cg.shape[1] == 1 else Cg
    rep = d // g
    Bc = Bg.repeat_interleave(rep, dim=1)  # (b, d, N, L)
    Cc = Cg.repeat_interleave(rep, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    order_list = [None] if orders is None else list(orders.long())
    y = u.new_zeros(b, d, L)
    for perm in order_list:
        if perm is None:
            uk, dk, Bk, Ck = u, delta, Bc, Cc
        else:
            uk, dk, Bk, Ck = u[..., perm], delta[..., perm], Bc[..., perm], Cc[..., perm]
        h = u.new_zeros(b, d, A.shape[1])
        outs = []
        for u_t, d_t, B_t, C_t in zip(uk.unbind(2), dk.unbind(2), Bk.unbind(3), Ck.unbind(3)):
            h = torch.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * B_t
            outs.append((h * C_t).sum(-1))
        yk = torch.stack(outs, dim=2)
        if D is not None:
            yk = yk + uk * D.to(cdt)[:, None]
        if perm is None:
            y = y + yk
        else:
            y = y.index_add(2, perm, yk)
    return y.to(dtype_in)


def _chunked(*args, **kwargs) -> Tensor:
    from .selective_scan_chunked import selective_scan_chunked

    return selective_scan_chunked(*args, **kwargs)


def _cpu(*args, **kwargs) -> Tensor:
    from .selective_scan_cpu import selective_scan_cpu

    return selective_scan_cpu(*args, **kwargs)


def cpu_kernel_available() -> bool:
    """Whether the Numba CPU backend can run (numba importable)."""
    from .selective_scan_cpu import numba_available

    return numba_available()


def _triton(*args, **kwargs) -> Tensor:
    from .selective_scan_triton import selective_scan_triton

    return selective_scan_triton(*args, **kwargs)


BACKENDS = {"reference": selective_scan_reference, "chunked": _chunked, "cpu": _cpu, "triton": _triton}

_triton_state: dict[str, bool | str] = {}


def triton_available() -> bool:
    """Whether the Triton backend can run on this machine's GPU (Triton importable, a CUDA device present, and no
    earlier launch failed to compile or run)."""
    if "ok" not in _triton_state:
        try:
            import triton  # noqa: F401
        except ImportError as err:  # Triton is optional: CPU installs fall back to the chunked backend
            _triton_state.update(ok=False, reason=f"triton not importable: {err}")
        else:
            _triton_state.update(ok=torch.cuda.is_available(), reason="no CUDA device")
    return bool(_triton_state["ok"])


def triton_kernel(kernel: str | None = None) -> str:
    """The Triton kernel variant to run: ``kernel`` when given, else the environment variable PAMM_SCAN_KERNEL,
    else the default (``DEFAULT_TRITON_KERNEL``). Raises ValueError for a name not in TRITON_KERNELS."""
    name = kernel if kernel is not None else (os.environ.get(TRITON_KERNEL_ENV) or DEFAULT_TRITON_KERNEL)
    if name not in TRITON_KERNELS:
        source = "kernel" if kernel is not None else f"${TRITON_KERNEL_ENV}"
        raise ValueError(f"unknown triton selective scan kernel {name!r} (from {source}); expected one of "
                         f"{TRITON_KERNELS}")
    return name


def _auto(u: Tensor, *args, **kwargs) -> Tensor:
    """Triton on CUDA tensors when it works, the Numba kernel on CPU tensors when numba is installed, the chunked
    scan otherwise: for inputs the Triton backend refuses (orders with repeated positions; invalid shapes, which the
    chunked backend then reports) and, with a warning, for good after a Triton compile or launch failure."""
    if u.device.type == "cpu" and cpu_kernel_available():
        return _cpu(u, *args, **kwargs)
    if u.is_cuda and triton_available():
        triton_kernel()  # a misspelt $PAMM_SCAN_KERNEL is an error, not a silent fall-back to the chunked backend
        try:
            return _triton(u, *args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except ValueError:
            pass  # inputs the triton backend refuses: the chunked backend computes or reports them
        except Exception as err:  # a compile or launch failure of this Triton/driver: fall back once and for all
            _triton_state.update(ok=False, reason=f"{type(err).__name__}: {err}")
            warnings.warn(f"triton selective scan failed ({type(err).__name__}: {err}); using the chunked backend",
                          RuntimeWarning, stacklevel=3)
    return _chunked(u, *args, **kwargs)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    orders: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics (no z), plus optional ``orders``.

    Args:
        u, delta: (b, d, L) any strides.
        A: (d, N).
        B, C: (b, N, L), or grouped (b, g, N, L) with d divisible by g: group i serves channels
            [i*d/g, (i+1)*d/g).
        D: (d,) skip weight, optional.
        delta_bias: (d,) added to delta before the softplus, optional.
        delta_softplus: apply softplus to delta (+ bias).
        orders: (K, L) integer tensor; row k lists the positions visited at steps 0..L-1 of the k-th scan.
            The K results are scattered back and summed. ``None``: one scan in natural order.
        backend: ``"reference"`` (sequential, the ground truth), ``"chunked"`` (PyTorch, CPU and GPU), ``"cpu"``
            (Numba kernels, CPU tensors),
            ``"triton"`` (fused GPU kernels; rows of ``orders`` must be permutations; the kernel variant, v2 or v3,
            from $PAMM_SCAN_KERNEL, default v3) or ``"auto"``: triton on CUDA tensors when Triton works there,
            cpu on CPU tensors when numba is installed, chunked otherwise.

    Returns:
        (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    """
    if backend == "auto":
        fn = _auto
    else:
        try:
            fn = BACKENDS[backend]
        except KeyError:
            raise ValueError(f"unknown selective_scan backend {backend!r}; expected 'auto' or one of "
                             f"{sorted(BACKENDS)}") from None
    return fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, orders=orders)
