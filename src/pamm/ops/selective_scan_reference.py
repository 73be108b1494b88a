"""The selective scan in plain PyTorch: any device, autograd for the gradients, and traceable into a small graph
(``torch.export``, ONNX): no custom autograd function, no data-dependent control flow, no loop over time steps.

The recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(dt_t A), x_t = dt_t u_t B_t) composes affine maps, so it is a
scan with the combine (a, x) then (a', x') = (a a', a' x + x'). Per scan order the sequence is cut into segments
(walked one after another, the state (b, d, N) carried across) and each segment into chunks of ``CHUNK`` positions:

1. inside every chunk at once, a doubling scan over its positions (log2(CHUNK) rounds, round s composing each
   position's map with the one s positions earlier) gives each position's state from a zero start and the chunk's
   product of decays up to it;
2. the chunks' end maps are scanned the same way over the chunks (log2(chunks) rounds on tensors CHUNK times
   smaller), from the state entering the segment, which gives every chunk's entry state;
3. h_t = x_t + a_t h_entry(chunk), y_t = <C_t, h_t>.

Only products of decays appear (never exp(-cumsum), which overflows in float32 as soon as a chunk's sum of |dt A|
passes ~88), so the scan is finite for any |dt A|.

Memory: a segment's tensors are (b, d, S, N) with S chosen to keep them near ``SEGMENT_ELEMENTS`` (8x that without
autograd: inference and export want few segments); when gradients are needed each segment runs under activation
checkpointing (``torch.utils.checkpoint``), so autograd keeps the inputs and one (b, d, N) state per segment and
order and recomputes a segment in the backward. Graph: K orders x segments x about 5 (log2(CHUNK) + log2(chunks))
+ 15 ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._scan_common import check_inputs, common_groups, compute_dtype, visits

__all__ = ["selective_scan_reference", "segment_length"]

CHUNK = 8  # positions of a chunk (step 1 above)
SEGMENT_ELEMENTS = 2**22  # target size of one segment's (b, d, S, N) tensors under autograd: 16 MB in float32


def segment_length(batch: int, channels: int, state: int, length: int, autograd: bool) -> int:
    """Positions per segment, a multiple of ``CHUNK``: as many as keep a segment's (batch, channels, S, state)
    tensors within ``SEGMENT_ELEMENTS`` (8x that without autograd), at least one chunk, at most the whole
    sequence."""
    if isinstance(batch, torch.SymInt):  # a symbolic batch (ONNX export with a dynamic batch): plan for one sample
        batch = 1
    batch, channels, state, length = int(batch), int(channels), int(state), int(length)  # ints also when traced
    budget = SEGMENT_ELEMENTS * (1 if autograd else 8)
    chunks = max(1, budget // (CHUNK * max(1, batch * channels * state)))
    return CHUNK * min(chunks, -(-length // CHUNK))


def _doubling_scan(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of the affine maps (a, x) along dim -2: returns (products of a, states from a zero start)."""
    n = a.shape[-2]
    s = 1
    while s < n:  # n is a shape: the rounds unroll into a fixed graph
        x = a * F.pad(x[..., :-s, :], (0, 0, s, 0)) + x
        a = a * F.pad(a[..., :-s, :], (0, 0, s, 0), value=1.0)
        s *= 2
    return a, x


def _scan_segment(h_in: Tensor, dt: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One segment of one order. h_in (b, G, r, N) state before it; dt, du = dt * u (b, G, r, S) with S a multiple
    of CHUNK; A (G, r, N); B, C (b, G, N, S). Returns y (b, G, r, S) without the D term, and the state after the
    segment (b, G, r, N)."""
    b, G, r, S = dt.shape
    N = A.shape[-1]
    chunks = S // CHUNK
    a = torch.exp(dt[..., None] * A[:, :, None, :]).reshape(b, G, r, chunks, CHUNK, N)
    x = (du[..., None] * B.transpose(-1, -2)[:, :, None]).reshape(b, G, r, chunks, CHUNK, N)
    a, x = _doubling_scan(a, x)  # within each chunk
    decay, rise = _doubling_scan(a[..., -1, :], x[..., -1, :])  # over the chunks' end maps
    ends = rise + decay * h_in[..., None, :]  # (b, G, r, chunks, N): the state after each chunk
    entry = torch.cat([h_in[..., None, :], ends[..., :-1, :]], dim=-2)
    h = x + a * entry[..., None, :]
    y = (h.reshape(b, G, r, S, N) * C.transpose(-1, -2)[:, :, None]).sum(-1)
    return y, ends[..., -1, :]


def _checkpointing(*tensors: Tensor) -> bool:
    """Whether segments run under activation checkpointing: when autograd records, not while tracing or
    compiling."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _one_order(dt: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor, S: int, remat: bool) -> Tensor:
    """One scan order on inputs already gathered into it: dt, du (b, G, r, L); A (G, r, N); B, C (b, G, N, L);
    S positions per segment. Returns y (b, G, r, L) without the D term."""
    b, G, r, L = dt.shape
    segments = -(-L // S)
    pad = segments * S - L
    if pad:  # dt = 0 past the end: decay 1, input 0
        dt, du, B, C = (F.pad(t, (0, pad)) for t in (dt, du, B, C))
    h = dt.new_zeros(b, G, r, A.shape[-1])
    ys = []
    for i in range(segments):
        part = (
            h,
            dt[..., i * S : (i + 1) * S],
            du[..., i * S : (i + 1) * S],
            A,
            B[..., i * S : (i + 1) * S],
            C[..., i * S : (i + 1) * S],
        )
        y, h = checkpoint(_scan_segment, *part, use_reentrant=False) if remat else _scan_segment(*part)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if segments > 1 else ys[0]
    return y[..., :L] if pad else y


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
    """Selective scan in plain PyTorch (see the module docstring); the semantics of ``pamm.ops.selective_scan``.

    Shapes: u, delta (b, d, L) any strides; A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,);
    orders (K, L) integer positions in [0, L), any rows (repeated positions are scattered back and summed).
    Returns (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    """
    check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    cdt = compute_dtype(u)
    b, d, L = u.shape
    N = A.shape[1]
    Bg, Cg, G = common_groups(B.to(cdt), C.to(cdt))
    r = d // G
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uc = u.to(cdt)
    dt = dt.reshape(b, G, r, L)
    du = dt * uc.reshape(b, G, r, L)
    A_g = A.to(cdt).reshape(G, r, N)
    remat = _checkpointing(*(t for t in (u, delta, A, B, C, D, delta_bias) if t is not None))
    S = segment_length(b, d, N, L, autograd=remat)
    if orders is None:
        y = _one_order(dt, du, A_g, Bg, Cg, S, remat)
    else:
        orders = orders.to(device=u.device, dtype=torch.long)
        y = dt.new_zeros(b, G, r, L)
        for perm in orders:  # K is a shape
            y_k = _one_order(
                dt.index_select(-1, perm),
                du.index_select(-1, perm),
                A_g,
                Bg.index_select(-1, perm),
                Cg.index_select(-1, perm),
                S,
                remat,
            )
            y = y.index_add(-1, perm, y_k)
    y = y.reshape(b, d, L)
    if D is not None:
        y = y + D.to(cdt)[:, None] * uc * visits(orders, L, y)
    return y.to(u.dtype)
