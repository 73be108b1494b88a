"""Selective scan on the CPU: Numba kernels, parallel over (batch, group) work items.

Same semantics as the other backends (see ``pamm.ops.selective_scan``). Each work item ``(batch i, group j)`` owns
the channels of group j and walks them in blocks of ``block_width`` channels that are updated side by side: every
innermost loop runs over a block's channels, so LLVM vectorises it without reassociating any sum. For every block:
``dt = softplus(delta + bias)`` once, then for every state index n:

1. the decays ``exp(dt * A[:, n])`` at every position (L x width), computed once and shared by the K directions;
2. per direction, the recurrence along its order, the state (one value per channel) in a scratch row, adding
   ``C * h`` to the output row of the position visited. The D term is added once per visit of a position.

Backward, per block, state index n and direction: the direction's states are recomputed into a scratch buffer
(L + 1) x width, then the adjoint recurrence runs from the last step to the first. Gradients of u and delta belong
to the work item; dB and dC are summed over the item's channels into its own (batch, group) slice; dA, dD and
d(delta_bias) go to per-batch partial buffers that are summed over the batch afterwards: nothing races, and results
do not depend on the thread count. Nothing of size (b, d, L, N) is stored: scratch per thread is about
10 x L x width values, plus 2 x N x L x width for dB and dC.

The recurrence only multiplies the state by ``exp(dt * A)``: finite for any ``|dt * A|`` when dt >= 0 and A <= 0.
Computation is float32 for float32/float16/bfloat16 inputs and float64 for float64 inputs (one compiled signature
each). exp and log1p are the arithmetic below, which vectorises (libm calls do not), within a few units in the last
place of the exact values.

Compiled kernels are cached on disk (numba's ``cache=True``: ``__pycache__`` next to this file, else numba's
per-user cache directory, or NUMBA_CACHE_DIR). Without any writable cache directory they are compiled once per
process, after one warning.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from ._scan_common import SOFTPLUS_THRESHOLD, check_inputs, common_groups, compute_dtype, ungroup_grad, visits

__all__ = ["selective_scan_cpu", "block_width"]

_cache_warned: list[bool] = []  # whether the no-cache warning was shown (see _jit)


def block_width(channels_per_group: int, length: int) -> int:
    """Channels processed side by side: a group's channels in as few equal blocks as keep a block's scratch (about
    14 x L x width values) near 1 MB, the width rounded up to a multiple of 8."""
    budget = max(8, 2**18 // (14 * max(1, length)))
    blocks = -(-channels_per_group // budget)
    return max(1, min(channels_per_group, (-(-channels_per_group // blocks) + 7) // 8 * 8))


# ---- vectorisable exp and log1p --------------------------------------------------------------------------------
# LLVM cannot vectorise calls to libm, which would then dominate the scan. These are plain arithmetic on the
# float's bits. exp: x = k ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial (truncation below 1e-8 relative
# in float32, 1e-17 in float64), 2^k written into the exponent bits in two halves, so that results that overflow or
# underflow come out inf, subnormal or 0 as libm's do. log1p(w), w >= 0: u = 1 + w = m 2^e with m in
# [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series, plus the rounding
# error of 1 + w. NaN stays NaN.

_F32, _F64 = np.float32, np.float64
_INV_LN2_F32, _LN2_HI_F32, _LN2_LO_F32 = _F32(1 / math.log(2)), _F32(0.693359375), _F32(-2.12194440e-4)
_LO_F32, _HI_F32, _HALF_F32, _ONE_F32, _TWO_F32 = _F32(-104.0), _F32(89.0), _F32(0.5), _F32(1.0), _F32(2.0)
_E2_F32, _E3_F32, _E4_F32, _E5_F32, _E6_F32, _E7_F32 = (_F32(1 / math.factorial(i)) for i in range(2, 8))
_L3_F32, _L5_F32, _L7_F32, _L9_F32 = (_F32(1 / i) for i in (3, 5, 7, 9))
_INV_LN2_F64, _LN2_HI_F64, _LN2_LO_F64 = (
    _F64(1 / math.log(2)),
    _F64(6.93147180369123816490e-01),
    _F64(1.90821492927058770002e-10),
)
_LO_F64, _HI_F64, _HALF_F64, _ONE_F64, _TWO_F64 = _F64(-746.0), _F64(710.0), _F64(0.5), _F64(1.0), _F64(2.0)
(_E2_F64, _E3_F64, _E4_F64, _E5_F64, _E6_F64, _E7_F64, _E8_F64, _E9_F64, _E10_F64, _E11_F64, _E12_F64, _E13_F64) = (
    _F64(1 / math.factorial(i)) for i in range(2, 14)
)
_L3_F64, _L5_F64, _L7_F64, _L9_F64, _L11_F64, _L13_F64, _L15_F64, _L17_F64, _L19_F64, _L21_F64 = (
    _F64(1 / i) for i in range(3, 22, 2)
)
_THRESHOLD_F32, _THRESHOLD_F64 = _F32(SOFTPLUS_THRESHOLD), _F64(SOFTPLUS_THRESHOLD)


def _exp(x):
    """exp(x) of a float32 or float64 inside numba kernels (overloaded below)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _log1p(x):
    """log1p(x) of a finite float32 or float64 x >= 0 inside numba kernels (overloaded below)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _softplus(x):
    """torch's softplus (beta 1, threshold 20) inside numba kernels (overloaded below)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _softplus_slope(x):
    """The derivative of torch's softplus, sigmoid(x) (1 above the threshold), inside numba kernels."""
    raise NotImplementedError("only callable from numba-compiled code")


def _float_layout(fty):
    """(integer type, mantissa bits, exponent bias) of an LLVM float or double."""
    if fty == llvm_ir.FloatType():
        return llvm_ir.IntType(32), 23, 127
    return llvm_ir.IntType(64), 52, 1023


@intrinsic
def _pow2(typingctx, k):
    """2**k for an integer-valued float k in the normal exponent range, written into the exponent bits."""
    if not isinstance(k, types.Float):
        return None

    def codegen(context, builder, signature, args):
        (kf,) = args
        ity, mantissa, bias = _float_layout(kf.type)
        bits = builder.shl(builder.add(builder.fptosi(kf, ity), ity(bias)), ity(mantissa))
        return builder.bitcast(bits, kf.type)

    return k(k), codegen


@intrinsic
def _split_exponent(typingctx, u):
    """(m, e) with u = m * 2**e, m in [sqrt(1/2), sqrt(2)) and e an integer-valued float, for a finite positive
    normal float u."""
    if not isinstance(u, types.Float):
        return None

    def codegen(context, builder, signature, args):
        (x,) = args
        ity, mantissa, bias = _float_layout(x.type)
        one_bits = bias << mantissa  # the bits of 1.0
        sqrt2_bits = 0x3FB504F3 if mantissa == 23 else 0x3FF6A09E667F3BCD
        bits = builder.bitcast(x, ity)
        m_bits = builder.or_(builder.and_(bits, ity((1 << mantissa) - 1)), ity(one_bits))  # m in [1, 2)
        e = builder.sub(builder.lshr(bits, ity(mantissa)), ity(bias))
        halve = builder.icmp_unsigned(">", m_bits, ity(sqrt2_bits))
        m_bits = builder.select(halve, builder.sub(m_bits, ity(1 << mantissa)), m_bits)
        e = builder.select(halve, builder.add(e, ity(1)), e)
        m = builder.bitcast(m_bits, x.type)
        return context.make_tuple(builder, signature.return_type, [m, builder.sitofp(e, x.type)])

    return types.UniTuple(u, 2)(u), codegen


def _exp_f32(x):
    xc = min(max(x, _LO_F32), _HI_F32)
    k = np.floor(xc * _INV_LN2_F32 + _HALF_F32)
    r = (xc - k * _LN2_HI_F32) - k * _LN2_LO_F32
    p = (
        (((((_E7_F32 * r + _E6_F32) * r + _E5_F32) * r + _E4_F32) * r + _E3_F32) * r + _E2_F32) * r + _ONE_F32
    ) * r + _ONE_F32
    k_half = np.floor(k * _HALF_F32)
    e = p * _pow2(k_half) * _pow2(k - k_half)
    return x if x != x else e


def _exp_f64(x):
    xc = min(max(x, _LO_F64), _HI_F64)
    k = np.floor(xc * _INV_LN2_F64 + _HALF_F64)
    r = (xc - k * _LN2_HI_F64) - k * _LN2_LO_F64
    p = _E13_F64 * r + _E12_F64
    p = p * r + _E11_F64
    p = p * r + _E10_F64
    p = p * r + _E9_F64
    p = p * r + _E8_F64
    p = p * r + _E7_F64
    p = p * r + _E6_F64
    p = p * r + _E5_F64
    p = p * r + _E4_F64
    p = p * r + _E3_F64
    p = p * r + _E2_F64
    p = (p * r + _ONE_F64) * r + _ONE_F64
    k_half = np.floor(k * _HALF_F64)
    e = p * _pow2(k_half) * _pow2(k - k_half)
    return x if x != x else e


def _log1p_f32(x):
    u = _ONE_F32 + x
    m, e = _split_exponent(u)
    f = m - _ONE_F32
    s = f / (_TWO_F32 + f)
    s2 = s * s
    two_s = s + s
    log_m = two_s + two_s * (s2 * (_L3_F32 + s2 * (_L5_F32 + s2 * (_L7_F32 + s2 * _L9_F32))))
    rounding = (x - (u - _ONE_F32)) / u  # log1p(x) = log(u) + (x - (u - 1)) / u to first order
    return e * _LN2_HI_F32 + ((log_m + rounding) + e * _LN2_LO_F32)


def _log1p_f64(x):
    u = _ONE_F64 + x
    m, e = _split_exponent(u)
    f = m - _ONE_F64
    s = f / (_TWO_F64 + f)
    s2 = s * s
    two_s = s + s
    series = _L19_F64 + s2 * _L21_F64
    series = _L17_F64 + s2 * series
    series = _L15_F64 + s2 * series
    series = _L13_F64 + s2 * series
    series = _L11_F64 + s2 * series
    series = _L9_F64 + s2 * series
    series = _L7_F64 + s2 * series
    series = _L5_F64 + s2 * series
    series = _L3_F64 + s2 * series
    log_m = two_s + two_s * (s2 * series)
    rounding = (x - (u - _ONE_F64)) / u
    return e * _LN2_HI_F64 + ((log_m + rounding) + e * _LN2_LO_F64)


def _softplus_f32(x):
    soft = _log1p(_exp(min(x, _THRESHOLD_F32)))
    return x if (x > _THRESHOLD_F32 or x != x) else soft


def _softplus_f64(x):
    soft = _log1p(_exp(min(x, _THRESHOLD_F64)))
    return x if (x > _THRESHOLD_F64 or x != x) else soft


def _softplus_slope_f32(x):
    ez = _exp(min(x, _THRESHOLD_F32))
    return _ONE_F32 if x > _THRESHOLD_F32 else ez / (ez + _ONE_F32)


def _softplus_slope_f64(x):
    ez = _exp(min(x, _THRESHOLD_F64))
    return _ONE_F64 if x > _THRESHOLD_F64 else ez / (ez + _ONE_F64)


def _jit(**options):
    """numba.njit(cache=True, fastmath=False, **options), or without the on-disk cache (and one warning per
    process) where numba finds no writable cache directory: it then refuses cache=True."""

    def decorate(fn):
        try:
            return njit(cache=True, fastmath=False, **options)(fn)
        except RuntimeError as err:  # "cannot cache function ...: no locator available for file ..."
            if not _cache_warned:
                _cache_warned.append(True)
                warnings.warn(
                    f"selective_scan_cpu: numba's on-disk cache is unusable here ({err}); the kernels "
                    "are compiled in every process (set NUMBA_CACHE_DIR to a writable directory)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return njit(cache=False, fastmath=False, **options)(fn)

    return decorate


def _by_float_type(f32_impl, f64_impl):
    """An overload typer choosing the float32 or the float64 implementation by the argument's type."""

    def typer(x):
        if x == types.float32:
            return f32_impl
        if x == types.float64:
            return f64_impl
        return None

    return typer


overload(_exp, jit_options={"fastmath": False})(_by_float_type(_exp_f32, _exp_f64))
overload(_log1p, jit_options={"fastmath": False})(_by_float_type(_log1p_f32, _log1p_f64))
overload(_softplus, jit_options={"fastmath": False})(_by_float_type(_softplus_f32, _softplus_f64))
overload(_softplus_slope, jit_options={"fastmath": False})(_by_float_type(_softplus_slope_f32, _softplus_slope_f64))


@_jit()
def _math_check(x, kind):
    """Elementwise exp (kind 0), log1p (1), softplus (2) or its derivative (3) of a 1-D array, as the kernels
    compute them: for the tests (here, so that numba's cache of it follows this file's changes)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        if kind == 0:
            out[i] = _exp(x[i])
        elif kind == 1:
            out[i] = _log1p(x[i])
        elif kind == 2:
            out[i] = _softplus(x[i])
        else:
            out[i] = _softplus_slope(x[i])
    return out


# ---- kernels ------------------------------------------------------------------------------------------------
# The body of a work item is written inline in the prange loop, using whole arrays and element indexing only
# (no array views, no reassigned bool variables: numba's alias analysis counts both). Numba then compiles the
# body with every array argument marked noalias (the arrays it writes are fresh and distinct), so LLVM
# vectorises the innermost loops without runtime alias checks. Scratch arrays have a leading "slot" axis: one
# slot per chunk of work items, a chunk running on one thread. They are np.empty, not np.zeros: numba turns
# each np.zeros of a parallel function into a parfor of its own, compiled separately.


@_jit(nogil=True, parallel=True)
def _forward_kernel(u, delta, A, Bg, Cg, D, bias, softplus, orders, counts, y, width, slots):
    """y (b, d, L) from u, delta (b, d, L), A (d, N), B, C (b, G, N, L), D, bias (d,), softplus (bool),
    orders (K, L) uint64 and counts (L,) (visits of each position over all orders); arrays C-contiguous, one
    float dtype. Channels go ``width`` at a time; the b * G work items are split into ``slots`` chunks."""
    b, d, L = u.shape
    G, N, K = Bg.shape[1], A.shape[1], orders.shape[0]
    per_group = d // G
    items = b * G
    per_slot = (items + slots - 1) // slots
    cdt = u.dtype
    dt_blk = np.empty((slots, L, width), cdt)  # dt = softplus(delta + bias), (position, channel)
    u_blk = np.empty((slots, L, width), cdt)
    dtu = np.empty((slots, L, width), cdt)  # dt * u
    y_blk = np.empty((slots, L, width), cdt)
    decay = np.empty((slots, L, width), cdt)  # exp(dt * A[:, n])
    A_col = np.empty((slots, width), cdt)
    h = np.empty((slots, width), cdt)  # the state
    for slot in prange(slots):
        for item in range(slot * per_slot, min(items, (slot + 1) * per_slot)):
            bi, gi = item // G, item % G
            for c0 in range(gi * per_group, (gi + 1) * per_group, width):
                nr = min(width, (gi + 1) * per_group - c0)
                for c in range(nr):
                    for p in range(L):
                        dt_blk[slot, p, c] = delta[bi, c0 + c, p]
                        u_blk[slot, p, c] = u[bi, c0 + c, p]
                for p in range(L):
                    visits = counts[p]
                    for c in range(nr):
                        z = dt_blk[slot, p, c] + bias[c0 + c]
                        dt_c = _softplus(z) if softplus else z
                        dt_blk[slot, p, c] = dt_c
                        dtu[slot, p, c] = dt_c * u_blk[slot, p, c]
                        y_blk[slot, p, c] = visits * (u_blk[slot, p, c] * D[c0 + c])  # D term, once a visit
                for n in range(N):
                    for c in range(nr):
                        A_col[slot, c] = A[c0 + c, n]
                    for p in range(L):
                        for c in range(nr):
                            decay[slot, p, c] = _exp(dt_blk[slot, p, c] * A_col[slot, c])
                    for k in range(K):
                        for c in range(nr):
                            h[slot, c] = 0.0
                        for t in range(L):
                            p = orders[k, t]
                            b_p, c_p = Bg[bi, gi, n, p], Cg[bi, gi, n, p]
                            for c in range(nr):
                                h_c = decay[slot, p, c] * h[slot, c] + dtu[slot, p, c] * b_p
                                h[slot, c] = h_c
                                y_blk[slot, p, c] += h_c * c_p
                for c in range(nr):
                    for p in range(L):
                        y[bi, c0 + c, p] = y_blk[slot, p, c]


@_jit(nogil=True, parallel=True)
def _backward_kernel(
    u,
    delta,
    A,
    Bg,
    Cg,
    D,
    bias,
    softplus,
    orders,
    counts,
    gy,
    du,
    ddelta,
    dA_part,
    dD_part,
    dbias_part,
    dB,
    dC,
    width,
    slots,
):
    """Gradients from the forward's inputs (see _forward_kernel) and gy (b, d, L): du and ddelta (b, d, L);
    dA_part (b, d, N), dD_part and dbias_part (b, d), still to be summed over the batch; dB, dC (b, G, N, L)."""
    b, d, L = u.shape
    G, N, K = Bg.shape[1], A.shape[1], orders.shape[0]
    per_group = d // G
    items = b * G
    per_slot = (items + slots - 1) // slots
    cdt = u.dtype
    z_blk = np.empty((slots, L, width), cdt)  # delta + bias
    dt_blk = np.empty((slots, L, width), cdt)
    u_blk = np.empty((slots, L, width), cdt)
    gy_blk = np.empty((slots, L, width), cdt)
    dtu = np.empty((slots, L, width), cdt)  # dt * u, later du
    decay = np.empty((slots, L, width), cdt)
    states = np.empty((slots, L + 1, width), cdt)  # [t + 1]: state after step t of the current direction
    via_B = np.empty((slots, L, width), cdt)  # sum over n and steps of adjoint * B: the gradient of dt * u
    via_decay = np.empty((slots, L, width), cdt)  # sum over n of A * d loss / d(dt * A), later d delta
    padded = 8
    while padded < width:
        padded *= 2
    dB_lanes = np.empty((slots, N, L, padded), cdt)  # dB, dC per channel lane, summed over lanes at the end
    dC_lanes = np.empty((slots, N, L, padded), cdt)
    dB_fold = np.empty((slots, L, padded // 2), cdt)
    dC_fold = np.empty((slots, L, padded // 2), cdt)
    A_col = np.empty((slots, width), cdt)
    dA_col = np.empty((slots, width), cdt)
    dD_col = np.empty((slots, width), cdt)
    dbias_col = np.empty((slots, width), cdt)
    h = np.empty((slots, width), cdt)
    carry = np.empty((slots, width), cdt)  # decay(step t + 1) * adjoint(step t + 1): handed to step t
    for slot in prange(slots):
        for item in range(slot * per_slot, min(items, (slot + 1) * per_slot)):
            bi, gi = item // G, item % G
            for n in range(N):
                for p in range(L):
                    for c in range(padded):
                        dB_lanes[slot, n, p, c] = 0.0
                        dC_lanes[slot, n, p, c] = 0.0
            for c0 in range(gi * per_group, (gi + 1) * per_group, width):
                nr = min(width, (gi + 1) * per_group - c0)
                for c in range(nr):
                    for p in range(L):
                        z_blk[slot, p, c] = delta[bi, c0 + c, p]
                        u_blk[slot, p, c] = u[bi, c0 + c, p]
                        gy_blk[slot, p, c] = gy[bi, c0 + c, p]
                for p in range(L):
                    for c in range(nr):
                        z = z_blk[slot, p, c] + bias[c0 + c]
                        dt_c = _softplus(z) if softplus else z
                        z_blk[slot, p, c] = z
                        dt_blk[slot, p, c] = dt_c
                        dtu[slot, p, c] = dt_c * u_blk[slot, p, c]
                        via_B[slot, p, c] = 0.0
                        via_decay[slot, p, c] = 0.0
                for n in range(N):
                    for c in range(nr):
                        A_col[slot, c] = A[c0 + c, n]
                        dA_col[slot, c] = 0.0
                    for p in range(L):
                        for c in range(nr):
                            decay[slot, p, c] = _exp(dt_blk[slot, p, c] * A_col[slot, c])
                    for k in range(K):
                        for c in range(nr):
                            h[slot, c] = 0.0
                            carry[slot, c] = 0.0
                            states[slot, 0, c] = 0.0
                        for t in range(L):  # recompute this direction's states
                            p = orders[k, t]
                            b_p = Bg[bi, gi, n, p]
                            for c in range(nr):
                                h_c = decay[slot, p, c] * h[slot, c] + dtu[slot, p, c] * b_p
                                h[slot, c] = h_c
                                states[slot, t + 1, c] = h_c
                        for t in range(L - 1, -1, -1):
                            p = orders[k, t]
                            b_p, c_p = Bg[bi, gi, n, p], Cg[bi, gi, n, p]
                            for c in range(nr):
                                g = gy_blk[slot, p, c]
                                a = decay[slot, p, c]
                                lam = g * c_p + carry[slot, c]  # adjoint of the state after step t
                                carry[slot, c] = a * lam
                                dB_lanes[slot, n, p, c] += lam * dtu[slot, p, c]
                                via_B[slot, p, c] += lam * b_p
                                dC_lanes[slot, n, p, c] += g * states[slot, t + 1, c]
                                g_log_decay = lam * states[slot, t, c] * a  # d loss / d(dt * A)
                                dA_col[slot, c] += g_log_decay * dt_blk[slot, p, c]
                                via_decay[slot, p, c] += g_log_decay * A_col[slot, c]
                    for c in range(nr):
                        dA_part[bi, c0 + c, n] = dA_col[slot, c]
                for c in range(nr):
                    dD_col[slot, c] = 0.0
                    dbias_col[slot, c] = 0.0
                for p in range(L):  # du (into dtu's buffer), d delta (into via_decay's), dD, d bias
                    visits = counts[p]
                    for c in range(nr):
                        g = gy_blk[slot, p, c]
                        s = via_B[slot, p, c]
                        dtu[slot, p, c] = s * dt_blk[slot, p, c] + visits * (g * D[c0 + c])
                        ddt = s * u_blk[slot, p, c] + via_decay[slot, p, c]
                        dz = ddt * _softplus_slope(z_blk[slot, p, c]) if softplus else ddt
                        via_decay[slot, p, c] = dz
                        dD_col[slot, c] += visits * (g * u_blk[slot, p, c])
                        dbias_col[slot, c] += dz
                for c in range(nr):
                    dD_part[bi, c0 + c] = dD_col[slot, c]
                    dbias_part[bi, c0 + c] = dbias_col[slot, c]
                    for p in range(L):
                        du[bi, c0 + c, p] = dtu[slot, p, c]
                        ddelta[bi, c0 + c, p] = via_decay[slot, p, c]
            for n in range(N):
                # dB, dC: sum the lanes, folding the columns in halves, vectorised (the lanes are zero past
                # the block widths, up to the padded width 8 * 2^j), then the last 8 columns of each row
                w = padded
                in_lanes = 1  # an int, not a bool (see above)
                while w > 8:
                    w //= 2
                    if in_lanes == 1:
                        for p in range(L):
                            for c in range(w):
                                dB_fold[slot, p, c] = dB_lanes[slot, n, p, c] + dB_lanes[slot, n, p, c + w]
                                dC_fold[slot, p, c] = dC_lanes[slot, n, p, c] + dC_lanes[slot, n, p, c + w]
                    else:
                        for p in range(L):
                            for c in range(w):
                                dB_lanes[slot, n, p, c] = dB_fold[slot, p, c] + dB_fold[slot, p, c + w]
                                dC_lanes[slot, n, p, c] = dC_fold[slot, p, c] + dC_fold[slot, p, c + w]
                    in_lanes = 1 - in_lanes
                for p in range(L):
                    sum_B = dB_lanes[slot, n, p, 0] if in_lanes == 1 else dB_fold[slot, p, 0]
                    sum_C = dC_lanes[slot, n, p, 0] if in_lanes == 1 else dC_fold[slot, p, 0]
                    for c in range(1, w):
                        sum_B += dB_lanes[slot, n, p, c] if in_lanes == 1 else dB_fold[slot, p, c]
                        sum_C += dC_lanes[slot, n, p, c] if in_lanes == 1 else dC_fold[slot, p, c]
                    dB[bi, gi, n, p] = sum_B
                    dC[bi, gi, n, p] = sum_C


# ---- PyTorch side -------------------------------------------------------------------------------------------------


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _kernel_inputs(u, delta, A, B, C, D, delta_bias, orders, cdt) -> tuple[list[Tensor], int]:
    """The kernels' inputs, C-contiguous in the compute dtype (copies only where needed): u, delta (b, d, L), A (d, N),
    B, C (b, G, N, L) (a shared B or C expanded to the G groups of the other), D and bias (d,) (zeros if None),
    orders (K, L) int64 (arange(L)[None] if None) and counts (L,), the visits of each position. Also returns G."""
    d, L = u.shape[1:]
    Bg, Cg, G = common_groups(B, C)
    if orders is None:
        orders = torch.arange(L).view(1, L)
        counts = torch.ones(L, dtype=cdt)
    else:
        orders = orders.to(torch.int64).contiguous()
        if orders.numel() and (int(orders.min()) < 0 or int(orders.max()) >= L):
            raise ValueError(
                f"orders must index positions in [0, {L}), got values in [{int(orders.min())}, {int(orders.max())}]"
            )
        counts = visits(orders, L, torch.empty(0, dtype=cdt))
    tensors = [
        u.to(cdt).contiguous(),
        delta.to(cdt).contiguous(),
        A.to(cdt).contiguous(),
        Bg.to(cdt).contiguous(),
        Cg.to(cdt).contiguous(),
        torch.zeros(d, dtype=cdt) if D is None else D.to(cdt).contiguous(),
        torch.zeros(d, dtype=cdt) if delta_bias is None else delta_bias.to(cdt).contiguous(),
        orders,
        counts,
    ]
    return tensors, G


def _kernel_args(tensors: list[Tensor], delta_softplus: bool) -> list:
    """numpy views of ``_kernel_inputs``'s tensors in the kernels' argument order; orders as uint64 (they are
    validated non-negative, and unsigned indices skip numba's wraparound code)."""
    u, delta, A, Bg, Cg, D, bias, orders, counts = tensors
    return [_numpy(t) for t in (u, delta, A, Bg, Cg, D, bias)] + [
        bool(delta_softplus),
        _numpy(orders).view(np.uint64),
        _numpy(counts),
    ]


def _threads() -> int:
    """Threads for the kernels: as many as torch uses, capped by numba's pool."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _run(kernel, *args, shape: tuple[int, int, int], groups: int) -> None:
    """Run a kernel on ``_threads()`` numba threads, with its (width, slots) blocking appended to ``args``."""
    b, d, L = shape
    threads = _threads()
    torch_threads = torch.get_num_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernel(*args, block_width(d // groups, L), max(1, min(threads, b * groups)))
    finally:
        numba.set_num_threads(previous)
        # Under numba's "omp" threading layer, set_num_threads sets the OpenMP thread count that PyTorch shares:
        # put PyTorch's back, or every later PyTorch op (and its rounding, where results depend on the split)
        # would run on numba's thread count.
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, orders):
        cdt = compute_dtype(u)
        tensors, G = _kernel_inputs(u, delta, A, B, C, D, delta_bias, orders, cdt)
        y = torch.empty(u.shape, dtype=cdt)
        _run(_forward_kernel, *_kernel_args(tensors, delta_softplus), _numpy(y), shape=u.shape, groups=G)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, orders)
        ctx.delta_softplus = delta_softplus
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, orders = ctx.saved_tensors
        cdt = compute_dtype(u)
        tensors, G = _kernel_inputs(u, delta, A, B, C, D, delta_bias, orders, cdt)
        b, d, L = u.shape
        N = A.shape[1]
        gy = grad_y.to(cdt).contiguous()
        du, ddelta = torch.empty(b, d, L, dtype=cdt), torch.empty(b, d, L, dtype=cdt)
        dA_part, dD_part, dbias_part = (
            torch.empty(b, d, N, dtype=cdt),
            torch.empty(b, d, dtype=cdt),
            torch.empty(b, d, dtype=cdt),
        )
        dB, dC = torch.empty(b, G, N, L, dtype=cdt), torch.empty(b, G, N, L, dtype=cdt)
        _run(
            _backward_kernel,
            *_kernel_args(tensors, ctx.delta_softplus),
            *[_numpy(t) for t in (gy, du, ddelta, dA_part, dD_part, dbias_part, dB, dC)],
            shape=u.shape,
            groups=G,
        )
        g_D = None if D is None else dD_part.sum(0).to(D.dtype)
        g_bias = None if delta_bias is None else dbias_part.sum(0).to(delta_bias.dtype)
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA_part.sum(0).to(A.dtype),
            ungroup_grad(dB, B),
            ungroup_grad(dC, C),
            g_D,
            g_bias,
            None,
            None,
        )


def selective_scan_cpu(
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
    """Selective scan by Numba kernels on CPU tensors; same signature and semantics as ``selective_scan_reference``.

    Shapes: u, delta (b, d, L); A (d, N); B, C (b, N, L) or (b, g, N, L); D, delta_bias (d,); orders (K, L) integer
    positions in [0, L). Any strides. Returns (b, d, L) in u's dtype, computed in float32 (float64 for float64
    inputs). Runs on ``min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)`` threads, parallel over
    (batch, group) pairs.
    """
    check_inputs(u, delta, A, B, C, D, delta_bias, orders)
    for name, t in (
        ("u", u),
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("delta_bias", delta_bias),
        ("orders", orders),
    ):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"selective_scan_cpu needs CPU tensors, got {name} on {t.device}")
    return _CpuScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, orders)
