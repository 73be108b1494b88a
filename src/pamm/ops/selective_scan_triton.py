"""Selective scan as Triton kernels (the GPU backend): one launch covers every scan order of every channel group,
each order walked in tiles of ``tile`` steps with an associative scan along the tile's time axis.

One program per (batch element, block of ``block_d`` channels of one B/C group) walks the K orders one after
another and sums their outputs in place (deterministic, no atomics). Per tile, a program

1. gathers the whole tile at once: the tile's positions ``orders[k, t0:t0 + tile]`` as a vector, then (tile, block_d)
   tiles of u, delta (and of what the earlier orders accumulated there) and (tile, N) tiles of B and C, all issued
   together, one tile *ahead* of the arithmetic (software prefetch: the next tile's loads are in flight while the
   current tile is computed; positions two tiles ahead);
2. computes the decays a = exp2(dt * A * log2 e) and inputs b = dt * u * B as (tile, block_d, N) tensors, lets the
   carried state enter through row 0 (b_0 += a_0 * h) and runs ``tl.associative_scan`` along the tile's time axis
   with the combine of affine maps (a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2): only products of decays, never
   a division, so any |dt * A| stays finite;
3. reduces y_t = <h_t, C_t> + D u_t, adds the earlier orders' partial sums and stores the tile; the state after the
   tile's last row is carried on.

The tile tensors are laid out so that Triton's default layout keeps the time axis inside each thread (the scan is
a register recurrence) and, with ``ch_minor``, most of the state axis too (see ``_by_channel``); one warp per
program by default. float32 on NVIDIA GPUs uses ``ex2.approx.ftz`` (``fast_exp2``).

Backward, per order, walking the saved chunk boundaries (every ``chunk`` steps, a multiple of both tiles) from the
end: pass 1 recomputes the chunk tile by tile and keeps each tile's entry state in a small per-program scratch;
pass 2 visits the chunk's tiles in reverse and, per tile, runs two scans: a forward one that yields every row's
state *before* the step (an exclusive scan, through a 4-tuple combine that carries the exclusive aggregate beside the
inclusive one; so a_t * h_{t-1} is formed directly, never as h_t - b_t), and one for the adjoint,
q_t = a_t * (C_t * dy_t + q_{t+1}), run on the tile flipped in registers (``_flip_rows``; Triton's ``reverse=True``
scan shuffles every value across the warp), again exclusive so that dh_t = C_t * dy_t + q_{t+1} needs no shifted
decay.
Gradients of u and delta are written per position (summed over the orders in place); dB, dC go to per-channel-block
partials that PyTorch sums; dA, dD, d(delta_bias) to per-batch-element partials. Nothing of size (b, d, L, N) is
ever stored.

Every row of ``orders`` must be a permutation of 0..L-1 (a repeated position would be updated twice in one
read-modify-write, and the prefetch reads positions the current tile is about to write only if they repeat).
"""

from __future__ import annotations

import math
import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._scan_common import check_inputs, compute_dtype, group_count, grouped, ungroup_grad

__all__ = ["selective_scan_triton", "kernel_config", "resolve_config", "CONFIG_KEYS"]

CONFIG_KEYS = (
    "tile",
    "block_d",
    "num_warps",
    "ch_minor",
    "bwd_tile",
    "bwd_block_d",
    "bwd_num_warps",
    "bwd_ch_minor",
    "chunk",
    "fast_exp2",
    "maxnreg",
    "bwd_maxnreg",
)


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


# ---- scan combines ---------------------------------------------------------------------------------------------


@triton.jit
def _affine_combine(a_first, b_first, a_then, b_then):
    """Composition of x -> a_first * x + b_first, then x -> a_then * x + b_then."""
    return a_first * a_then, b_first * a_then + b_then


@triton.jit
def _affine_excl_combine(a_first, b_first, ea_first, eb_first, a_then, b_then, ea_then, eb_then):
    """Like ``_affine_combine`` on (a, b), plus the exclusive aggregate (ea, eb): the composition of all but the
    segment's last element. For a concatenation it is the first segment's full map then the second's exclusive one
    (ea_first, eb_first are not needed). Start every element at (a, b, 1, 0)."""
    return a_first * a_then, b_first * a_then + b_then, a_first * ea_then, b_first * ea_then + eb_then


# ---- tile helpers ----------------------------------------------------------------------------------------------


@triton.jit
def _positions(t0, L, order_ptr, rows, HAS_ORDERS: tl.constexpr):
    """Positions (tile,) visited at steps t0 + rows of the current order (0 outside 0..L-1, which is masked)."""
    t = t0 + rows
    if HAS_ORDERS:
        pos = tl.load(order_ptr + t, mask=(t >= 0) & (t < L), other=0)
    else:
        pos = tl.where((t >= 0) & (t < L), t, 0)
    return pos


@triton.jit
def _row_masks(t0, L, rows, c_mask, n_mask):
    """Masks of a tile's valid rows: (tile, block_d) for channel tensors, (tile, N_BLOCK) for B and C."""
    t = t0 + rows
    valid = (t >= 0) & (t < L)
    return valid[:, None] & c_mask[None, :], valid[:, None] & n_mask


@triton.jit
def _gather_rows(base, pos, s_l, cols, mask):
    """(tile, width) gather: row i is base[pos[i] * s_l + cols]; 0 where masked."""
    return tl.load(base + pos[:, None] * s_l + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _step_inputs(u_raw, pre_raw, cm, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """u and delta tiles in the compute dtype: u, pre-softplus delta (+ bias) and dt (0 on masked rows)."""
    u = u_raw.to(bias.dtype)
    pre = pre_raw.to(bias.dtype)
    if HAS_BIAS:
        pre += bias[None, :]
    if SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    return u, pre, tl.where(cm, dt, 0.0)


# The (tile, channels, state) tensors of a tile are laid out (tile, block_d, N_BLOCK) or, with CH_MINOR,
# (tile, N_BLOCK, block_d); the state of a program accordingly (block_d, N_BLOCK) or (N_BLOCK, block_d). Triton's
# default layout spreads the last axis over the lanes first and repeats the first (time) axis inside each thread,
# so the tile's scan is sequential in registers either way; CH_MINOR puts the channels on the lanes and part of the
# state axis in registers, which makes the sums over the state (y, du, d delta) cheaper and those over channels
# (dB, dC) dearer.


@triton.jit
def _by_channel(x, CH_MINOR: tl.constexpr):
    """(tile, block_d) -> broadcastable against a tile tensor."""
    if CH_MINOR:
        return x[:, None, :]
    else:
        return x[:, :, None]


@triton.jit
def _by_state(x, CH_MINOR: tl.constexpr):
    """(tile, N_BLOCK) -> broadcastable against a tile tensor."""
    if CH_MINOR:
        return x[:, :, None]
    else:
        return x[:, None, :]


@triton.jit
def _sum_over_state(x, CH_MINOR: tl.constexpr):
    """(tile, .., ..) -> (tile, block_d)."""
    if CH_MINOR:
        return tl.sum(x, axis=1)
    else:
        return tl.sum(x, axis=2)


@triton.jit
def _sum_over_channels(x, CH_MINOR: tl.constexpr):
    """(tile, .., ..) -> (tile, N_BLOCK)."""
    if CH_MINOR:
        return tl.sum(x, axis=2)
    else:
        return tl.sum(x, axis=1)


@triton.jit
def _state_grid(ch, n, c_mask, N: tl.constexpr, N_BLOCK: tl.constexpr, CH_MINOR: tl.constexpr):
    """Offsets ch * N + n and mask of a program's state (channels ch, state indices n), in its layout."""
    n_ok = n < N
    if N == N_BLOCK:
        n_ok = tl.full((N_BLOCK,), 1, tl.int1)
    if CH_MINOR:
        return n[:, None] + ch[None, :] * N, n_ok[:, None] & c_mask[None, :]
    else:
        return ch[:, None] * N + n[None, :], c_mask[:, None] & n_ok[None, :]


@triton.jit
def _exp2(x, FAST_EXP2: tl.constexpr):
    """2**x; FAST_EXP2 (float32 on NVIDIA GPUs only): one MUFU.EX2 with results below 2**-126 flushed to zero
    (``tl.exp2`` adds a denormal guard of three instructions to each)."""
    if FAST_EXP2:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _tile_states(dt, u, Bv, A2, h_before, rows, CH_MINOR: tl.constexpr, FAST_EXP2: tl.constexpr):
    """States after each row of the tile, (tile, state layout), from the state before the tile. Masked rows have
    dt = 0: decay 1, input 0, so the last row holds the state after the last valid one. The state before the tile
    enters through row 0's input (a_0 * h + b_0), so only the input part of the scan is used: with the time axis
    inside each thread the products of decays are dead code."""
    a = _exp2(_by_channel(dt, CH_MINOR) * A2[None, :, :], FAST_EXP2)
    b = _by_channel(dt * u, CH_MINOR) * _by_state(Bv, CH_MINOR)
    b = tl.where((rows == 0)[:, None, None], b + a * h_before[None, :, :], b)
    _, hs = tl.associative_scan((a, b), 0, _affine_combine)
    return hs


@triton.jit
def _flip_rows(x, TILE_BITS: tl.constexpr):
    """x reversed along its first axis (of 2**TILE_BITS rows). Each bit of the row index is complemented in turn:
    seen as a (2, ..., 2, rest) tensor, a size-2 axis holding (p, q) becomes (q, p) as p ^ (p ^ q) on the bit
    patterns. With the rows inside each thread this is register renaming, where Triton's ``reverse=True`` scan
    shuffles every value across the warp."""
    if x.dtype == tl.float64:
        bits = x.to(tl.int64, bitcast=True)
    else:
        bits = x.to(tl.int32, bitcast=True)
    bits = tl.reshape(bits, [2] * TILE_BITS + [x.shape[1], x.shape[2]])
    for i in tl.static_range(TILE_BITS):
        bits = bits ^ tl.xor_sum(bits, i, keep_dims=True)
    return tl.reshape(bits, x.shape).to(x.dtype, bitcast=True)


@triton.jit
def _row(x, rows, r: tl.constexpr):
    """Row r of a tile tensor (an exact select-and-sum over the time axis, which lies inside each thread)."""
    return tl.sum(tl.where((rows == r)[:, None, None], x, 0.0), axis=0)


# ---- forward ---------------------------------------------------------------------------------------------------


@triton.jit
def _scan_fwd_kernel(
    u_ptr,
    d_ptr,
    A2_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    bias_ptr,
    orders_ptr,
    y_ptr,
    states_ptr,
    L,
    K,
    chans_per_group,
    num_chunks,
    su_b,
    su_c,
    su_l,
    sd_b,
    sd_c,
    sd_l,
    sB_b,
    sB_g,
    sB_n,
    sB_l,
    sC_b,
    sC_g,
    sC_n,
    sC_l,
    sy_b,
    sy_c,
    sy_l,
    N: tl.constexpr,
    N_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_ORDERS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    CH_MINOR: tl.constexpr,
    FAST_EXP2: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_total = chans_per_group * tl.num_programs(1)
    c_local = pid_c * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = c_local < chans_per_group
    ch = pid_g * chans_per_group + c_local
    n = tl.arange(0, N_BLOCK)
    if N == N_BLOCK:  # no mask along the state: keeps the B, C row loads vectorised
        n_mask = tl.full((1, N_BLOCK), 1, tl.int1)
    else:
        n_mask = (n < N)[None, :]
    cn_offs, cn_mask = _state_grid(ch, n, c_mask, N, N_BLOCK, CH_MINOR)
    A2 = tl.load(A2_ptr + cn_offs, mask=cn_mask, other=0.0)
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
    y_cols = ch * sy_c
    B_cols = n * sB_n
    C_cols = n * sC_n
    rows = tl.arange(0, TILE)
    n_tiles = tl.cdiv(L, TILE)
    for k in range(K):
        order = orders_ptr + k * L
        h = tl.zeros(A2.shape, dtype=cdt)
        # prologue: the first tile's inputs, the second tile's positions
        pos = _positions(0, L, order, rows, HAS_ORDERS)
        cm, nm = _row_masks(0, L, rows, c_mask, n_mask)
        u_raw = _gather_rows(u_base, pos, su_l, u_cols, cm)
        pre_raw = _gather_rows(d_base, pos, sd_l, d_cols, cm)
        B_raw = _gather_rows(B_base, pos, sB_l, B_cols, nm)
        C_raw = _gather_rows(C_base, pos, sC_l, C_cols, nm)
        y_old = _gather_rows(y_base, pos, sy_l, y_cols, cm & (k > 0))
        pos_next = _positions(TILE, L, order, rows, HAS_ORDERS)
        for i in range(n_tiles):
            t0 = i * TILE
            # the next tile's loads, issued before this tile's arithmetic and stores (positions within one order
            # are distinct, so the y read-modify-write of the next tile cannot meet this tile's)
            cm_next, nm_next = _row_masks(t0 + TILE, L, rows, c_mask, n_mask)
            u_next = _gather_rows(u_base, pos_next, su_l, u_cols, cm_next)
            pre_next = _gather_rows(d_base, pos_next, sd_l, d_cols, cm_next)
            B_next = _gather_rows(B_base, pos_next, sB_l, B_cols, nm_next)
            C_next = _gather_rows(C_base, pos_next, sC_l, C_cols, nm_next)
            y_old_next = _gather_rows(y_base, pos_next, sy_l, y_cols, cm_next & (k > 0))
            pos_after = _positions(t0 + 2 * TILE, L, order, rows, HAS_ORDERS)
            if SAVE_STATES:  # the state entering each chunk (chunk is a multiple of the tile)
                s_ptrs = states_ptr + ((pid_b * K + k) * num_chunks + t0 // CHUNK) * d_total * N + cn_offs
                tl.store(s_ptrs, h, mask=cn_mask & (t0 % CHUNK == 0))
            u, _, dt = _step_inputs(u_raw, pre_raw, cm, bias, HAS_BIAS, SOFTPLUS)
            hs = _tile_states(dt, u, B_raw.to(cdt), A2, h, rows, CH_MINOR, FAST_EXP2)
            y = _sum_over_state(hs * _by_state(C_raw.to(cdt), CH_MINOR), CH_MINOR) + y_old
            if HAS_D:
                y += Dv[None, :] * u
            tl.store(y_base + pos[:, None] * sy_l + y_cols[None, :], y, mask=cm)
            h = _row(hs, rows, TILE - 1)
            pos, cm, nm = pos_next, cm_next, nm_next
            u_raw, pre_raw, B_raw, C_raw, y_old = u_next, pre_next, B_next, C_next, y_old_next
            pos_next = pos_after
        tl.debug_barrier()  # the next order reads outputs other threads of this program wrote


# ---- backward --------------------------------------------------------------------------------------------------


@triton.jit
def _tile_grads(
    u,
    pre,
    dt,
    Bv,
    Cv,
    gy,
    h_before,
    q_after_tile,
    A2,
    ln2,
    Dv,
    rows,
    cm,
    HAS_D: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    CH_MINOR: tl.constexpr,
    FAST_EXP2: tl.constexpr,
    TILE_BITS: tl.constexpr,
):
    """Adjoint of one tile. h_before: state before the tile (state layout); q_after_tile: decay(t) * dh_t of the
    step after the tile. Returns du, d delta (tile, block_d), dB, dC (tile, N_BLOCK) summed over the block's
    channels, dA (state layout) summed over the tile, and the carry for the tile before (decay * dh of row 0)."""
    first = (rows == 0)[:, None, None]
    last = (rows == rows.shape[0] - 1)[:, None, None]
    a = _exp2(_by_channel(dt, CH_MINOR) * A2[None, :, :], FAST_EXP2)
    dtu = dt * u
    b = _by_channel(dtu, CH_MINOR) * _by_state(Bv, CH_MINOR)
    b = tl.where(first, b + a * h_before[None, :, :], b)  # the state before the tile enters through row 0
    ones = tl.full(a.shape, 1.0, a.dtype)
    zeros = tl.zeros(a.shape, a.dtype)
    # states after (inclusive) and before (exclusive) each row
    _, h, _, h_prev = tl.associative_scan((a, b, ones, zeros), 0, _affine_excl_combine)
    h_prev = tl.where(first, h_before[None, :, :], h_prev)
    # adjoint, q_t = a_t * (c_t + q_{t+1}) with c_t = C_t dy_t, run from the tile's end (a forward scan of the
    # flipped tile); the carry enters through the last row; the exclusive part gives q_{t+1}
    c = _by_channel(gy, CH_MINOR) * _by_state(Cv, CH_MINOR)
    beta = a * tl.where(last, c + q_after_tile[None, :, :], c)
    _, q, _, q_next = tl.associative_scan(
        (_flip_rows(a, TILE_BITS), _flip_rows(beta, TILE_BITS), ones, zeros), 0, _affine_excl_combine
    )
    q = _flip_rows(q, TILE_BITS)
    q_next = _flip_rows(q_next, TILE_BITS)
    g = c + tl.where(last, q_after_tile[None, :, :], q_next)  # d loss / d h_t
    via_decay = q * h_prev  # d loss / d(dt * A) per row: decay * dh_t * h_{t-1}
    g_A = tl.sum(_by_channel(dt, CH_MINOR) * via_decay, axis=0)
    sum_gB = _sum_over_state(g * _by_state(Bv, CH_MINOR), CH_MINOR)
    g_u = dt * sum_gB
    if HAS_D:
        g_u += Dv[None, :] * gy
    g_dt = u * sum_gB + ln2 * _sum_over_state(via_decay * A2[None, :, :], CH_MINOR)
    if SOFTPLUS:
        g_dt = g_dt * _softplus_grad(pre)
    g_dt = tl.where(cm, g_dt, 0.0)
    g_B = _sum_over_channels(g * _by_channel(dtu, CH_MINOR), CH_MINOR)
    g_C = _sum_over_channels(h * _by_channel(gy, CH_MINOR), CH_MINOR)
    return g_u, g_dt, g_B, g_C, g_A, _row(q, rows, 0)


@triton.jit
def _scan_bwd_kernel(
    u_ptr,
    d_ptr,
    A2_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    bias_ptr,
    orders_ptr,
    gy_ptr,
    states_ptr,
    scratch_ptr,
    ln2_ptr,
    gu_ptr,
    gd_ptr,
    gB_ptr,
    gC_ptr,
    gA_ptr,
    gD_ptr,
    gbias_ptr,
    L,
    K,
    chans_per_group,
    num_chunks,
    su_b,
    su_c,
    su_l,
    sd_b,
    sd_c,
    sd_l,
    sB_b,
    sB_g,
    sB_n,
    sB_l,
    sC_b,
    sC_g,
    sC_n,
    sC_l,
    sgy_b,
    sgy_c,
    sgy_l,
    sgu_b,
    sgu_c,
    sgu_l,
    sgd_b,
    sgd_c,
    sgd_l,
    N: tl.constexpr,
    N_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_ORDERS: tl.constexpr,
    CH_MINOR: tl.constexpr,
    FAST_EXP2: tl.constexpr,
    TILE_BITS: tl.constexpr,
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
    if N == N_BLOCK:
        n_mask = tl.full((1, N_BLOCK), 1, tl.int1)
    else:
        n_mask = (n < N)[None, :]
    cn_offs, cn_mask = _state_grid(ch, n, c_mask, N, N_BLOCK, CH_MINOR)
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
    gy_cols = ch * sgy_c
    gu_cols = ch * sgu_c
    gd_cols = ch * sgd_c
    B_cols = n * sB_n
    C_cols = n * sC_n
    scratch = scratch_ptr + ((pid_b * n_groups + pid_g) * n_blocks + pid_c) * (CHUNK // TILE) * BLOCK_D * N_BLOCK
    sc_offs = _state_grid(tl.arange(0, BLOCK_D), n, c_mask, N_BLOCK, N_BLOCK, CH_MINOR)[0]
    rows = tl.arange(0, TILE)
    g_A = tl.zeros(A2.shape, dtype=cdt)
    g_D = tl.zeros((BLOCK_D,), dtype=cdt)
    g_bias = tl.zeros((BLOCK_D,), dtype=cdt)
    for k in range(K):
        order = orders_ptr + k * L
        q_carry = tl.zeros(A2.shape, dtype=cdt)  # decay * d loss / d h of the step after the tile
        for jj in range(num_chunks):
            j = num_chunks - 1 - jj
            start = j * CHUNK
            n_tiles = tl.cdiv(tl.minimum(start + CHUNK, L) - start, TILE)
            h = tl.load(
                states_ptr + ((pid_b * K + k) * num_chunks + j) * d_total * N + cn_offs, mask=cn_mask, other=0.0
            )
            # pass 1: the chunk forwards, keeping each tile's entry state (the last tile's needs no scan)
            pos = _positions(start, L, order, rows, HAS_ORDERS)
            cm, nm = _row_masks(start, L, rows, c_mask, n_mask)
            u_raw = _gather_rows(u_base, pos, su_l, u_cols, cm)
            pre_raw = _gather_rows(d_base, pos, sd_l, d_cols, cm)
            B_raw = _gather_rows(B_base, pos, sB_l, B_cols, nm)
            pos_next = _positions(start + TILE, L, order, rows, HAS_ORDERS)
            for i in range(n_tiles - 1):
                t0 = start + i * TILE
                cm_next, nm_next = _row_masks(t0 + TILE, L, rows, c_mask, n_mask)
                u_next = _gather_rows(u_base, pos_next, su_l, u_cols, cm_next)
                pre_next = _gather_rows(d_base, pos_next, sd_l, d_cols, cm_next)
                B_next = _gather_rows(B_base, pos_next, sB_l, B_cols, nm_next)
                pos_after = _positions(t0 + 2 * TILE, L, order, rows, HAS_ORDERS)
                tl.store(scratch + i * BLOCK_D * N_BLOCK + sc_offs, h)
                u, _, dt = _step_inputs(u_raw, pre_raw, cm, bias, HAS_BIAS, SOFTPLUS)
                h = _row(_tile_states(dt, u, B_raw.to(cdt), A2, h, rows, CH_MINOR, FAST_EXP2), rows, TILE - 1)
                cm, u_raw, pre_raw, B_raw = cm_next, u_next, pre_next, B_next
                pos_next = pos_after
            tl.store(scratch + (n_tiles - 1) * BLOCK_D * N_BLOCK + sc_offs, h)
            tl.debug_barrier()  # pass 2 reads entry states other threads wrote
            # pass 2: the chunk's tiles backwards, each tile's loads issued one tile ahead
            t_last = start + (n_tiles - 1) * TILE
            pos = _positions(t_last, L, order, rows, HAS_ORDERS)
            cm, nm = _row_masks(t_last, L, rows, c_mask, n_mask)
            u_raw = _gather_rows(u_base, pos, su_l, u_cols, cm)
            pre_raw = _gather_rows(d_base, pos, sd_l, d_cols, cm)
            B_raw = _gather_rows(B_base, pos, sB_l, B_cols, nm)
            C_raw = _gather_rows(C_base, pos, sC_l, C_cols, nm)
            gy_raw = _gather_rows(gy_base, pos, sgy_l, gy_cols, cm)
            gu_old = _gather_rows(gu_base, pos, sgu_l, gu_cols, cm & (k > 0))
            gd_old = _gather_rows(gd_base, pos, sgd_l, gd_cols, cm & (k > 0))
            gB_old = _gather_rows(gB_base, pos, N, n, nm & (k > 0))
            gC_old = _gather_rows(gC_base, pos, N, n, nm & (k > 0))
            pos_next = _positions(t_last - TILE, L, order, rows, HAS_ORDERS)
            for ii in range(n_tiles):
                i = n_tiles - 1 - ii
                t0 = start + i * TILE
                # the previous tile's loads; none at i = 0 (the chunk before is loaded by its own prologue, after the
                # barrier that makes this chunk's gradients visible); positions two tiles back may lie in the chunk
                # before: read-only, harmless
                cm_next, nm_next = _row_masks(t0 - TILE, L, rows, c_mask, n_mask)
                if_more = i > 0
                cm_next = cm_next & if_more
                nm_next = nm_next & if_more
                u_next = _gather_rows(u_base, pos_next, su_l, u_cols, cm_next)
                pre_next = _gather_rows(d_base, pos_next, sd_l, d_cols, cm_next)
                B_next = _gather_rows(B_base, pos_next, sB_l, B_cols, nm_next)
                C_next = _gather_rows(C_base, pos_next, sC_l, C_cols, nm_next)
                gy_next = _gather_rows(gy_base, pos_next, sgy_l, gy_cols, cm_next)
                gu_old_next = _gather_rows(gu_base, pos_next, sgu_l, gu_cols, cm_next & (k > 0))
                gd_old_next = _gather_rows(gd_base, pos_next, sgd_l, gd_cols, cm_next & (k > 0))
                gB_old_next = _gather_rows(gB_base, pos_next, N, n, nm_next & (k > 0))
                gC_old_next = _gather_rows(gC_base, pos_next, N, n, nm_next & (k > 0))
                pos_after = _positions(t0 - 2 * TILE, L, order, rows, HAS_ORDERS)
                h_in = tl.load(scratch + i * BLOCK_D * N_BLOCK + sc_offs)
                u, pre, dt = _step_inputs(u_raw, pre_raw, cm, bias, HAS_BIAS, SOFTPLUS)
                gy = gy_raw.to(cdt)
                g_u, g_dt, g_B, g_C, dA, q_carry = _tile_grads(
                    u,
                    pre,
                    dt,
                    B_raw.to(cdt),
                    C_raw.to(cdt),
                    gy,
                    h_in,
                    q_carry,
                    A2,
                    ln2,
                    Dv,
                    rows,
                    cm,
                    HAS_D,
                    SOFTPLUS,
                    CH_MINOR,
                    FAST_EXP2,
                    TILE_BITS,
                )
                g_A += dA
                g_D += tl.sum(gy * u, axis=0)
                g_bias += tl.sum(g_dt, axis=0)
                tl.store(gu_base + pos[:, None] * sgu_l + gu_cols[None, :], g_u + gu_old, mask=cm)
                tl.store(gd_base + pos[:, None] * sgd_l + gd_cols[None, :], g_dt + gd_old, mask=cm)
                tl.store(gB_base + pos[:, None] * N + n[None, :], g_B + gB_old, mask=nm)
                tl.store(gC_base + pos[:, None] * N + n[None, :], g_C + gC_old, mask=nm)
                pos, cm, nm = pos_next, cm_next, nm_next
                u_raw, pre_raw, B_raw, C_raw, gy_raw = u_next, pre_next, B_next, C_next, gy_next
                gu_old, gd_old, gB_old, gC_old = gu_old_next, gd_old_next, gB_old_next, gC_old_next
                pos_next = pos_after
            tl.debug_barrier()  # the scratch is refilled next; the next order re-reads accumulated gradients
    tl.store(gA_ptr + pid_b * d_total * N + cn_offs, g_A, mask=cn_mask)
    tl.store(gD_ptr + pid_b * d_total + ch, g_D, mask=c_mask)
    tl.store(gbias_ptr + pid_b * d_total + ch, g_bias, mask=c_mask)


# ---- launch ----------------------------------------------------------------------------------------------------


def kernel_config(state: int, chans_per_group: int) -> dict[str, int]:
    """Launch parameters by state size. Forward (``tile`` steps per tile, ``block_d`` channels and ``num_warps``
    warps per program, ``ch_minor``: tile tensors laid out (tile, N, block_d) instead of (tile, block_d, N)), the
    same for the backward (``bwd_*``), ``chunk`` (steps between the states the forward saves; a multiple of both
    tiles) and ``fast_exp2`` (ex2.approx.ftz for float32 on NVIDIA GPUs). Tiles, blocks and warps are powers of two.
    ``maxnreg`` / ``bwd_maxnreg`` cap the registers per thread (ptx .maxnreg; 0: the compiler's choice).

    Layouts chosen from offline sm_90 compiles (registers and SASS instructions per state update,
    benchmarks/scan_sass.py, docs/kernel-notes.md): one warp per program with the channels on the lanes keeps the
    tile's time axis and most of the state axis inside each thread, so the scan is a register recurrence and only the
    sums over channels (dB, dC) cross lanes. Register caps and the N <= 16 backward tile measured on an H200
    (2026-12-03, BENCHMARKS.md): every kernel ran at 2 warps per scheduler (228-255 registers) and ncu found it
    latency-bound; the forward capped at 168 registers (12 warps per SM, no spills at N = 16) ran 15 % / 6 % faster
    (NYUD / PASCAL stage), the N <= 16 backward with 4-step tiles capped at 168 7.6 % faster; lower caps or capping
    the N = 64 backward spill and lose. benchmarks/scan_suite.py --configs times alternatives."""
    if state <= 16:
        cfg = dict(
            tile=8, block_d=16, num_warps=1, ch_minor=1, bwd_tile=4, bwd_block_d=8, bwd_num_warps=1, bwd_ch_minor=1
        )
        cfg.update(bwd_maxnreg=168)
    elif state <= 32:
        cfg = dict(
            tile=8, block_d=8, num_warps=1, ch_minor=1, bwd_tile=4, bwd_block_d=8, bwd_num_warps=1, bwd_ch_minor=1
        )
    else:
        cfg = dict(
            tile=4, block_d=8, num_warps=1, ch_minor=1, bwd_tile=2, bwd_block_d=8, bwd_num_warps=1, bwd_ch_minor=1
        )
    cap = max(2, triton.next_power_of_2(chans_per_group))
    cfg["block_d"] = min(cfg["block_d"], cap)
    cfg["bwd_block_d"] = min(cfg["bwd_block_d"], cap)
    cfg.setdefault("bwd_maxnreg", 0)
    cfg.update(chunk=64, fast_exp2=1, maxnreg=168)
    return cfg


def _check_config(cfg: dict[str, int]) -> None:
    for key in ("tile", "block_d", "bwd_tile", "bwd_block_d", "num_warps", "bwd_num_warps"):
        value = cfg[key]
        if value < 1 or value & (value - 1) or (key.endswith("tile") and value < 2):
            raise ValueError(f"triton scan config {key} must be a power of two (tiles at least 2), got {value}")
    if cfg["chunk"] < 1 or cfg["chunk"] % cfg["tile"] or cfg["chunk"] % cfg["bwd_tile"]:
        raise ValueError(f"triton scan config chunk must be a multiple of tile and bwd_tile, got {cfg}")
    for key in ("maxnreg", "bwd_maxnreg"):
        if cfg[key] != 0 and not 24 <= cfg[key] <= 255:
            raise ValueError(
                f"triton scan config {key} must be 0 (no cap) or a register count in 24..255, got {cfg[key]}"
            )


def _fast_exp2(u: Tensor, cdt: torch.dtype, cfg: dict[str, int]) -> bool:
    """Whether the kernels use ex2.approx.ftz (inline PTX): float32 compute on an NVIDIA GPU, config fast_exp2."""
    return bool(cfg["fast_exp2"]) and cdt == torch.float32 and u.is_cuda and torch.version.hip is None


def _reg_cap(maxnreg: int) -> dict[str, int]:
    """Launch option capping registers per thread (ptx .maxnreg) on NVIDIA GPUs; 0: the compiler's choice."""
    return dict(maxnreg=maxnreg) if maxnreg and torch.version.hip is None else {}


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


def _state_contiguous(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, G, N, L) in ``dtype`` with unit stride along N: the kernels gather (tile, N) rows of B and C, one
    vectorised load per row when N is contiguous, N scalar loads (and more registers) otherwise. The model computes
    B and C as contiguous (b, G, N, L) maps; the copy into (b, L, G, N) memory is small (G * N values per position
    against the 2 * d of u and delta) and fused with the cast of low-precision inputs."""
    if x.stride(2) == 1 or x.shape[2] == 1:
        return x.to(dtype)
    return x.permute(0, 3, 1, 2).to(dtype=dtype, memory_format=torch.contiguous_format).permute(0, 2, 3, 1)


def _launch_args(u, delta, A, B, C, D, delta_bias, orders, block_d, chunk):
    """Shared launch preparation: every input in the compute dtype, group layout, grid and strides.

    bfloat16 / float16 activations (autocast) are upcast here, strides kept, rather than in the kernels: loaded
    narrow, Triton converts them after spreading a tile over the lanes, i.e. once per lane that holds a copy, and
    computes the per-(step, channel) work in layouts with more copies; compiled for sm_90 that is 1.4x the
    instructions per state update of the same kernel on float32 inputs (NYUD stage, forward and backward; docs/
    kernel-notes.md). The copies cost two elementwise passes over u and delta and are not kept for the backward."""
    b, d, L = u.shape
    N = A.shape[1]
    cdt = compute_dtype(u)
    u, delta = u.to(cdt), delta.to(cdt)
    Bg, Cg = _state_contiguous(grouped(B), cdt), _state_contiguous(grouped(C), cdt)
    G = max(Bg.shape[1], Cg.shape[1])
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
    return dict(
        cdt=cdt,
        G=G,
        cpg=cpg,
        K=K,
        u=u,
        delta=delta,
        A2=A2,
        D=Dc,
        bias=bias,
        orders=order_ids,
        Bg=Bg,
        Cg=Cg,
        grid=grid,
        strides=(*u.stride(), *delta.stride(), *B_strides, *C_strides),
        num_chunks=triton.cdiv(L, chunk),
        N_BLOCK=triton.next_power_of_2(N),
    )


def _flags(D, delta_bias, delta_softplus, orders):
    return dict(
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        HAS_ORDERS=orders is not None,
    )


def _partials_to(partials: Tensor, like: Tensor) -> Tensor:
    """Per-channel-block partial gradients (blocks, b, G, L, N) -> the shape of B or C."""
    return ungroup_grad(partials.sum(0).transpose(2, 3), like)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, orders, cfg):
        b, d, L = u.shape
        N = A.shape[1]
        args = _launch_args(u, delta, A, B, C, D, delta_bias, orders, cfg["block_d"], cfg["chunk"])
        save = any(ctx.needs_input_grad)
        y = torch.empty_like(u, dtype=args["cdt"])
        states = torch.empty(b, args["K"], args["num_chunks"], d, N, dtype=args["cdt"], device=u.device) if save else y
        _scan_fwd_kernel[args["grid"]](
            args["u"],
            args["delta"],
            args["A2"],
            args["Bg"],
            args["Cg"],
            args["D"],
            args["bias"],
            args["orders"],
            y,
            states,
            L,
            args["K"],
            args["cpg"],
            args["num_chunks"],
            *args["strides"],
            *y.stride(),
            N=N,
            N_BLOCK=args["N_BLOCK"],
            BLOCK_D=cfg["block_d"],
            TILE=cfg["tile"],
            CHUNK=cfg["chunk"],
            **_flags(D, delta_bias, delta_softplus, orders),
            SAVE_STATES=save,
            CH_MINOR=bool(cfg["ch_minor"]),
            FAST_EXP2=_fast_exp2(u, args["cdt"], cfg),
            num_warps=cfg["num_warps"],
            num_stages=1,
            **_reg_cap(cfg["maxnreg"]),
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
        scratch = u.new_empty(
            grid[0] * grid[1] * grid[2], cfg["chunk"] // cfg["bwd_tile"], cfg["bwd_block_d"], args["N_BLOCK"], dtype=cdt
        )
        ln2 = torch.full((1,), math.log(2.0), dtype=cdt, device=u.device)
        grad_y = grad_y.to(cdt)
        _scan_bwd_kernel[grid](
            args["u"],
            args["delta"],
            args["A2"],
            args["Bg"],
            args["Cg"],
            args["D"],
            args["bias"],
            args["orders"],
            grad_y,
            states,
            scratch,
            ln2,
            g_u,
            g_delta,
            g_B,
            g_C,
            g_A,
            g_D,
            g_bias,
            L,
            args["K"],
            args["cpg"],
            args["num_chunks"],
            *args["strides"],
            *grad_y.stride(),
            *g_u.stride(),
            *g_delta.stride(),
            N=N,
            N_BLOCK=args["N_BLOCK"],
            BLOCK_D=cfg["bwd_block_d"],
            TILE=cfg["bwd_tile"],
            CHUNK=cfg["chunk"],
            **_flags(D, delta_bias, delta_softplus, orders),
            CH_MINOR=bool(cfg["bwd_ch_minor"]),
            FAST_EXP2=_fast_exp2(u, cdt, cfg),
            TILE_BITS=cfg["bwd_tile"].bit_length() - 1,
            num_warps=cfg["bwd_num_warps"],
            num_stages=1,
            **_reg_cap(cfg["bwd_maxnreg"]),
        )
        return (
            g_u.to(u.dtype),
            g_delta.to(delta.dtype),
            g_A.sum(0).to(A.dtype),
            _partials_to(g_B, B),
            _partials_to(g_C, C),
            None if D is None else g_D.sum(0).to(D.dtype),
            None if delta_bias is None else g_bias.sum(0).to(delta_bias.dtype),
            None,
            None,
            None,
        )


def resolve_config(state: int, chans_per_group: int, config: dict[str, int] | None = None) -> dict[str, int]:
    """``kernel_config`` updated with ``config``, validated."""
    cfg = kernel_config(state, chans_per_group)
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown triton scan config keys {sorted(unknown)}; expected some of {sorted(cfg)}")
    cfg.update(config or {})
    _check_config(cfg)
    return cfg


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
) -> Tensor:
    """Selective scan through the Triton kernels; same signature and semantics as
    ``selective_scan_reference`` (every row of ``orders`` must be a permutation), plus ``config``: launch parameters
    overriding those of ``kernel_config`` (keys ``CONFIG_KEYS``).

    Shapes: u, delta (b, d, L) any strides; A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,);
    orders (K, L). Returns (b, d, L) in u's dtype, computed in float32 (float64 for float64 inputs).
    On CPU tensors it runs only under Triton's interpreter (TRITON_INTERPRET=1).
    """
    check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    if orders is not None:
        _check_permutations(orders)
    groups = max(group_count(B), group_count(C))
    cfg = resolve_config(A.shape[1], u.shape[1] // groups, config)
    return _TritonScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, cfg)
