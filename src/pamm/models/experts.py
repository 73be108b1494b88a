"""Dual parameter experts: the SSM's B and C maps from a mixture of low-rank experts with per-task noisy top-k
routers (pamm-notes §1).

For task t and input x (the task's expanded features, C channels)::

    logits, noise_std, mix = router_t(x)                    # 2E + 1 numbers per image
    g = top_k(softmax(logits + randn * noise_std))          # noise in training only; the E - k smallest -> 0
    out = BN_out_t( BN_experts_t(sum_i g_i * expert_i(x)) + task_proj_t(x) * mix + general(x.detach()) )

``expert_i`` (shared by all tasks) and ``task_proj_t`` are low-rank convolutions: a k x k conv C -> R followed by a
1x1 conv R -> out. ``general`` is a full k x k conv shared by the tasks.

Execution (fused): all experts, task projections and B/C sets run as one stacked convolution over the task-stacked
input, a per-sample gating of the rank groups and one 1x1 convolution (exact:
sum_i g_i M_i(W_i x + b_i) = [M_1 ... M_E](g * [W_1; ...; W_E] x + g * b) ); routers vectorised over tasks and
samples. The released code's formulation (one convolution per expert and task, top-k masks written sample by sample)
is :mod:`pamm.models.reference`, tested equal to this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import pair
from .layers import conv_bias, conv_default_init_

__all__ = ["TaskRouters", "ParameterExperts", "DualParameterExperts", "noisy_top_k", "resample_pool_weight"]


def resample_pool_weight(weight: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Resample learned spatial-pooling weights (T, H0*W0) built for ``grid`` to another grid ``size``.

    Bilinear on the (H0, W0) map, scaled by H0*W0 / (H*W) so a constant feature map pools to the same value.
    """
    if tuple(size) == tuple(grid):
        return weight
    t = weight.shape[0]
    w = F.interpolate(weight.reshape(t, 1, *grid), size=tuple(size), mode="bilinear", align_corners=False)
    return w.reshape(t, -1) * (grid[0] * grid[1] / (size[0] * size[1]))


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def noisy_top_k(logits: Tensor, top_k: int, noise: bool) -> tuple[Tensor, Tensor]:
    """Noisy top-k gating, vectorised over every leading dimension.

    Args:
        logits: (..., 2E + 1): E routing logits, E noise scales, 1 mixing scalar.
        top_k: experts kept per image; the others get weight 0 (no renormalisation, as the released code).
        noise: add ``randn * noise_scale`` to the logits (training).

    Returns:
        gates (..., E) and mix (...).
    """
    e = (logits.shape[-1] - 1) // 2
    raw, scale, mix = logits[..., :e], logits[..., e : 2 * e], logits[..., 2 * e]
    if noise:
        raw = raw + torch.randn_like(raw) * scale
    probs = torch.softmax(_at_least_fp32(raw), dim=-1)
    if top_k < e:
        keep = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
        probs = probs * keep
    return probs, mix


class TaskRouters(nn.Module):
    """The per-task routers of one expert set, parameters stacked over tasks.

    Router t maps x (b, C, H, W) to 2E + 1 numbers: a channel branch (1x1 conv C -> C/4, LayerNorm, GELU,
    1x1 conv, mean over positions) and a spatial branch (learned pooling over positions, LayerNorm(C), GELU,
    1x1 conv C -> C/4), concatenated (C/2) and projected by a 1x1 conv to 2E + 1.

    Args:
        tasks: T. channels: C (divisible by 4). experts: E. grid: (H0, W0) the spatial pooling is learned on.
    """

    def __init__(self, tasks: int, channels: int, experts: int, grid: tuple[int, int]):
        super().__init__()
        c4 = channels // 4
        self.tasks, self.channels, self.experts, self.grid = tasks, channels, experts, pair(grid)
        self.channel_proj = nn.Parameter(torch.empty(tasks, c4, channels))
        self.channel_proj_bias = nn.Parameter(torch.empty(tasks, c4))
        self.channel_norm_weight = nn.Parameter(torch.ones(tasks, c4))
        self.channel_norm_bias = nn.Parameter(torch.zeros(tasks, c4))
        self.channel_mix = nn.Parameter(torch.empty(tasks, c4, c4))
        self.channel_mix_bias = nn.Parameter(torch.empty(tasks, c4))
        self.pool = nn.Parameter(torch.empty(tasks, grid[0] * grid[1]))
        self.pool_bias = nn.Parameter(torch.zeros(tasks))
        self.spatial_norm_weight = nn.Parameter(torch.ones(tasks, channels))
        self.spatial_norm_bias = nn.Parameter(torch.zeros(tasks, channels))
        self.spatial_proj = nn.Parameter(torch.empty(tasks, c4, channels))
        self.spatial_proj_bias = nn.Parameter(torch.empty(tasks, c4))
        self.head = nn.Parameter(torch.empty(tasks, 2 * experts + 1, 2 * c4))
        self.head_bias = nn.Parameter(torch.empty(tasks, 2 * experts + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c4 = self.channels // 4
        for t in range(self.tasks):
            conv_default_init_(self.channel_proj[t], self.channel_proj_bias[t], self.channels)
            conv_default_init_(self.channel_mix[t], self.channel_mix_bias[t], c4)
            conv_default_init_(self.spatial_proj[t], self.spatial_proj_bias[t], self.channels)
            conv_default_init_(self.head[t], self.head_bias[t], 2 * c4)
        nn.init.trunc_normal_(self.pool, std=0.02)  # the released model's effective Linear init

    def pool_weight(self, size: tuple[int, int]) -> Tensor:
        """(T, H*W) spatial pooling weights for a grid of ``size``."""
        return resample_pool_weight(self.pool, self.grid, size)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """x (b, T, C, L) task-stacked tokens of a grid ``size`` -> logits (b, T, 2E + 1)."""
        f = torch.einsum("btcl,tdc->btld", x, self.channel_proj) + self.channel_proj_bias[:, None]
        f = F.layer_norm(f, f.shape[-1:]) * self.channel_norm_weight[:, None] + self.channel_norm_bias[:, None]
        f = F.gelu(f).mean(dim=2)  # the 1x1 conv commutes with the mean: apply it after (exact, L times less)
        f = torch.einsum("btc,tdc->btd", f, self.channel_mix) + self.channel_mix_bias
        s = torch.einsum("btcl,tl->btc", x, self.pool_weight(size).to(x.dtype)) + self.pool_bias[:, None]
        s = F.layer_norm(s, s.shape[-1:]) * self.spatial_norm_weight + self.spatial_norm_bias
        s = torch.einsum("btc,tdc->btd", F.gelu(s), self.spatial_proj) + self.spatial_proj_bias
        return torch.einsum("btc,tdc->btd", torch.cat([f, s], dim=-1), self.head) + self.head_bias


class ParameterExperts(nn.Module):
    """One set of parameter experts (B, C or the optional x branch): T tasks, C_in -> C_out channels.

    Parameters (stacked): ``expert_down`` (E*R, C_in, k, k) + bias, ``expert_up`` (E, C_out, R) + bias,
    ``task_down`` (T*R, C_in, k, k) + bias, ``task_up`` (T, C_out, R) + bias, ``general`` Conv2d(C_in, C_out, k),
    ``norm_experts`` / ``norm_out`` BatchNorm2d(T*C_out) (a BatchNorm per task), ``router`` :class:`TaskRouters`.
    """

    def __init__(
        self,
        tasks: int,
        in_channels: int,
        out_channels: int,
        num_experts: int,
        rank: int,
        kernel: int,
        top_k: int,
        grid: tuple[int, int],
        router_noise: bool = True,
        general_detach: bool = True,
    ):
        super().__init__()
        self.tasks, self.in_channels, self.out_channels = tasks, in_channels, out_channels
        self.num_experts, self.rank, self.kernel, self.top_k = num_experts, rank, kernel, top_k
        self.router_noise, self.general_detach = router_noise, general_detach
        self.router = TaskRouters(tasks, in_channels, num_experts, grid)
        self.expert_down = nn.Parameter(torch.empty(num_experts * rank, in_channels, kernel, kernel))
        self.expert_down_bias = nn.Parameter(torch.empty(num_experts * rank))
        self.expert_up = nn.Parameter(torch.empty(num_experts, out_channels, rank))
        self.expert_up_bias = nn.Parameter(torch.empty(num_experts, out_channels))
        self.task_down = nn.Parameter(torch.empty(tasks * rank, in_channels, kernel, kernel))
        self.task_down_bias = nn.Parameter(torch.empty(tasks * rank))
        self.task_up = nn.Parameter(torch.empty(tasks, out_channels, rank))
        self.task_up_bias = nn.Parameter(torch.empty(tasks, out_channels))
        self.general = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        self.norm_experts = nn.BatchNorm2d(tasks * out_channels)
        self.norm_out = nn.BatchNorm2d(tasks * out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_down = self.in_channels * self.kernel * self.kernel
        for down, down_b, up, up_b, n in (
            (self.expert_down, self.expert_down_bias, self.expert_up, self.expert_up_bias, self.num_experts),
            (self.task_down, self.task_down_bias, self.task_up, self.task_up_bias, self.tasks),
        ):
            for i in range(n):  # low-rank convs: default weight init, zero biases (released LoraConv)
                sl = slice(i * self.rank, (i + 1) * self.rank)
                conv_default_init_(down[sl], down_b[sl], fan_down, zero_bias=True)
                conv_default_init_(up[i], up_b[i], self.rank, zero_bias=True)

    def gates(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Routing weights (..., E) and mixing scalar (...) from router logits (..., 2E + 1)."""
        return noisy_top_k(logits, self.top_k, self.training and self.router_noise)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (b, T*C_in, H, W) task-stacked -> (out (b, T*C_out, H, W), gates (b, T, E))."""
        return fused_parameter_maps([self], x)[0]


class DualParameterExperts(nn.Module):
    """The paper's dual parameter experts: one :class:`ParameterExperts` set makes B, another makes C; both sets'
    convolutions run together."""

    def __init__(self, tasks: int, in_channels: int, d_state: int, **kwargs):
        super().__init__()
        self.B = ParameterExperts(tasks, in_channels, d_state, **kwargs)
        self.C = ParameterExperts(tasks, in_channels, d_state, **kwargs)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (b, T*C_in, H, W) -> B, C (b, T*N, H, W) and the routing weights [(b, T, E) of B, of C]."""
        (b_map, b_gates), (c_map, c_gates) = fused_parameter_maps([self.B, self.C], x)
        return b_map, c_map, [b_gates, c_gates]


def fused_parameter_maps(sets: list[ParameterExperts], x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Run expert sets that share their input in one stacked convolution.

    Args:
        sets: expert sets with equal ``tasks``, ``in_channels``, ``kernel`` and ``general_detach``.
        x: (b, T*C_in, H, W) task-stacked input (any memory format).

    Returns:
        per set: (out (b, T*C_out, H, W), gates (b, T, E)).
    """
    first = sets[0]
    t_, c, k = first.tasks, first.in_channels, first.kernel
    b, _, h, w = x.shape
    tokens = x.view(b, t_, c, h * w)
    images = x.view(b, t_, c, h, w).reshape(b * t_, c, h, w)  # tasks folded into the batch: shared weights
    if x.is_contiguous(memory_format=torch.channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    down = torch.cat([p for s in sets for p in (s.expert_down, s.task_down)])
    down_bias = torch.cat([p for s in sets for p in (s.expert_down_bias, s.task_down_bias)])
    hidden = F.conv2d(images, down, down_bias, padding=k // 2)  # (b*T, sum_s (E + T) * R, H, W)
    general_in = images.detach() if first.general_detach else images
    general = F.conv2d(
        general_in,
        torch.cat([s.general.weight for s in sets]),
        torch.cat([conv_bias(s.general) for s in sets]),
        padding=k // 2,
    )  # (b*T, sum_s C_out, H, W)
    results, h_off, g_off = [], 0, 0
    diag = torch.arange(t_, device=x.device)
    for s in sets:
        e, r, n = s.num_experts, s.rank, s.out_channels
        gates, mix = s.gates(s.router(tokens, (h, w)))  # (b, T, E), (b, T)
        expert_h = hidden[:, h_off : h_off + e * r]
        task_h = hidden[:, h_off + e * r : h_off + (e + t_) * r]
        h_off += (e + t_) * r
        scale = gates.reshape(b * t_, e, 1).expand(b * t_, e, r).reshape(b * t_, e * r, 1, 1).to(expert_h.dtype)
        up = s.expert_up.permute(1, 0, 2).reshape(n, e * r, 1, 1)
        mixture = (
            F.conv2d(expert_h * scale, up)
            + (gates.reshape(b * t_, e) @ _at_least_fp32(s.expert_up_bias)).to(expert_h.dtype)[:, :, None, None]
        )
        own = task_h.reshape(b, t_, t_, r, h, w)[:, diag, diag]  # each task's own projection: (b, T, R, H, W)
        task = torch.einsum("btrhw,tor->btohw", own, s.task_up.to(own.dtype)) + s.task_up_bias[:, :, None, None]
        y = (
            s.norm_experts(mixture.reshape(b, t_ * n, h, w))
            + (task * mix[:, :, None, None, None].to(task.dtype)).reshape(b, t_ * n, h, w)
            + general[:, g_off : g_off + n].reshape(b, t_ * n, h, w)
        )
        g_off += n
        results.append((s.norm_out(y), gates))
    return results
