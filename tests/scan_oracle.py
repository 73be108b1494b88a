"""The float64 oracle of the selective-scan tests: the recurrence step by step, as written in the op's definition
(``pamm.ops.selective_scan``), plus random inputs and comparison helpers shared by the backends' tests.

Every backend (reference, cpu, triton) is tested against ``sequential_scan`` on fresh random inputs: values and the
gradient of every input (autograd through this loop; ``unbind`` keeps its backward linear in L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def sequential_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, orders=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = <C_t, h_t> + D u_t per order, scattered back and summed.
    Computes in float64 whatever the inputs; returns u's dtype."""
    dtype_in = u.dtype
    f64 = torch.float64
    b, d, L = u.shape
    u, delta, A = u.to(f64), delta.to(f64), A.to(f64)
    Bg = (B.unsqueeze(1) if B.dim() == 3 else B).to(f64)
    Cg = (C.unsqueeze(1) if C.dim() == 3 else C).to(f64)
    g = max(Bg.shape[1], Cg.shape[1])
    Bc = Bg.expand(b, g, *Bg.shape[2:]).repeat_interleave(d // g, dim=1)  # (b, d, N, L)
    Cc = Cg.expand(b, g, *Cg.shape[2:]).repeat_interleave(d // g, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = u.new_zeros(b, d, L)
    for perm in [None] if orders is None else list(orders.long()):
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
            yk = yk + uk * D.to(f64)[:, None]
        y = y + yk if perm is None else y.index_add(2, perm, yk)
    return y.to(dtype_in)


def make_inputs(
    b=2, d=8, N=4, L=13, groups=None, dtype=torch.float64, bias=True, skip=True, decay_scale=5.0, seed=0, device="cpu"
):
    """Fresh random leaves (requires_grad); A = -(0..decay_scale), delta around softplus^-1(0.5)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    bc_shape = (b, N, L) if groups is None else (b, groups, N, L)
    inputs = {
        "u": randn(b, d, L),
        "delta": randn(b, d, L) * 0.5,
        "A": -(torch.rand(d, N, generator=gen, dtype=torch.float64) * decay_scale).to(dtype),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(d) if skip else None,
        "delta_bias": randn(d) * 0.5 if bias else None,
    }
    return {k: (v.to(device).requires_grad_() if v is not None else None) for k, v in inputs.items()}


def channels_last_views(inputs):
    """Channels-last views: u, delta views of (b, L, d) memory (the model's layout); B, C views of (b, L, g, N)
    memory (grouped B, C) or (b, L, N) memory (the layout the Triton kernels load from; the model's own B, C are
    contiguous (b, g, N, L)); fresh leaves with the same values."""
    views = dict(inputs)
    for name in ("u", "delta"):
        views[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    for name in ("B", "C"):
        t = inputs[name].detach()
        if t.dim() == 4:
            views[name] = t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1).requires_grad_()
        else:
            views[name] = t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    return views


def random_orders(K, L, seed=1, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=gen) for _ in range(K)]).to(device)


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def outputs_and_grads(fn, inputs, seed=2, **kwargs):
    """y and the gradients of <y, g> (g random, a channels-last view as a downstream layer would give) with respect
    to every input that is given."""
    y = fn(**inputs, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    b, d, L = y.shape
    g = torch.randn(b, L, d, generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype).transpose(1, 2)
    present = [n for n in NAMES if inputs[n] is not None]
    grads = torch.autograd.grad(y, [inputs[n] for n in present], g)
    return y, dict(zip(present, grads))


def errors_against_oracle(fn, inputs, knobs=None, **kwargs):
    """Relative errors of y and every gradient of fn(**inputs, **kwargs, **knobs) against ``sequential_scan`` on
    the same inputs upcast to float64 (on the CPU). Also checks dtypes, shapes and finiteness."""
    wide = {k: (v.detach().cpu().double().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    wide_kwargs = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    y_ref, g_ref = outputs_and_grads(sequential_scan, wide, **wide_kwargs)
    y, g = outputs_and_grads(fn, inputs, **kwargs, **(knobs or {}))
    assert y.dtype == inputs["u"].dtype and y.shape == y_ref.shape
    assert torch.isfinite(y).all()
    errors = {"y": rel_err(y.cpu(), y_ref)}
    for name, grad in g.items():
        assert torch.isfinite(grad).all(), name
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name
        errors[f"d{name}"] = rel_err(grad.cpu(), g_ref[name])
    return errors


def assert_matches_oracle(fn, inputs, tol, knobs=None, **kwargs):
    """fn(**inputs, **kwargs, **knobs) against the float64 oracle (which gets no knobs): y and every gradient
    within ``tol`` (relative, in norm)."""
    errors = errors_against_oracle(fn, inputs, knobs, **kwargs)
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= tol}
    assert not bad, f"above {tol:.0e}: {bad}"
