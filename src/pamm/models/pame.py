"""The PAME stage (Parameter Aware Mamba Experts): one per backbone tap (pamm-notes §1).

For a tap f (b, C_in, H, W) and each task t::

    s      = GroupNorm(first_decode(f))                      shared by the tasks
    feat_t = task_conv_t(s)                                  3x3 task convolution; also the residual
    n_t    = GroupNorm_t(feat_t)
    z_t    = SiLU(gate_proj_t(n_t))                          gate
    x_t    = expand_proj_t(SiLU(n_t))                        d -> d_inner = expand * d
    dt_t   = dt_up_t(dt_down_t(x_t))                         low-rank Δ (bias dt_bias_t, softplus, in the scan)
    B_t, C_t = dual parameter experts(x_t) + task priors     (b, N, H, W)
    y_t    = sum over the 4 Hilbert orders of scan(x_t, dt_t, A_t = -exp(A_log_t), B_t, C_t, D_t)
    out_t  = out_proj_t(y_t) * z_t + feat_t

Δ, A, D are per task; all per-task tensors are registered parameters. The tasks run batched (task-stacked maps
(b, T*C, H, W), grouped 1x1 convolutions) and one scan call covers all tasks x directions, reading the tokens
through the scan orders (no permuted copies). The released code's per-task, per-direction formulation is
:mod:`pamm.models.reference`, tested equal to this one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import scan_orders, selective_scan
from .experts import DualParameterExperts, ParameterExperts
from .layers import TaskConv1x1
from .shared import SharedStage

__all__ = ["PAMEStage", "TaskPrior", "dt_bias_init"]


def dt_bias_init(channels: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> Tensor:
    """Mamba's Δ-bias init: softplus(bias) ~ log-uniform in [dt_min, dt_max] (clamped at ``floor``)."""
    dt = torch.exp(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


class TaskPrior(nn.Module):
    """Learnable per-task prior vectors added to B and C at every position.

    Parameters: ``B`` and ``C`` (T, N), truncated-normal init (std 0.02).
    """

    def __init__(self, tasks: int, d_state: int):
        super().__init__()
        self.B = nn.Parameter(torch.empty(tasks, d_state))
        self.C = nn.Parameter(torch.empty(tasks, d_state))
        nn.init.trunc_normal_(self.B, std=0.02)
        nn.init.trunc_normal_(self.C, std=0.02)

    def forward(self, b_map: Tensor, c_map: Tensor) -> tuple[Tensor, Tensor]:
        """b_map, c_map (b, T, N, L) -> the same plus the priors."""
        return b_map + self.B[None, :, :, None].to(b_map.dtype), c_map + self.C[None, :, :, None].to(c_map.dtype)


class PAMEStage(SharedStage):
    """One PAME stage for ``num_tasks`` tasks: the task convolutions of :class:`SharedStage`, then each task's
    selective scan with parameter-expert B and C.

    Args:
        in_channels: channels of the backbone tap.
        num_tasks: T.
        cfg: the architecture (dim, expand, d_state, experts, priors, scan order, ...).
        grid: token grid (H, W) the routers' spatial pooling is learned on (other grids are resampled).

    Attributes:
        scan_backend: the selective-scan backend (a runtime setting: :meth:`PAMM.set_runtime` sets it).

    ``forward(f (b, C_in, H, W)) -> (task-stacked features (b, T*d, H, W), routing weights [(b, T, E), ...])``.
    """

    def __init__(self, in_channels: int, num_tasks: int, cfg: ModelConfig, grid: tuple[int, int]):
        super().__init__(in_channels, num_tasks, cfg.dim)
        d, di, n, t = cfg.dim, cfg.expand * cfg.dim, cfg.d_state, num_tasks
        self.inner, self.d_state = di, n
        self.scan_kind, self.directions = cfg.scan.kind, cfg.scan.directions
        self.scan_backend = "auto"
        self.task_norm = nn.GroupNorm(32 * t, t * d)  # GroupNorm(32, d) per task
        self.gate_proj = TaskConv1x1(t, d, d)
        expert_kwargs: dict[str, Any] = dict(
            num_experts=cfg.num_experts,
            top_k=cfg.top_k,
            grid=grid,
            router_noise=cfg.router_noise,
            general_detach=cfg.general_detach,
        )
        self.x_experts = (
            ParameterExperts(t, d, d, rank=cfg.x_expert_rank, kernel=cfg.x_expert_kernel, **expert_kwargs)
            if cfg.x_experts
            else None
        )
        self.expand_proj = TaskConv1x1(t, d, di)
        r = cfg.resolved_dt_rank
        self.dt_down = TaskConv1x1(t, di, r, bias=False)
        self.dt_up = TaskConv1x1(t, r, di, bias=False)
        self.dt_bias = nn.Parameter(torch.stack([dt_bias_init(di) for _ in range(t)]))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(t, di, 1))
        self.D = nn.Parameter(torch.ones(t, di))
        with torch.no_grad():
            nn.init.trunc_normal_(self.dt_down.weight, std=0.02)  # released model's effective Linear init
            self.dt_up.weight.uniform_(-(r**-0.5), r**-0.5)  # Mamba's Δ init (kept: not overwritten later)
        self.bc: DualParameterExperts | TaskConv1x1
        if cfg.experts:
            self.bc = DualParameterExperts(t, di, n, rank=cfg.expert_rank, kernel=cfg.expert_kernel, **expert_kwargs)
        else:
            self.bc = TaskConv1x1(t, di, 2 * n)  # ablation: plain per-task 1x1 projections to B and C
        self.prior = TaskPrior(t, n) if cfg.priors else None
        self.out_proj = TaskConv1x1(t, di, d)
        self._orders: dict[tuple, Tensor] = {}

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters trained without weight decay: the SSM's A_log, D and Δ
        bias, and the task priors."""
        names = {"A_log", "D", "dt_bias"}
        return names | ({"prior.B", "prior.C"} if self.prior is not None else set())

    @torch.compiler.disable  # computed once per grid in NumPy: left out of compiled graphs
    def orders(self, height: int, width: int, device: torch.device) -> Tensor:
        """Scan orders (K, H*W) for this grid on ``device`` (cached)."""
        key = (height, width, str(device))
        if key not in self._orders:
            self._orders[key] = scan_orders(height, width, self.scan_kind, self.directions, device=device)
        return self._orders[key]

    def _bc_maps(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x (b, T*di, H, W) -> B, C (b, T, N, L) and routing weights."""
        b, _, h, w = x.shape
        if isinstance(self.bc, DualParameterExperts):
            b_map, c_map, routing = self.bc(x)
        else:
            b_map, c_map = self.bc(x).view(b, self.tasks, 2 * self.d_state, h, w).chunk(2, dim=2)
            routing = []
        b_map = b_map.reshape(b, self.tasks, self.d_state, h * w)
        c_map = c_map.reshape(b, self.tasks, self.d_state, h * w)
        if self.prior is not None:
            b_map, c_map = self.prior(b_map, c_map)
        return b_map, c_map, routing

    def forward(self, f: Tensor) -> tuple[Tensor, list[Tensor]]:
        """f (b, C_in, H, W) -> task-stacked output (b, T*d, H, W) and routing weights [(b, T, E), ...]."""
        feat = self.task_features(f)
        b, _, h, w = feat.shape
        normed = self.task_norm(feat)
        z = F.silu(self.gate_proj(normed))
        routing: list[Tensor] = []
        if self.x_experts is not None:
            normed, x_gates = self.x_experts(normed)
            routing.append(x_gates)
        x = self.expand_proj(F.silu(normed))
        delta = self.dt_up(self.dt_down(x))
        b_map, c_map, bc_routing = self._bc_maps(x)
        y = selective_scan(
            x.flatten(2),
            delta.flatten(2),
            -torch.exp(self.A_log).flatten(0, 1),
            b_map,
            c_map,
            self.D.flatten(),
            self.dt_bias.flatten(),
            delta_softplus=True,
            orders=self.orders(h, w, x.device),
            backend=self.scan_backend,
        )
        out = self.out_proj(y.view(b, self.tasks * self.inner, h, w)) * z + feat
        return out, routing + bc_routing
