"""What every selective-scan backend shares: input checks, the B/C group layout, visit counts, gradients back to the
shape of B and C. Private: backends import it, nothing else in the package should.

The op (see ``selective_scan``), for every batch element and channel ``c`` of group ``g(c)``::

    dt_t    = softplus(delta[c, t] + delta_bias[c])                 (softplus only if delta_softplus)
    h_t     = exp(dt_t * A[c, :]) * h_{t-1} + dt_t * B[g(c), :, t] * u[c, t]      h_t in R^N, h_{-1} = 0
    y[c, t] = <C[g(c), :, t], h_t> + D[c] * u[c, t]

With ``orders`` (K, L) the recurrence runs K times, the k-th visiting positions ``orders[k, 0], orders[k, 1], ...``;
the K outputs are put back where they came from and summed (the D term once per visit, as K separate scans would).
"""

from __future__ import annotations

import torch
from torch import Tensor

SOFTPLUS_THRESHOLD = 20.0  # torch's softplus (beta 1) is the identity above this


def check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    orders: Tensor | None,
) -> None:
    """Raise ValueError (one line naming the argument and the expected shape) unless the shapes fit together.

    Shapes: u, delta (b, d, L); A (d, N); B, C (b, N, L) or (b, g, N, L) with d divisible by g, the two group counts
    equal or one of them 1; D, delta_bias (d,); orders (K, L) of an integer dtype.
    """
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
    gb, gc = group_count(B), group_count(C)
    if gb != gc and 1 not in (gb, gc):
        raise ValueError(f"B and C group counts must match or one of them be 1, got {gb} and {gc}")
    for name, vector in (("D", D), ("delta_bias", delta_bias)):
        if vector is not None and vector.shape != (d,):
            raise ValueError(f"{name} must be (channels={d},), got {tuple(vector.shape)}")
    if orders is not None:
        if orders.dim() != 2 or orders.shape[1] != L or orders.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"orders must be an integer tensor (directions, length={L}), got {tuple(orders.shape)} {orders.dtype}"
            )


def compute_dtype(u: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32 (also for float16 / bfloat16 inputs)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def group_count(t: Tensor) -> int:
    """Groups of a B or C tensor: 1 for (b, N, L), g for (b, g, N, L)."""
    return 1 if t.dim() == 3 else t.shape[1]


def grouped(t: Tensor) -> Tensor:
    """(b, N, L) -> (b, 1, N, L); grouped tensors pass through (a view either way)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def common_groups(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, int]:
    """B and C as (b, G, N, L) views with the same group count G (a shared one expanded, no copy), and G."""
    Bg, Cg = grouped(B), grouped(C)
    G = max(Bg.shape[1], Cg.shape[1])
    return Bg.expand(-1, G, -1, -1), Cg.expand(-1, G, -1, -1), G


def visits(orders: Tensor | None, length: int, like: Tensor) -> Tensor:
    """How many times the scans visit each position, (length,) in ``like``'s dtype and device: the D * u term is
    added once per visit."""
    if orders is None:
        return like.new_ones(length)
    flat = orders.reshape(-1).to(device=like.device, dtype=torch.long)
    # scatter_add rather than bincount: it also runs on meta tensors (shape inference, device moves).
    return like.new_zeros(length).scatter_add_(0, flat, like.new_ones(flat.shape))


def ungroup_grad(g: Tensor, like: Tensor) -> Tensor:
    """Gradient (b, G, N, L) back to the shape and dtype of B or C ((b, N, L) or (b, g, N, L)): the groups a shared
    tensor was expanded to are summed."""
    if group_count(like) != g.shape[1]:
        g = g.sum(1, keepdim=True)
    if like.dim() == 3:
        g = g[:, 0]
    return g.to(like.dtype)
