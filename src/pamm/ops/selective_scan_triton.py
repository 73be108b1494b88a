"""Selective scan as Triton kernels: one launch covers every scan order (direction) of every channel group.

Each program owns one batch element and a block of ``block_d`` channels of one B/C group, keeps the state
(block_d, N) in registers in the compute dtype (float32, float64 for float64 inputs) and walks the K scan orders one
after another, 4 steps per loop iteration. All of an iteration's loads (its 4 steps' inputs and what the earlier
orders accumulated at their positions) are issued before its first store: the compiler cannot move a load above a
store it cannot prove disjoint, and each such load would cost a memory round trip per step (docs/kernel-notes.md).
Inputs are read where they lie, through the order's indices: no permuted copies. Outputs of the K orders are summed
in place by the program that owns them (a read-modify-write per order after the first; deterministic, no atomics).

Decays are ``exp2(dt * A * log2(e))`` with ``A * log2(e)`` precomputed. The forward pass saves the state every
``chunk`` steps of every order, (b, K, L / chunk, d, N) values. The backward kernel walks each order backwards one
chunk at a time: it recomputes the chunk's states from its saved start (keeping every 4th in a small per-program
scratch), then per 4-step group recomputes the 4 states in registers and runs the adjoint recurrence through them.
Gradients of B and C (sums over a group's channels) go to per-channel-block partial sums that PyTorch adds up; gA,
gD and g(delta_bias) to per-batch-element partials. Nothing of size (b, d, L, N) is ever stored.

Every row of ``orders`` must be a permutation of 0..L-1 (what ``scan_orders`` returns): a repeated position within
one order would be updated twice in one read-modify-write.
"""

from __future__ import annotations

import math
import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from .selective_scan import _check_inputs, _grouped, triton_kernel

__all__ = ["selective_scan_triton", "kernel_config"]

_ROWS = 4  # steps per loop iteration (the code below is unrolled for exactly 4)


@triton.jit
def _softplus(x):
    # log1p(exp(x)) with a log1p that stays accurate for tiny exp(x); x itself above PyTorch's threshold 20
    e = tl.exp(x)
    v = 1.0 + e
    log1p = tl.where(v == 1.0, e, tl.log(v) * (e / (v - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _softplus_grad(x):
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, 1.0, e / (1.0 + e))


@triton.jit
def _load_step(t, L, order_ptr, u_ptr, d_ptr, B_ptr, C_ptr, su_l, sd_l, sB_l, sC_l, u_cols, d_cols, B_cols, C_cols,
               c_mask, n_mask, bias, HAS_ORDERS: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               LOAD_C: tl.constexpr):
    """Step t of the current order: position, u, pre-softplus delta, dt (block_d,; dt = 0 past the end) and the
    B and C rows, broadcast over the block's channels (block_d, N_BLOCK) so that they share the state's layout."""
    valid = t < L
    if HAS_ORDERS:
        pos = tl.load(order_ptr + t, mask=valid, other=0)
    else:
        pos = t
    cm = c_mask & valid
    u = tl.load(u_ptr + pos * su_l + u_cols, mask=cm, other=0.0).to(bias.dtype)
    pre = tl.load(d_ptr + pos * sd_l + d_cols, mask=cm, other=0.0).to(bias.dtype)
    if HAS_BIAS:
        pre += bias
    if SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    dt = tl.where(cm, dt, 0.0)
    Bv = tl.load(B_ptr + pos * sB_l + B_cols, mask=n_mask & valid, other=0.0).to(bias.dtype)
    if LOAD_C:
        Cv = tl.load(C_ptr + pos * sC_l + C_cols, mask=n_mask & valid, other=0.0).to(bias.dtype)
    else:
        Cv = Bv
    return pos, u, pre, dt, Bv, Cv


@triton.jit
def _advance(h, A2, dt, u, Bv):
    """One step of the recurrence: returns the new state and the decay exp2(dt * A2)."""
    a = tl.exp2(dt[:, None] * A2)
    return a * h + (dt * u)[:, None] * Bv, a


@triton.jit
def _earlier(t, L, k, pos, ptr, s_l, cols, mask):
    """What the earlier orders accumulated at step t's position (0 during the first order). Loaded with the step's
    inputs, before any store of the iteration: a load after a store cannot be hoisted by the compiler (it cannot
    know that the positions differ), which would cost a memory round trip per step."""
    return tl.load(ptr + pos * s_l + cols, mask=mask & (t < L) & (k > 0), other=0.0)


@triton.jit
def _forward_output(t, L, pos, h, u, Cv, Dv, y_old, y_ptr, sy_l, y_cols, c_mask, HAS_D: tl.constexpr):
    """Write step t's output plus what the earlier orders accumulated there."""
    y = tl.sum(h * Cv, axis=1) + y_old
    if HAS_D:
        y += Dv * u
    tl.store(y_ptr + pos * sy_l + y_cols, y, mask=c_mask & (t < L))


@triton.jit
def _scan_fwd_kernel(
    u_ptr, d_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, orders_ptr, y_ptr, states_ptr,
    L, K, chans_per_group, num_chunks,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sy_b, sy_c, sy_l,
    N: tl.constexpr, N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDERS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_total = chans_per_group * tl.num_programs(1)
    c_local = pid_c * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = c_local < chans_per_group
    ch = pid_g * chans_per_group + c_local
    n = tl.arange(0, N_BLOCK)
    if N == N_BLOCK:  # no mask along the state: keeps its loads vectorised
        n_mask = tl.full((1, N_BLOCK), 1, tl.int1)
    else:
        n_mask = (n < N)[None, :]
    cn_mask = c_mask[:, None] & n_mask
    A2 = tl.load(A2_ptr + ch[:, None] * N + n[None, :], mask=cn_mask, other=0.0)
    cdt = A2.dtype
    bias = tl.zeros((BLOCK_D,), dtype=cdt)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=c_mask, other=0.0)
    Dv = tl.zeros((BLOCK_D,), dtype=cdt)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=c_mask, other=0.0)
    u_base = u_ptr + pid_b * su_b
    d_base = d_ptr + pid_b * sd_b
    B_base = B_ptr + pid_b * sB_b + pid_g * sB_g
    C_base = C_ptr + pid_b * sC_b + pid_g * sC_g
    y_base = y_ptr + pid_b * sy_b
    u_cols = ch * su_c
    d_cols = ch * sd_c
    row = tl.zeros((BLOCK_D, 1), dtype=tl.int32)  # B and C rows are read as (block_d, N) broadcasts
    B_cols = row + n[None, :] * sB_n
    C_cols = row + n[None, :] * sC_n
    y_cols = ch * sy_c
    for k in range(K):
        order = orders_ptr + k * L
        h = tl.zeros((BLOCK_D, N_BLOCK), dtype=cdt)
        for j in range(num_chunks):
            if SAVE_STATES:
                s_ptrs = states_ptr + ((pid_b * K + k) * num_chunks + j) * d_total * N + ch[:, None] * N + n[None, :]
                tl.store(s_ptrs, h, mask=cn_mask)
            for t in range(j * CHUNK, tl.minimum(j * CHUNK + CHUNK, L), 4):
                p0, u0, _, dt0, B0, C0 = _load_step(t, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l,
                                                    sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                    HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p1, u1, _, dt1, B1, C1 = _load_step(t + 1, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                    sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                    HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p2, u2, _, dt2, B2, C2 = _load_step(t + 2, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                    sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                    HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p3, u3, _, dt3, B3, C3 = _load_step(t + 3, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                    sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                    HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                y0 = _earlier(t, L, k, p0, y_base, sy_l, y_cols, c_mask)
                y1 = _earlier(t + 1, L, k, p1, y_base, sy_l, y_cols, c_mask)
                y2 = _earlier(t + 2, L, k, p2, y_base, sy_l, y_cols, c_mask)
                y3 = _earlier(t + 3, L, k, p3, y_base, sy_l, y_cols, c_mask)
                h, _ = _advance(h, A2, dt0, u0, B0)
                _forward_output(t, L, p0, h, u0, C0, Dv, y0, y_base, sy_l, y_cols, c_mask, HAS_D)
                h, _ = _advance(h, A2, dt1, u1, B1)
                _forward_output(t + 1, L, p1, h, u1, C1, Dv, y1, y_base, sy_l, y_cols, c_mask, HAS_D)
                h, _ = _advance(h, A2, dt2, u2, B2)
                _forward_output(t + 2, L, p2, h, u2, C2, Dv, y2, y_base, sy_l, y_cols, c_mask, HAS_D)
                h, _ = _advance(h, A2, dt3, u3, B3)
                _forward_output(t + 3, L, p3, h, u3, C3, Dv, y3, y_base, sy_l, y_cols, c_mask, HAS_D)
        tl.debug_barrier()  # the next order reads outputs other threads of this program wrote


@triton.jit
def _grad_step(ghd, h_prev, h, a, A2, ln2, u, dt, Bv, Cv, gy):
    """Adjoint of one step, going backwards. ghd: decay(t+1) * adjoint(t+1). Returns the carry for step t-1,
    d loss/dA contribution (block_d, N), du, d dt (block_d,), dB, dC (1, N) summed over the block's channels."""
    gh = ghd + gy[:, None] * Cv
    sum_B = tl.sum(gh * Bv, axis=1)
    via_decay = gh * a * h_prev  # d loss / d(dt * A)
    g_dt = u * sum_B + ln2 * tl.sum(via_decay * A2, axis=1)
    g_B = tl.sum(gh * (dt * u)[:, None], axis=0, keep_dims=True)
    g_C = tl.sum(h * gy[:, None], axis=0, keep_dims=True)
    return a * gh, dt[:, None] * via_decay, dt * sum_B, g_dt, g_B, g_C


@triton.jit
def _earlier_grads(t, L, k, pos, gu_ptr, sgu_l, gu_cols, gd_ptr, sgd_l, gd_cols, gB_ptr, gC_ptr, n, c_mask, n_mask,
                   N: tl.constexpr):
    """The gradients the earlier orders accumulated at step t's position: du, d delta (block_d,), dB, dC partials
    (1, N). Loaded with the step's inputs (see ``_earlier``)."""
    g_u = _earlier(t, L, k, pos, gu_ptr, sgu_l, gu_cols, c_mask)
    g_d = _earlier(t, L, k, pos, gd_ptr, sgd_l, gd_cols, c_mask)
    g_B = _earlier(t, L, k, pos, gB_ptr, N, n[None, :], n_mask)
    g_C = _earlier(t, L, k, pos, gC_ptr, N, n[None, :], n_mask)
    return g_u, g_d, g_B, g_C


@triton.jit
def _backward_outputs(t, L, pos, pre, u, gy, g_u, g_dt, g_B, g_C, gu_old, gd_old, gB_old, gC_old, Dv, gu_ptr,
                      sgu_l, gu_cols, gd_ptr, sgd_l, gd_cols, gB_ptr, gC_ptr, n, c_mask, n_mask, N: tl.constexpr,
                      HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Write step t's gradients plus the earlier orders' at its position; returns (gy * u, g_delta) for the D and
    bias sums."""
    valid = t < L
    m = c_mask & valid
    if HAS_D:
        g_u += Dv * gy
    if SOFTPLUS:
        g_dt = g_dt * _softplus_grad(pre)
    g_dt = tl.where(m, g_dt, 0.0)
    tl.store(gu_ptr + pos * sgu_l + gu_cols, g_u + gu_old, mask=m)
    tl.store(gd_ptr + pos * sgd_l + gd_cols, g_dt + gd_old, mask=m)
    nm = n_mask & valid
    tl.store(gB_ptr + pos * N + n[None, :], g_B + gB_old, mask=nm)
    tl.store(gC_ptr + pos * N + n[None, :], g_C + gC_old, mask=nm)
    return gy * u, g_dt


@triton.jit
def _scan_bwd_kernel(
    u_ptr, d_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, orders_ptr, gy_ptr, states_ptr, scratch_ptr, ln2_ptr,
    gu_ptr, gd_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr,
    L, K, chans_per_group, num_chunks,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sgy_b, sgy_c, sgy_l,
    sgu_b, sgu_c, sgu_l, sgd_b, sgd_c, sgd_l,
    N: tl.constexpr, N_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDERS: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_blocks = tl.num_programs(0)
    n_groups = tl.num_programs(1)
    d_total = chans_per_group * n_groups
    c_local = pid_c * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = c_local < chans_per_group
    ch = pid_g * chans_per_group + c_local
    n = tl.arange(0, N_BLOCK)
    if N == N_BLOCK:  # no mask along the state: keeps its loads vectorised
        n_mask = tl.full((1, N_BLOCK), 1, tl.int1)
    else:
        n_mask = (n < N)[None, :]
    cn_mask = c_mask[:, None] & n_mask
    cn_offs = ch[:, None] * N + n[None, :]
    A2 = tl.load(A2_ptr + cn_offs, mask=cn_mask, other=0.0)
    cdt = A2.dtype
    ln2 = tl.load(ln2_ptr)
    bias = tl.zeros((BLOCK_D,), dtype=cdt)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=c_mask, other=0.0)
    Dv = tl.zeros((BLOCK_D,), dtype=cdt)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=c_mask, other=0.0)
    u_base = u_ptr + pid_b * su_b
    d_base = d_ptr + pid_b * sd_b
    B_base = B_ptr + pid_b * sB_b + pid_g * sB_g
    C_base = C_ptr + pid_b * sC_b + pid_g * sC_g
    gy_base = gy_ptr + pid_b * sgy_b
    gu_base = gu_ptr + pid_b * sgu_b
    gd_base = gd_ptr + pid_b * sgd_b
    part = (pid_c * tl.num_programs(2) + pid_b) * n_groups + pid_g  # this program's (block, batch, group) partial
    gB_base = gB_ptr + part * L * N
    gC_base = gC_ptr + part * L * N
    u_cols = ch * su_c
    d_cols = ch * sd_c
    row = tl.zeros((BLOCK_D, 1), dtype=tl.int32)  # B and C rows are read as (block_d, N) broadcasts
    B_cols = row + n[None, :] * sB_n
    C_cols = row + n[None, :] * sC_n
    gy_cols = ch * sgy_c
    gu_cols = ch * sgu_c
    gd_cols = ch * sgd_c
    scratch = scratch_ptr + ((pid_b * n_groups + pid_g) * n_blocks + pid_c) * (CHUNK // 4) * BLOCK_D * N_BLOCK
    sc_offs = tl.arange(0, BLOCK_D)[:, None] * N_BLOCK + n[None, :]
    g_A = tl.zeros((BLOCK_D, N_BLOCK), dtype=cdt)
    g_D = tl.zeros((BLOCK_D,), dtype=cdt)
    g_bias = tl.zeros((BLOCK_D,), dtype=cdt)
    for k in range(K):
        order = orders_ptr + k * L
        ghd = tl.zeros((BLOCK_D, N_BLOCK), dtype=cdt)
        for jj in range(num_chunks):
            j = num_chunks - 1 - jj
            start = j * CHUNK
            n_tiles = (tl.minimum(start + CHUNK, L) - start + 3) // 4
            s_ptrs = states_ptr + ((pid_b * K + k) * num_chunks + j) * d_total * N + cn_offs
            h = tl.load(s_ptrs, mask=cn_mask, other=0.0)
            for i in range(n_tiles):  # recompute the chunk, keeping the state before every 4 steps
                tl.store(scratch + i * BLOCK_D * N_BLOCK + sc_offs, h)
                t = start + 4 * i
                _, u0, _, dt0, B0, _ = _load_step(t, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l, sC_l,
                                                  u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias, HAS_ORDERS,
                                                  HAS_BIAS, SOFTPLUS, False)
                _, u1, _, dt1, B1, _ = _load_step(t + 1, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l,
                                                  sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                  HAS_ORDERS, HAS_BIAS, SOFTPLUS, False)
                _, u2, _, dt2, B2, _ = _load_step(t + 2, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l,
                                                  sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                  HAS_ORDERS, HAS_BIAS, SOFTPLUS, False)
                _, u3, _, dt3, B3, _ = _load_step(t + 3, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l,
                                                  sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                  HAS_ORDERS, HAS_BIAS, SOFTPLUS, False)
                h, _ = _advance(h, A2, dt0, u0, B0)
                h, _ = _advance(h, A2, dt1, u1, B1)
                h, _ = _advance(h, A2, dt2, u2, B2)
                h, _ = _advance(h, A2, dt3, u3, B3)
            tl.debug_barrier()
            for ii in range(n_tiles):
                i = n_tiles - 1 - ii
                t = start + 4 * i
                h_in = tl.load(scratch + i * BLOCK_D * N_BLOCK + sc_offs)
                p0, u0, pre0, dt0, B0, C0 = _load_step(t, L, order, u_base, d_base, B_base, C_base, su_l, sd_l, sB_l,
                                                       sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask, bias,
                                                       HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p1, u1, pre1, dt1, B1, C1 = _load_step(t + 1, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                       sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask,
                                                       bias, HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p2, u2, pre2, dt2, B2, C2 = _load_step(t + 2, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                       sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask,
                                                       bias, HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                p3, u3, pre3, dt3, B3, C3 = _load_step(t + 3, L, order, u_base, d_base, B_base, C_base, su_l, sd_l,
                                                       sB_l, sC_l, u_cols, d_cols, B_cols, C_cols, c_mask, n_mask,
                                                       bias, HAS_ORDERS, HAS_BIAS, SOFTPLUS, True)
                gy0 = tl.load(gy_base + p0 * sgy_l + gy_cols, mask=c_mask & (t < L), other=0.0).to(cdt)
                gy1 = tl.load(gy_base + p1 * sgy_l + gy_cols, mask=c_mask & (t + 1 < L), other=0.0).to(cdt)
                gy2 = tl.load(gy_base + p2 * sgy_l + gy_cols, mask=c_mask & (t + 2 < L), other=0.0).to(cdt)
                gy3 = tl.load(gy_base + p3 * sgy_l + gy_cols, mask=c_mask & (t + 3 < L), other=0.0).to(cdt)
                gu_old0, gd_old0, gB_old0, gC_old0 = _earlier_grads(
                    t, L, k, p0, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n,
                    c_mask, n_mask, N)
                gu_old1, gd_old1, gB_old1, gC_old1 = _earlier_grads(
                    t + 1, L, k, p1, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n,
                    c_mask, n_mask, N)
                gu_old2, gd_old2, gB_old2, gC_old2 = _earlier_grads(
                    t + 2, L, k, p2, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n,
                    c_mask, n_mask, N)
                gu_old3, gd_old3, gB_old3, gC_old3 = _earlier_grads(
                    t + 3, L, k, p3, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n,
                    c_mask, n_mask, N)
                h0, a0 = _advance(h_in, A2, dt0, u0, B0)
                h1, a1 = _advance(h0, A2, dt1, u1, B1)
                h2, a2 = _advance(h1, A2, dt2, u2, B2)
                h3, a3 = _advance(h2, A2, dt3, u3, B3)
                ghd, dA, gu3, gdt3, gB3, gC3 = _grad_step(ghd, h2, h3, a3, A2, ln2, u3, dt3, B3, C3, gy3)
                g_A += dA
                ghd, dA, gu2, gdt2, gB2, gC2 = _grad_step(ghd, h1, h2, a2, A2, ln2, u2, dt2, B2, C2, gy2)
                g_A += dA
                ghd, dA, gu1, gdt1, gB1, gC1 = _grad_step(ghd, h0, h1, a1, A2, ln2, u1, dt1, B1, C1, gy1)
                g_A += dA
                ghd, dA, gu0, gdt0, gB0, gC0 = _grad_step(ghd, h_in, h0, a0, A2, ln2, u0, dt0, B0, C0, gy0)
                g_A += dA
                gyu, gd = _backward_outputs(
                    t + 3, L, p3, pre3, u3, gy3, gu3, gdt3, gB3, gC3, gu_old3, gd_old3, gB_old3,
                    gC_old3, Dv, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n, c_mask,
                    n_mask, N, HAS_D, SOFTPLUS)
                g_D += gyu
                g_bias += gd
                gyu, gd = _backward_outputs(
                    t + 2, L, p2, pre2, u2, gy2, gu2, gdt2, gB2, gC2, gu_old2, gd_old2, gB_old2,
                    gC_old2, Dv, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n, c_mask,
                    n_mask, N, HAS_D, SOFTPLUS)
                g_D += gyu
                g_bias += gd
                gyu, gd = _backward_outputs(
                    t + 1, L, p1, pre1, u1, gy1, gu1, gdt1, gB1, gC1, gu_old1, gd_old1, gB_old1,
                    gC_old1, Dv, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n, c_mask,
                    n_mask, N, HAS_D, SOFTPLUS)
                g_D += gyu
                g_bias += gd
                gyu, gd = _backward_outputs(
                    t, L, p0, pre0, u0, gy0, gu0, gdt0, gB0, gC0, gu_old0, gd_old0, gB_old0,
                    gC_old0, Dv, gu_base, sgu_l, gu_cols, gd_base, sgd_l, gd_cols, gB_base, gC_base, n, c_mask,
                    n_mask, N, HAS_D, SOFTPLUS)
                g_D += gyu
                g_bias += gd
            tl.debug_barrier()  # the scratch is refilled next; the next order re-reads accumulated gradients
    tl.store(gA_ptr + pid_b * d_total * N + cn_offs, g_A, mask=cn_mask)
    tl.store(gD_ptr + pid_b * d_total + ch, g_D, mask=c_mask)
    tl.store(gbias_ptr + pid_b * d_total + ch, g_bias, mask=c_mask)


def kernel_config(state: int, chans_per_group: int) -> dict[str, int]:
    """Launch parameters by state size: channels and warps per program of the forward (``block_d``,
    ``num_warps``) and backward (``bwd_block_d``, ``bwd_num_warps``) kernels, and ``chunk``, the steps between
    saved states (a multiple of 4). Chosen from the sweep in benchmarks/scan.py (docs/kernel-notes.md)."""
    if state <= 16:  # H100, NYUD stage: (16, 2) beat (64, 4) 7.4 vs 8.0 ms forward
        cfg = {"block_d": 16, "num_warps": 2, "bwd_block_d": 16, "bwd_num_warps": 2}
    elif state <= 32:  # not measured: between the two
        cfg = {"block_d": 16, "num_warps": 2, "bwd_block_d": 16, "bwd_num_warps": 4}
    else:  # H100, PASCAL stage (N=64): (8, 2) beat (32, 8) 26.7 vs 69.5 ms forward
        cfg = {"block_d": 8, "num_warps": 2, "bwd_block_d": 16, "bwd_num_warps": 4}
    cap = max(4, triton.next_power_of_2(chans_per_group))
    cfg["block_d"] = min(cfg["block_d"], cap)
    cfg["bwd_block_d"] = min(cfg["bwd_block_d"], cap)
    cfg["chunk"] = 64
    return cfg


_checked_orders: dict[int, tuple[weakref.ref, int]] = {}  # id -> (the tensor, its version when checked)


def _check_permutations(orders: Tensor) -> None:
    """Raise unless every row of ``orders`` is a permutation; each orders tensor is checked once (one sync) while
    it lives and is not modified."""
    known = _checked_orders.get(id(orders))
    if known is not None and known[0]() is orders and known[1] == orders._version:
        return
    expected = torch.arange(orders.shape[1], device=orders.device)
    if not bool((orders.sort(dim=1).values == expected).all()):
        raise ValueError("the triton selective scan needs every row of orders to be a permutation of 0..L-1")
    key = id(orders)
    _checked_orders[key] = (weakref.ref(orders, lambda _, key=key: _checked_orders.pop(key, None)), orders._version)


def _launch_args(u, delta, A, B, C, D, delta_bias, orders, block_d, chunk):
    """Shared launch preparation: compute-dtype parameters, group layout, grid and strides."""
    b, d, L = u.shape
    N = A.shape[1]
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bg, Cg = _grouped(B), _grouped(C)
    G = max(Bg.shape[1], Cg.shape[1])
    if Bg.shape[1] not in (1, G) or Cg.shape[1] not in (1, G):
        raise ValueError(f"B and C group counts must match or one of them be 1, got {Bg.shape[1]} and {Cg.shape[1]}")
    cpg = d // G
    A2 = (A.to(cdt) * math.log2(math.e)).contiguous()
    Dc = D.to(cdt).contiguous() if D is not None else A2
    bias = delta_bias.to(cdt).contiguous() if delta_bias is not None else A2
    if orders is None:
        order_ids = torch.zeros(1, dtype=torch.int32, device=u.device)
        K = 1
    else:
        order_ids = orders.to(device=u.device, dtype=torch.int32).contiguous()
        K = orders.shape[0]
    grid = (triton.cdiv(cpg, block_d), G, b)
    B_strides = (Bg.stride(0), Bg.stride(1) if Bg.shape[1] > 1 else 0, Bg.stride(2), Bg.stride(3))
    C_strides = (Cg.stride(0), Cg.stride(1) if Cg.shape[1] > 1 else 0, Cg.stride(2), Cg.stride(3))
    return dict(cdt=cdt, G=G, cpg=cpg, K=K, A2=A2, D=Dc, bias=bias, orders=order_ids, Bg=Bg, Cg=Cg, grid=grid,
                strides=(*u.stride(), *delta.stride(), *B_strides, *C_strides),
                num_chunks=triton.cdiv(L, chunk), N_BLOCK=triton.next_power_of_2(N))


def _flags(D, delta_bias, delta_softplus, orders):
    return dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                HAS_ORDERS=orders is not None)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, orders, cfg):
        b, d, L = u.shape
        N = A.shape[1]
        args = _launch_args(u, delta, A, B, C, D, delta_bias, orders, cfg["block_d"], cfg["chunk"])
        save = any(ctx.needs_input_grad)
        y = torch.empty_like(u, dtype=args["cdt"])
        states = (torch.empty(b, args["K"], args["num_chunks"], d, N, dtype=args["cdt"], device=u.device) if save
                  else y)
        _scan_fwd_kernel[args["grid"]](
            u, delta, args["A2"], args["Bg"], args["Cg"], args["D"], args["bias"], args["orders"], y, states,
            L, args["K"], args["cpg"], args["num_chunks"], *args["strides"], *y.stride(),
            N=N, N_BLOCK=args["N_BLOCK"], BLOCK_D=cfg["block_d"], CHUNK=cfg["chunk"],
            **_flags(D, delta_bias, delta_softplus, orders), SAVE_STATES=save, num_warps=cfg["num_warps"],
        )
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, orders, states)
            ctx.config = (delta_softplus, cfg)
        return y if y.dtype == u.dtype else y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, orders, states = ctx.saved_tensors
        delta_softplus, cfg = ctx.config
        b, d, L = u.shape
        N = A.shape[1]
        args = _launch_args(u, delta, A, B, C, D, delta_bias, orders, cfg["bwd_block_d"], cfg["chunk"])
        cdt, G, grid = args["cdt"], args["G"], args["grid"]
        n_parts = grid[0]
        g_u = torch.empty_like(u, dtype=cdt)
        g_delta = torch.empty_like(delta, dtype=cdt)
        g_B = u.new_empty(n_parts, b, G, L, N, dtype=cdt)
        g_C = torch.empty_like(g_B)
        g_A = u.new_empty(b, d, N, dtype=cdt)
        g_D = u.new_empty(b, d, dtype=cdt)
        g_bias = torch.empty_like(g_D)
        scratch = u.new_empty(grid[0] * grid[1] * grid[2], cfg["chunk"] // _ROWS, cfg["bwd_block_d"],
                              args["N_BLOCK"], dtype=cdt)
        ln2 = torch.full((1,), math.log(2.0), dtype=cdt, device=u.device)
        _scan_bwd_kernel[grid](
            u, delta, args["A2"], args["Bg"], args["Cg"], args["D"], args["bias"], args["orders"], grad_y, states,
            scratch, ln2, g_u, g_delta, g_B, g_C, g_A, g_D, g_bias,
            L, args["K"], args["cpg"], args["num_chunks"], *args["strides"], *grad_y.stride(), *g_u.stride(),
            *g_delta.stride(), N=N, N_BLOCK=args["N_BLOCK"], BLOCK_D=cfg["bwd_block_d"], CHUNK=cfg["chunk"],
            **_flags(D, delta_bias, delta_softplus, orders), num_warps=cfg["bwd_num_warps"],
        )
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.sum(0).to(A.dtype),
                _partials_to(g_B, B), _partials_to(g_C, C),
                None if D is None else g_D.sum(0).to(D.dtype),
                None if delta_bias is None else g_bias.sum(0).to(delta_bias.dtype), None, None, None)


def _partials_to(partials: Tensor, like: Tensor) -> Tensor:
    """Per-channel-block partial gradients (blocks, b, G, L, N) -> the shape of B or C."""
    g = partials.sum(0).transpose(2, 3)  # (b, G, N, L)
    groups = 1 if like.dim() == 3 else like.shape[1]
    if groups != g.shape[1]:
        g = g.sum(1, keepdim=True)
    if like.dim() == 3:
        g = g[:, 0]
    return g.to(like.dtype)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    orders: Tensor | None = None,
    config: dict[str, int] | None = None,
    kernel: str | None = None,
) -> Tensor:
    """Selective scan through the Triton kernels; same signature and semantics as ``selective_scan_reference``
    (every row of ``orders`` must be a permutation), plus ``config``: launch parameters overriding those of the
    variant's ``kernel_config``, and ``kernel``: ``"v2"`` (this module) or ``"v3"`` (tiled,
    ``selective_scan_triton_tiled``); None: $PAMM_SCAN_KERNEL, else ``DEFAULT_TRITON_KERNEL`` (v3).

    Shapes: u, delta (b, d, L) any strides; A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,);
    orders (K, L). Returns (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    On CPU tensors it runs only under Triton's interpreter (TRITON_INTERPRET=1).
    """
    if triton_kernel(kernel) == "v3":
        from .selective_scan_triton_tiled import selective_scan_triton_tiled

        return selective_scan_triton_tiled(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, config)
    _check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    if orders is not None:
        _check_permutations(orders)
    cfg = kernel_config(A.shape[1], u.shape[1] // max(_grouped(B).shape[1], _grouped(C).shape[1]))
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown triton scan config keys {sorted(unknown)}; expected some of {sorted(cfg)}")
    cfg.update(config or {})
    if cfg["chunk"] % _ROWS:
        raise ValueError(f"chunk must be a multiple of {_ROWS}, got {cfg['chunk']}")
    return _TritonScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, cfg)
