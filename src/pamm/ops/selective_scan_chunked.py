"""Chunked selective scan in plain PyTorch: CPU and GPU, overflow-safe, memory-lean.

The sequence of each scan direction is cut into *segments* of ``lanes * steps`` positions, and each segment into
``lanes`` runs of ``steps`` consecutive positions that are scanned side by side:

1. every lane runs the recurrence from a zero state (``steps`` sequential updates, all lanes at once);
2. the lanes' true start states are chained from the segment's start state with the lanes' total decays
   ``exp(A * sum(dt))`` (``lanes`` small updates);
3. the recurrence runs again from the true start states, now producing the outputs.

Only products of decays ever appear (each update multiplies by ``exp(dt * A)``, each lane's total decay is the
exponential of a sum of ``dt * A``), never the ``exp(-cumsum)`` factorisation that overflows in float32: the scan is
as finite as the recurrence it computes, whatever ``|dt * A|``.

Autograd: a custom function saves its inputs and the state at every segment start (``K * segments`` states of
shape (b, d, N)), nothing of size (b, d, L, N). The backward pass walks the segments from last to first, recomputes
the segment's states (a transient (b, d, segment, N) buffer), runs the adjoint recurrence with the same lane scheme
and gathers every input's gradient. Scan orders are applied by gathering each direction once and scattering its
outputs and gradients back with ``index_add``.

Lane and step counts only trade speed against transient memory; the result is the same. Defaults keep a step's
tensors cache-sized on the CPU and large on the GPU (see ``default_blocking``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .selective_scan import _check_inputs, _grouped, _visits

__all__ = ["selective_scan_chunked", "default_blocking"]


def default_blocking(batch: int, channels: int, state: int, length: int, device: torch.device) -> tuple[int, int]:
    """Pick (lanes, steps) for a scan of ``batch * channels * state`` recurrences over ``length`` positions.

    A step updates a (batch, channels, lanes, state) tensor: on the CPU about 2^18 elements (it stays in cache);
    on a GPU about 2^22 (few, large kernels), with the backward's (b, d, segment, N) buffer kept under ~2^27
    elements (512 MB in float32).
    """
    per_lane = max(1, batch * channels * state)
    target = 2**22 if device.type == "cuda" else 2**18
    lanes = 1
    while lanes * 2 * per_lane <= target and lanes * 2 <= max(1, length // 16):
        lanes *= 2
    steps = 64 if device.type != "cuda" else 32
    while steps > 8 and per_lane * lanes * steps > 2**27:
        steps //= 2
    return lanes, steps


def _to_blocked(t: Tensor, perm: Tensor | None, segments: int, lanes: int, steps: int) -> Tensor:
    """(b, G, X, L) -> (segments, steps, b, G, lanes, X) in scan order, zero past the end.

    Position ``s * lanes * steps + p * steps + q`` of the scan lands at [s, q, :, :, p]: every step's slice over all
    lanes is contiguous.
    """
    b, G, X, L = t.shape
    if perm is not None:
        t = t.index_select(3, perm)
    t = F.pad(t, (0, segments * lanes * steps - L)).view(b, G, X, segments, lanes, steps)
    return t.permute(3, 5, 0, 1, 4, 2).contiguous()


def _from_blocked(t: Tensor, length: int) -> Tensor:
    """Inverse of ``_to_blocked`` without the gather: (segments, steps, b, G, lanes, X) -> (b, G, X, length)."""
    segments, steps, b, G, lanes, X = t.shape
    return t.permute(2, 3, 5, 0, 4, 1).reshape(b, G, X, segments * lanes * steps)[..., :length]


class _Direction:
    """One direction's inputs in scan order, blocked (see ``_to_blocked``): dt, u, du (S, Q, b, G, P, r) and
    B, C (S, Q, b, G, P, N); past the sequence's end dt = du = B = C = 0 (steps that change nothing)."""

    def __init__(self, dt: Tensor, u: Tensor, Bg: Tensor, Cg: Tensor, perm: Tensor | None, segments: int,
                 lanes: int, steps: int):
        self.dt = _to_blocked(dt, perm, segments, lanes, steps)
        self.u = _to_blocked(u, perm, segments, lanes, steps)
        self.du = self.dt * self.u
        self.B = _to_blocked(Bg, perm, segments, lanes, steps)
        self.C = _to_blocked(Cg, perm, segments, lanes, steps)

    def decay(self, s: int, q: int, A: Tensor, out: Tensor) -> Tensor:
        """exp(dt * A) at step q of segment s, all lanes, written into ``out`` (b, G, P, r, N)."""
        torch.mul(self.dt[s, q, ..., None], A, out=out)
        return out.exp_()

    def update(self, s: int, q: int, a: Tensor, h_prev: Tensor, out: Tensor) -> Tensor:
        """out <- a * h_prev + dt * u * B at step q of segment s (``out`` may be ``h_prev``)."""
        torch.mul(a, h_prev, out=out)
        return out.addcmul_(self.du[s, q, ..., None], self.B[s, q, ..., None, :])

    def lane_starts(self, s: int, h0: Tensor, A: Tensor, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """States at the start of every lane of segment s, and the lanes' total decays.

        h0: (b, G, r, N) state before the segment; a: scratch (b, G, P, r, N). Returns (starts (b, G, P, r, N),
        totals (b, G, P, r, N), or None for a single lane).
        """
        _, Q, b, G, P, r = self.dt.shape
        starts = h0.new_empty(b, G, P, r, A.shape[-1])
        if P == 1:
            starts[:, :, 0] = h0
            return starts, None
        totals = torch.exp(self.dt[s].sum(0)[..., None] * A)  # exp(A * sum(dt)): each lane's product of decays
        local = torch.zeros_like(starts)
        for q in range(Q):
            self.update(s, q, self.decay(s, q, A, a), local, local)
        state = h0
        for p in range(P):
            starts[:, :, p] = state
            state = torch.addcmul(local[:, :, p], totals[:, :, p], state)
        return starts, totals


def _forward_direction(dirn: _Direction, A: Tensor) -> tuple[Tensor, Tensor]:
    """Scan one direction. Returns y (S, Q, b, G, P, r) blocked and the segment start states (S, b, G, r, N)."""
    segments, steps, b, G, lanes, r = dirn.dt.shape
    y = torch.empty_like(dirn.dt)
    seg_states = dirn.dt.new_empty(segments, b, G, r, A.shape[-1])
    a = dirn.dt.new_empty(b, G, lanes, r, A.shape[-1])
    h0 = dirn.dt.new_zeros(b, G, r, A.shape[-1])
    for s in range(segments):
        seg_states[s] = h0
        h, _ = dirn.lane_starts(s, h0, A, a)
        for q in range(steps):
            dirn.update(s, q, dirn.decay(s, q, A, a), h, h)
            torch.matmul(h, dirn.C[s, q, ..., None], out=y[s, q, ..., None])
        h0 = h[:, :, -1]
    return y, seg_states


def _backward_direction(dirn: _Direction, gy: Tensor, A: Tensor, seg_states: Tensor) -> dict[str, Tensor]:
    """One direction's gradients, blocked like its inputs.

    gy: (S, Q, b, G, P, r) output gradient. Returns "dt", "u" (S, Q, b, G, P, r), "B", "C" (S, Q, b, G, P, N) and
    "A" (b, G, P, r, N), still to be summed over b and P.
    """
    segments, Q, b, G, P, r = dirn.dt.shape
    N = A.shape[-1]
    g = {"dt": torch.empty_like(dirn.dt), "u": torch.empty_like(dirn.dt), "B": torch.empty_like(dirn.B),
         "C": torch.empty_like(dirn.C), "A": dirn.dt.new_zeros(b, G, P, r, N)}
    a = dirn.dt.new_empty(b, G, P, r, N)
    via_decay = torch.empty_like(a)
    states = dirn.dt.new_empty(Q, b, G, P, r, N)  # transient: one segment's states
    carry = dirn.dt.new_zeros(b, G, r, N)  # decay(next step) * adjoint(next step), entering from the right
    for s in reversed(range(segments)):
        starts, totals = dirn.lane_starts(s, seg_states[s], A, a)
        for q in range(Q):
            dirn.update(s, q, dirn.decay(s, q, A, a), states[q - 1] if q > 0 else starts, states[q])
        # the adjoint entering each lane from the right: lanes run their local adjoint from zero, then chain
        adj = starts.new_empty(b, G, P, r, N)
        if P == 1:
            adj[:, :, 0] = carry
        else:
            local = torch.zeros_like(adj)
            for q in reversed(range(Q)):
                local.addcmul_(gy[s, q, ..., None], dirn.C[s, q, ..., None, :])
                local.mul_(dirn.decay(s, q, A, a))
            state = carry
            for p in reversed(range(P)):
                adj[:, :, p] = state
                state = torch.addcmul(local[:, :, p], totals[:, :, p], state)
        for q in reversed(range(Q)):
            adj.addcmul_(gy[s, q, ..., None], dirn.C[s, q, ..., None, :])  # adjoint of the state after step q
            sum_B = torch.matmul(adj, dirn.B[s, q, ..., None]).squeeze(-1)  # (b, G, P, r)
            torch.mul(dirn.dt[s, q], sum_B, out=g["u"][s, q])
            torch.matmul(dirn.du[s, q, ..., None, :], adj, out=g["B"][s, q, ..., None, :])
            torch.matmul(gy[s, q, ..., None, :], states[q], out=g["C"][s, q, ..., None, :])
            adj.mul_(dirn.decay(s, q, A, a))  # now decay * adjoint: the carry into step q - 1
            torch.mul(adj, states[q - 1] if q > 0 else starts, out=via_decay)  # d loss / d(dt * A)
            torch.addcmul(torch.linalg.vecdot(via_decay, A), dirn.u[s, q], sum_B, out=g["dt"][s, q])
            g["A"].addcmul_(via_decay, dirn.dt[s, q, ..., None])
        carry = adj[:, :, 0]
    return g


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, orders, lanes, steps):
        cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
        b, d, L = u.shape
        N = A.shape[1]
        auto_lanes, auto_steps = default_blocking(b, d, N, L, u.device)
        lanes, steps = lanes or auto_lanes, steps or auto_steps
        segments = -(-L // (lanes * steps))
        dt, u_g, Bg, Cg, G = _prepare_common(u, delta, A, B, C, delta_bias, delta_softplus, cdt)
        A_g = A.to(cdt).reshape(G, 1, d // G, N)
        perms = [None] if orders is None else list(orders)
        y = u.new_zeros(b, d, L, dtype=cdt)
        all_states = []
        for perm in perms:
            dirn = _Direction(dt, u_g, Bg, Cg, perm, segments, lanes, steps)
            y_k, seg_states = _forward_direction(dirn, A_g)
            y_k = _from_blocked(y_k, L).reshape(b, d, L)
            y = y + y_k if perm is None else y.index_add(2, perm, y_k)
            all_states.append(seg_states)
        if D is not None:
            y = y + D.to(cdt)[:, None] * u.to(cdt) * _visits(orders, L, y)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, orders, torch.stack(all_states))
        ctx.config = (delta_softplus, lanes, steps, segments)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, orders, all_states = ctx.saved_tensors
        delta_softplus, lanes, steps, segments = ctx.config
        cdt = all_states.dtype
        b, d, L = u.shape
        N = A.shape[1]
        dt, u_g, Bg, Cg, G = _prepare_common(u, delta, A, B, C, delta_bias, delta_softplus, cdt)
        r = d // G
        A_g = A.to(cdt).reshape(G, 1, r, N)
        gy = grad_y.to(cdt)
        perms = [None] if orders is None else list(orders)
        totals = {"dt": u.new_zeros(b, G, r, L, dtype=cdt), "u": u.new_zeros(b, G, r, L, dtype=cdt),
                  "B": u.new_zeros(b, G, N, L, dtype=cdt), "C": u.new_zeros(b, G, N, L, dtype=cdt)}
        g_A = A_g.new_zeros(G, r, N)
        for k, perm in enumerate(perms):
            dirn = _Direction(dt, u_g, Bg, Cg, perm, segments, lanes, steps)
            gy_k = _to_blocked(gy.reshape(b, G, r, L), perm, segments, lanes, steps)
            grads = _backward_direction(dirn, gy_k, A_g, all_states[k])
            g_A += grads.pop("A").sum((0, 2))
            for name, total in totals.items():
                part = _from_blocked(grads[name], L)
                if perm is None:
                    total += part
                else:
                    total.index_add_(3, perm, part)
        visits = _visits(orders, L, gy)
        g_u = totals["u"].view(b, d, L)
        if D is not None:
            g_u = g_u + D.to(cdt)[:, None] * gy * visits
        g_delta = totals["dt"].view(b, d, L)
        if delta_softplus:
            pre = delta.to(cdt) if delta_bias is None else delta.to(cdt) + delta_bias.to(cdt)[:, None]
            g_delta = g_delta * torch.where(pre > 20, torch.ones_like(pre), torch.sigmoid(pre))
        g_D = None if D is None else (gy * u.to(cdt) * visits).sum((0, 2)).to(D.dtype)
        g_bias = None if delta_bias is None else g_delta.sum((0, 2)).to(delta_bias.dtype)
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.view(d, N).to(A.dtype), _ungroup_grad(totals["B"], B),
                _ungroup_grad(totals["C"], C), g_D, g_bias, None, None, None, None)


def _prepare_common(u, delta, A, B, C, delta_bias, delta_softplus, cdt):
    """dt and u as (b, G, r, L), dt after bias and softplus; B, C as (b, G, N, L); all in the compute dtype.
    G is the group count."""
    b, d, L = u.shape
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg, Cg = _grouped(B).to(cdt), _grouped(C).to(cdt)
    G = max(Bg.shape[1], Cg.shape[1])
    if Bg.shape[1] not in (1, G) or Cg.shape[1] not in (1, G):
        raise ValueError(f"B and C group counts must match or one of them be 1, got {Bg.shape[1]} and {Cg.shape[1]}")
    Bg = Bg.expand(b, G, *Bg.shape[2:])
    Cg = Cg.expand(b, G, *Cg.shape[2:])
    return dt.reshape(b, G, d // G, L), u.to(cdt).reshape(b, G, d // G, L), Bg, Cg, G


def _ungroup_grad(g: Tensor, like: Tensor) -> Tensor:
    """Gradient (b, G, N, L) back to the shape of B or C: (b, N, L) or (b, g, N, L), summing expanded groups."""
    groups = 1 if like.dim() == 3 else like.shape[1]
    if groups != g.shape[1]:
        g = g.sum(1, keepdim=True)
    if like.dim() == 3:
        g = g[:, 0]
    return g.to(like.dtype)


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    orders: Tensor | None = None,
    lanes: int | None = None,
    steps: int | None = None,
) -> Tensor:
    """Selective scan by chunks (see the module docstring); same signature and semantics as
    ``selective_scan_reference``, plus the blocking knobs ``lanes`` and ``steps`` (default: ``default_blocking``).

    Shapes: u, delta (b, d, L); A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,); orders (K, L).
    Returns (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    if orders is not None:
        orders = orders.to(device=u.device, dtype=torch.long)
    return _ChunkedScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, lanes, steps)
