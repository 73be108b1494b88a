"""The selective scan (Mamba's S6 recurrence) with optional multi-order scanning: one signature, three backends.

For every batch element and channel ``c`` (``g(c)`` its B/C group)::

    dt_t  = softplus(delta[c, t] + delta_bias[c])          (softplus only if delta_softplus)
    h_t   = exp(dt_t * A[c, :]) * h_{t-1} + dt_t * B[g(c), :, t] * u[c, t]      h_t in R^N, h_{-1} = 0
    y[c, t] = <C[g(c), :, t], h_t> + D[c] * u[c, t]

With ``orders`` (K, L), the recurrence runs K times, the k-th time visiting positions ``orders[k, 0], orders[k, 1],
...``; the K outputs are put back at the positions they came from and summed (the D term is added once per order,
as K separate scans would).

Backends, each a function with the same signature (``SCAN_BACKENDS`` names them):

* ``reference``: plain PyTorch (``selective_scan_reference.py``), any device, autograd, exportable;
* ``cpu``: Numba kernels for CPU tensors (``selective_scan_cpu.py``);
* ``triton``: one fused Triton launch per call for CUDA tensors (``selective_scan_triton.py``);
* ``auto``: ``cpu`` on CPU tensors, ``triton`` on CUDA tensors where Triton works, ``reference`` otherwise.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .selective_scan_reference import selective_scan_reference

__all__ = ["selective_scan", "SCAN_BACKENDS", "resolve_scan_backend", "triton_available"]

SCAN_BACKENDS = ("auto", "reference", "cpu", "triton")
# Names of removed backends and what they run now: "chunked" was the pure-PyTorch backend beside a sequential
# reference until 2026-12; its job (any device, memory-lean) passed to the vectorised reference.
_RENAMED = {"chunked": "reference"}

_triton_state: dict[str, bool | str] = {}


def resolve_scan_backend(name: str) -> str:
    """The backend a configured name runs: a name of ``SCAN_BACKENDS`` itself, ``chunked`` (removed) ``reference``
    with a FutureWarning. Raises ValueError (one line) for anything else."""
    if name in SCAN_BACKENDS:
        return name
    if name in _RENAMED:
        warnings.warn(
            f"selective_scan backend {name!r} was removed; running {_RENAMED[name]!r} (the same function)",
            FutureWarning,
            stacklevel=3,
        )
        return _RENAMED[name]
    raise ValueError(f"unknown selective_scan backend {name!r}; expected one of {list(SCAN_BACKENDS)}")


def triton_available() -> bool:
    """Whether the Triton backend can run on this machine's GPU: Triton importable, a CUDA device present, and no
    earlier launch of the ``auto`` backend failed to compile or run."""
    if "ok" not in _triton_state:
        try:
            import triton  # noqa: F401
        except ImportError as err:  # Triton ships with CUDA builds of PyTorch; CPU-only installs lack it
            _triton_state.update(ok=False, reason=f"triton not importable: {err}")
        else:
            _triton_state.update(ok=torch.cuda.is_available(), reason="no CUDA device")
    return bool(_triton_state["ok"])


# The fast backends are imported on first use: numba and Triton take a while to import (and Triton is absent from
# CPU-only installs); ``import pamm`` stays quick.


def _cpu(*args, **kwargs) -> Tensor:
    from .selective_scan_cpu import selective_scan_cpu

    return selective_scan_cpu(*args, **kwargs)


def _triton(*args, **kwargs) -> Tensor:
    from .selective_scan_triton import selective_scan_triton

    return selective_scan_triton(*args, **kwargs)


def _auto(u: Tensor, *args, **kwargs) -> Tensor:
    """cpu on CPU tensors; triton on CUDA tensors where it works, falling back to the reference for inputs the
    Triton backend refuses (orders with repeated positions; invalid shapes, which the reference then reports) and,
    with one warning, for good after a Triton compile or launch failure; the reference on any other device."""
    if u.device.type == "cpu":
        return _cpu(u, *args, **kwargs)
    if u.is_cuda and triton_available():
        try:
            return _triton(u, *args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except ValueError:
            pass  # inputs the triton backend refuses: the reference computes or reports them
        except Exception as err:  # a compile or launch failure of this Triton/driver: fall back once and for all
            _triton_state.update(ok=False, reason=f"{type(err).__name__}: {err}")
            warnings.warn(
                f"triton selective scan failed ({type(err).__name__}: {err}); using the reference backend",
                RuntimeWarning,
                stacklevel=3,
            )
    return selective_scan_reference(u, *args, **kwargs)


_BACKENDS = {"auto": _auto, "reference": selective_scan_reference, "cpu": _cpu, "triton": _triton}


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
        backend: one of ``SCAN_BACKENDS``: ``"reference"`` (plain PyTorch, any device), ``"cpu"`` (Numba kernels,
            CPU tensors), ``"triton"`` (fused GPU kernels; rows of ``orders`` must be permutations) or ``"auto"``
            (see the module docstring).

    Returns:
        (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    """
    fn = _BACKENDS[resolve_scan_backend(backend)]
    return fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, orders=orders)
