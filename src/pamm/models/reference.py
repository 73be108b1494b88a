"""The released code's formulation of PAMM, computed from the parameters of our modules (tests and benchmarks only).

:class:`~pamm.models.pamm.PAMM` has one execution, the fused one: tasks stacked along the channels, every expert of
B and C in one convolution, all tasks x directions in one scan call. The authors' code (github.com/CQC-gogopro/PAMM)
computes the same function one module at a time; this file restates it that way, reading the weights of a built
model, so that the two can be compared on the same parameters:

- per task: its 3x3 convolution, GroupNorm, gate, x projection, low-rank Δ projection, B and C, scan, output
  projection and residual;
- per expert set (B, C, and the optional x branch) and task: the router (channel branch, spatial branch, head),
  the softmax of the noisy logits, the E - k smallest weights zeroed one sample at a time, then one convolution
  pair per expert, the task's own low-rank projection, the shared general projection and the task's two
  BatchNorms;
- per task and scan direction: x, Δ, B and C permuted into the scan order, one selective scan, the result permuted
  back; the directions summed.

Our modules store per-task and per-expert weights stacked (task t's 1x1 projection is ``weight[t]``, expert e's
down-projection rows ``[e*R, (e+1)*R)``); :mod:`pamm.interop.convert` lists which slice holds which released tensor.

Used by ``tests/test_model.py`` (fused == reference in float64: outputs and every gradient) and by
``benchmarks/train_step.py`` (the authors' execution pattern, timed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import pair
from ..ops import selective_scan
from .experts import DualParameterExperts, ParameterExperts, TaskRouters, noisy_top_k
from .layers import TaskConv1x1, conv_bias
from .pame import PAMEStage
from .pamm import PAMM
from .shared import SharedStage

__all__ = [
    "forward_reference",
    "stage_reference",
    "parameter_experts_reference",
    "router_reference",
    "gates_reference",
    "top_k_sample_loop",
]


def forward_reference(model: PAMM, images: Tensor, return_routing: bool = False):
    """``model(images, return_routing)`` computed the released code's way: the same outputs and routing list.

    Only the decoder stages differ from :meth:`PAMM.forward` (the backbone, stage fusion and heads have one
    formulation); runtime settings other than the scan backend (activation checkpointing, channels-last) are not
    applied, as in the released code.
    """
    model.check_input_size(images)
    stage_outputs: list[Tensor] = []
    routing: list[Tensor] = []
    for stage, f in zip(model.stages, model.backbone(images)):
        assert isinstance(stage, SharedStage)  # PAMM's stages (PAMEStage extends it)
        out, gates = stage_reference(stage, f)
        stage_outputs.append(out)
        routing.extend(gates)
    outputs = model.task_predictions(stage_outputs, pair(images.shape[-2:]))
    return (outputs, routing) if return_routing else outputs


def _sum(terms: list[Tensor]) -> Tensor:
    """terms[0] + terms[1] + ..., left to right (a running sum, as the released code adds them up)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _task_conv1x1(conv: TaskConv1x1, x: Tensor, t: int) -> Tensor:
    """Task t's 1x1 convolution of a stacked :class:`TaskConv1x1`: (b, C_in, H, W) -> (b, C_out, H, W)."""
    return F.conv2d(x, conv.weight[t, :, :, None, None], None if conv.bias is None else conv.bias[t])


def stage_reference(stage: SharedStage, f: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A PAME stage (or a shared-decoder stage) task by task.

    Args:
        stage: a :class:`PAMEStage` or :class:`SharedStage` (its parameters are used).
        f: the backbone tap (b, C_in, H, W).

    Returns:
        the task-stacked output (b, T*d, H, W) and the routing weights, one (b, E) tensor per router and task
        (x-branch routers first when present, then those of B, then those of C), as :meth:`PAMM.forward` lists them.
    """
    s = stage.input_norm(stage.first_decode(f))
    d = stage.dim
    weight, bias = stage.task_conv.weight, conv_bias(stage.task_conv)
    feats = [F.conv2d(s, weight[i * d : (i + 1) * d], bias[i * d : (i + 1) * d], padding=1) for i in range(stage.tasks)]
    if not isinstance(stage, PAMEStage):
        return torch.cat(feats, dim=1), []
    b, _, h, w = s.shape
    normed = [
        F.group_norm(
            feat,
            32,
            stage.task_norm.weight[i * d : (i + 1) * d],
            stage.task_norm.bias[i * d : (i + 1) * d],
            stage.task_norm.eps,
        )
        for i, feat in enumerate(feats)
    ]
    gates_z = [F.silu(_task_conv1x1(stage.gate_proj, n, i)) for i, n in enumerate(normed)]
    routing: list[Tensor] = []
    if stage.x_experts is not None:  # the x-branch experts (computed and discarded by the released code)
        normed, x_gates = parameter_experts_reference(stage.x_experts, normed)
        routing += x_gates
    xs = [_task_conv1x1(stage.expand_proj, F.silu(n), i) for i, n in enumerate(normed)]
    b_maps: Sequence[Tensor]
    c_maps: Sequence[Tensor]
    if isinstance(stage.bc, DualParameterExperts):
        b_maps, b_gates = parameter_experts_reference(stage.bc.B, xs)
        c_maps, c_gates = parameter_experts_reference(stage.bc.C, xs)
        routing += b_gates + c_gates
    else:  # ablation: plain per-task 1x1 projections to B and C
        b_maps, c_maps = zip(*(_task_conv1x1(stage.bc, x, i).chunk(2, dim=1) for i, x in enumerate(xs)))
    outs = []
    for i, x in enumerate(xs):
        u = x.flatten(2)
        delta = _task_conv1x1(stage.dt_up, _task_conv1x1(stage.dt_down, x, i), i).flatten(2)
        b_i, c_i = b_maps[i].flatten(2), c_maps[i].flatten(2)
        if stage.prior is not None:
            b_i = b_i + stage.prior.B[i][None, :, None]
            c_i = c_i + stage.prior.C[i][None, :, None]
        a = -torch.exp(stage.A_log[i])
        directions = []
        for order in stage.orders(h, w, s.device):
            inverse = torch.argsort(order)
            y_k = selective_scan(
                u[..., order],
                delta[..., order],
                a,
                b_i[..., order],
                c_i[..., order],
                stage.D[i],
                stage.dt_bias[i],
                delta_softplus=True,
                backend=stage.scan_backend,
            )
            directions.append(y_k[..., inverse])
        y = _sum(directions)
        outs.append(_task_conv1x1(stage.out_proj, y.view(b, stage.inner, h, w), i) * gates_z[i] + feats[i])
    return torch.cat(outs, dim=1), routing


def router_reference(router: TaskRouters, x: Tensor, t: int) -> Tensor:
    """Task t's router on its own map x (b, C, H, W) -> logits (b, 2E + 1): channel branch (1x1 conv, LayerNorm
    over channels, GELU, 1x1 conv, mean over positions) and spatial branch (learned pooling over positions,
    LayerNorm, GELU, linear), concatenated and projected."""
    b, c, h, w = x.shape
    f = F.conv2d(x, router.channel_proj[t, :, :, None, None], router.channel_proj_bias[t])
    f = F.layer_norm(f.permute(0, 2, 3, 1), (f.shape[1],), router.channel_norm_weight[t], router.channel_norm_bias[t])
    f = F.conv2d(F.gelu(f).permute(0, 3, 1, 2), router.channel_mix[t, :, :, None, None], router.channel_mix_bias[t])
    f = f.mean(dim=(2, 3))
    s = F.linear(x.reshape(b, c, h * w), router.pool_weight((h, w))[t : t + 1], router.pool_bias[t : t + 1])[..., 0]
    s = F.gelu(F.layer_norm(s, (c,), router.spatial_norm_weight[t], router.spatial_norm_bias[t]))
    s = F.linear(s, router.spatial_proj[t], router.spatial_proj_bias[t])
    return F.linear(torch.cat([f, s], dim=1), router.head[t], router.head_bias[t])


def top_k_sample_loop(probs: Tensor, top_k: int) -> Tensor:
    """The released masking: for every image, zero its E - k smallest weights one write at a time.
    probs (b, E) -> (b, E)."""
    out = probs.clone()
    drop = probs.shape[-1] - top_k
    if drop <= 0:
        return out
    smallest = probs.topk(drop, dim=-1, largest=False).indices
    for j in range(probs.shape[0]):
        for i in range(drop):
            out[j, smallest[j, i]] = 0
    return out


def gates_reference(experts: ParameterExperts, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Routing weights (b, E) and mixing scalar (b,) from router logits (b, 2E + 1): softmax over the (noisy, in
    training) logits, then :func:`top_k_sample_loop`."""
    probs, mix = noisy_top_k(logits, experts.num_experts, experts.training and experts.router_noise)
    return top_k_sample_loop(probs, experts.top_k), mix


def _task_batch_norm(norm: nn.BatchNorm2d, x: Tensor, t: int, channels: int) -> Tensor:
    """Task t's BatchNorm: channels [t*C, (t+1)*C) of a stacked BatchNorm2d (running statistics updated in place
    in training, as a separate BatchNorm2d per task would)."""
    sl = slice(t * channels, (t + 1) * channels)
    use_batch = norm.training or norm.running_mean is None
    if norm.momentum is None:
        raise ValueError("a BatchNorm with a cumulative average (momentum=None) has no reference here")
    return F.batch_norm(
        x,
        None if norm.running_mean is None else norm.running_mean[sl],
        None if norm.running_var is None else norm.running_var[sl],
        norm.weight[sl],
        norm.bias[sl],
        use_batch,
        norm.momentum,
        norm.eps,
    )


def parameter_experts_reference(experts: ParameterExperts, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """One expert set task by task and expert by expert.

    Args:
        experts: a :class:`ParameterExperts` (its parameters are used).
        xs: T maps (b, C_in, H, W), one per task.

    Returns:
        T maps (b, C_out, H, W) and T routing weights (b, E).
    """
    r, pad, n = experts.rank, experts.kernel // 2, experts.out_channels
    outs, gates = [], []
    for t, x in enumerate(xs):
        g, mix = gates_reference(experts, router_reference(experts.router, x, t))
        weighted = []
        for i in range(experts.num_experts):
            rows = slice(i * r, (i + 1) * r)
            h = F.conv2d(x, experts.expert_down[rows], experts.expert_down_bias[rows], padding=pad)
            h = F.conv2d(h, experts.expert_up[i, :, :, None, None], experts.expert_up_bias[i])
            weighted.append(g[:, i, None, None, None].to(h.dtype) * h)
        mixture = _sum(weighted)
        rows = slice(t * r, (t + 1) * r)
        task = F.conv2d(
            F.conv2d(x, experts.task_down[rows], experts.task_down_bias[rows], padding=pad),
            experts.task_up[t, :, :, None, None],
            experts.task_up_bias[t],
        )
        general = experts.general(x.detach() if experts.general_detach else x)
        y = _task_batch_norm(experts.norm_experts, mixture, t, n) + task * mix[:, None, None, None] + general
        outs.append(_task_batch_norm(experts.norm_out, y, t, n))
        gates.append(g)
    return outs, gates
