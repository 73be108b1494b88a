"""ONNX export of a trained model, checked in ONNX Runtime.

The exported graph is the whole inference model, normalisation included::

    image  float32 (batch, 3, H, W), RGB in [0, 1]
      -> (image - mean) / std  -> backbone -> PAME stages -> fusion -> heads
      -> one output per task, named after it (in ``meta.tasks`` order):
         raw:          float32 (batch, K_task, H, W)  logits / values, as ``model(images)``
         postprocess:  semseg, human_parts int64 class ids (batch, H, W); depth float32 metres >= 0 (batch, H, W);
                       normals float32 unit vectors (batch, 3, H, W); edge, sal float32 probabilities (batch, H, W)
                       (:func:`pamm.tasks.postprocess`)

H and W are fixed at export (``size``, multiples of the backbone stride; default: the model's test size): the scan
orders (Hilbert curves) are computed for one token grid. The batch is fixed too, or free with ``dynamic_batch``.

The selective scan is exported through its pure-PyTorch backend (``runtime.scan_backend = "reference"``, set on a
copy of the model): no Triton or Numba kernel reaches the exporter. The exporter is PyTorch's ``torch.export``-based
one (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``), writing ONNX opset :data:`ONNX_OPSET`
(ONNX Runtime >= 1.14, TensorRT >= 8.6), without onnxscript's graph optimiser (it made the export 3-5 times slower
here; ONNX Runtime folds constants itself when it loads the file). The file carries its metadata
(``metadata_props``: tasks, head sizes, class names, normalisation, stride, size, outputs) and is written
atomically. After writing, the file is run in ONNX
Runtime on the CPU (when installed) on a random image and compared with PyTorch; the largest relative difference of
each output is reported.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import InputError, ResourceError
from ..tasks import postprocess

if TYPE_CHECKING:
    from ..models import PAMM

__all__ = ["ONNX_OPSET", "FORMATS", "OnnxGraph", "ExportReport", "export_onnx", "export_size", "parse_size",
           "compare_outputs", "check_output_path"]  # fmt: skip

ONNX_OPSET = 18
"""The ONNX opset the export targets."""

FORMATS = ("onnx", "pretrained")
"""What ``pamm export --format`` writes: an ONNX file, or a pretrained folder (:mod:`pamm.interop.hub`)."""

_OUTPUT_DOC = {
    "semseg": "int64 class ids (batch, H, W)", "human_parts": "int64 class ids (batch, H, W)",
    "depth": "float32 metres >= 0 (batch, H, W)", "normals": "float32 unit vectors (batch, 3, H, W)",
    "edge": "float32 boundary probability (batch, H, W)", "sal": "float32 saliency probability (batch, H, W)",
}  # fmt: skip


class OnnxGraph(nn.Module):
    """What the exported graph computes (module docstring): ``image (b, 3, H, W)`` RGB in [0, 1] -> a tuple of
    per-task outputs in ``model.tasks`` order, raw or post-processed."""

    input_mean: Tensor
    input_std: Tensor

    def __init__(self, model: PAMM, postprocess: bool = False):
        super().__init__()
        self.model, self.postprocess = model, postprocess
        self.tasks = tuple(model.meta.tasks)
        self.register_buffer("input_mean", torch.tensor(model.meta.mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("input_std", torch.tensor(model.meta.std, dtype=torch.float32).view(1, 3, 1, 1), False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model((image - self.input_mean) / self.input_std)
        if not self.postprocess:
            return tuple(outputs[t] for t in self.tasks)
        return tuple(postprocess(t, outputs[t]) for t in self.tasks)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it was checked.

    Attributes:
        path: the ONNX file (weights inside it; ``external_data`` names the weights file beside it for models over
            2 GB).
        opset: ONNX opset.
        size: (H, W) of the input.
        batch: fixed batch size, or None with a dynamic batch.
        postprocess: whether the outputs are post-processed.
        outputs: output name -> description.
        bytes: size of the written file(s).
        seconds: export time.
        max_relative_difference: output -> largest |onnx - torch| / max |torch| on the check image (the fraction of
            differing pixels for class ids); empty when ONNX Runtime is not installed.
        onnxruntime: the ONNX Runtime version used for the check, or None.
    """

    path: Path
    opset: int
    size: tuple[int, int]
    batch: int | None
    postprocess: bool
    outputs: dict[str, str]
    bytes: int
    seconds: float
    external_data: str | None = None
    max_relative_difference: dict[str, float] = field(default_factory=dict)
    onnxruntime: str | None = None

    def summary(self) -> str:
        h, w = self.size
        batch = "dynamic batch" if self.batch is None else f"batch {self.batch}"
        lines = [
            f"wrote {self.path} ({self.bytes / 2**20:.1f} MiB, ONNX opset {self.opset}, input image float32 "
            f"({'N' if self.batch is None else self.batch}, 3, {h}, {w}) RGB in [0, 1], {batch}, "
            f"{'post-processed' if self.postprocess else 'raw'} outputs {', '.join(self.outputs)}; "
            f"{self.seconds:.0f} s)"
        ]
        if self.onnxruntime:
            worst = max(self.max_relative_difference.values(), default=0.0)
            lines.append(
                f"checked in ONNX Runtime {self.onnxruntime} (CPU) against PyTorch on a random image: "
                f"largest relative difference {worst:.1e} ("
                + ", ".join(f"{k} {v:.1e}" for k, v in self.max_relative_difference.items())
                + ")"
            )
        else:
            lines.append("not checked: onnxruntime is not installed (pip install 'pamm[export]')")
        return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W); a ValueError names what was expected."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 448x576") from None
    if h < 1 or w < 1:
        raise InputError(f"size {text!r}: height and width must be positive")
    return h, w


def export_size(meta: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    """The input size of the export: ``size`` checked against the stride, or the model's test size."""
    if size is None:
        size = tuple(getattr(meta, "test_size", None) or meta.train_size)
    h, w = size
    if h < 1 or w < 1 or h % meta.stride or w % meta.stride:
        raise InputError(
            f"size {h}x{w}: height and width must be positive multiples of the backbone stride "
            f"{meta.stride} (e.g. {max(1, h // meta.stride) * meta.stride}x"
            f"{max(1, w // meta.stride) * meta.stride})"
        )
    return int(h), int(w)


def check_output_path(out: Path, overwrite: bool) -> None:
    """Refuse a folder, or an existing file without ``overwrite`` (InputError)."""
    if out.is_dir():
        raise InputError(f"{out}: is a folder; expected the path of the .onnx file to write")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite (overwrite=True) to replace it, or choose another path")


def _metadata(model: PAMM, size: tuple[int, int], postprocess_outputs: bool) -> dict[str, str]:
    meta = model.meta
    spec = meta.spec
    outputs = {
        t: (
            _OUTPUT_DOC.get(t, "float32")
            if postprocess_outputs
            else f"float32 raw head output (batch, {meta.num_outputs[t]}, H, W)"
        )
        for t in meta.tasks
    }
    entries = {
        "pamm_format": "pamm-onnx-1", "pamm_version": __version__, "dataset": meta.dataset,
        "tasks": list(meta.tasks), "num_outputs": dict(meta.num_outputs), "input": "image",
        "input_description": "float32 (batch, 3, H, W), RGB in [0, 1]; normalised inside the graph",
        "mean": list(meta.mean), "std": list(meta.std), "stride": meta.stride, "size": list(size),
        "postprocess": postprocess_outputs, "outputs": outputs,
        "class_names": {t: list(n) for t, n in (spec.class_names.items() if spec else []) if t in meta.tasks},
    }  # fmt: skip
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in entries.items()}


def compare_outputs(reference: dict[str, Tensor] | tuple, exported: list, names: list[str]) -> dict[str, float]:
    """Per output: largest |exported - reference| / max |reference| (float outputs), or the fraction of differing
    values (integer outputs)."""
    refs = reference if isinstance(reference, tuple) else tuple(reference[n] for n in names)
    result = {}
    for name, ref, value in zip(names, refs, exported):
        value = torch.as_tensor(value)
        if not ref.is_floating_point():
            result[name] = float((value != ref).double().mean())
            continue
        scale = ref.abs().max().clamp_min(torch.finfo(ref.dtype).tiny)
        result[name] = float((value.to(ref.dtype) - ref).abs().max() / scale)
    return result


def _save(program: Any, out: Path) -> str | None:
    """Write the exported program to ``out`` atomically (with a ``.data`` file beside it above 2 GB). Returns the
    external data file's name or None."""
    from ..fs import AtomicGroup

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    try:
        try:
            program.save(staging / out.name)
        except OSError as e:
            raise ResourceError(f"could not write {out}: {e.strerror or e}", e.errno) from e
        data = [p for p in staging.iterdir() if p.name != out.name]
        with AtomicGroup() as group:
            for staged in [staging / out.name, *data]:
                group.write(out.parent / staged.name, functools.partial(os.replace, staged))
        return data[0].name if data else None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_onnx(
    model: PAMM,
    out: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    postprocess: bool = False,
    opset: int = ONNX_OPSET,
    overwrite: bool = False,
    check: bool = True,
) -> ExportReport:
    """Export ``model`` (a :class:`~pamm.models.PAMM`) to an ONNX file (module docstring).

    Args:
        model: the model; it is not changed (a CPU copy is exported).
        out: the .onnx file to write.
        size: (H, W) of the input, multiples of the stride (default: the model's test size).
        batch_size: the fixed batch size (ignored with ``dynamic_batch``).
        dynamic_batch: let the batch dimension be any size.
        postprocess: output class ids / metres / unit normals / probabilities instead of raw head outputs.
        opset: ONNX opset.
        overwrite: replace an existing file.
        check: run the file in ONNX Runtime (when installed) and compare with PyTorch.

    Raises:
        InputError: a size that is not a stride multiple, an existing output without ``overwrite``, a folder.
        ResourceError: the file could not be written (nothing is left behind).
    """
    out = Path(out)
    check_output_path(out, overwrite)
    size = export_size(model.meta, size)
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: must be at least 1")
    start = time.perf_counter()
    copy_ = copy.deepcopy(model).cpu().float().eval()
    copy_.set_runtime(
        dataclasses.replace(copy_.runtime, scan_backend="reference", channels_last=False, activation_checkpointing=[])
    )
    graph = OnnxGraph(copy_, postprocess).eval()
    batch = 2 if dynamic_batch else batch_size
    image = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = {"image": {0: torch.export.Dim("batch", min=1, max=4096)}}
    tasks = list(graph.tasks)
    with torch.no_grad():
        reference = graph(image)  # also computes the scan orders, which are then constants of the graph
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            graph,
            (image,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=tasks,
            dynamic_shapes=dynamic_shapes,
            optimize=False,
            verbose=False,
        )
    assert program is not None  # dynamo=True returns the ONNXProgram
    input_shape = program.model.graph.inputs[0].shape  # None: not known at all (so not fixed either)
    if dynamic_batch and input_shape is not None and isinstance(input_shape[0], int):
        raise RuntimeError("the exporter fixed the batch dimension although a dynamic batch was asked for")
    program.model.metadata_props.update(_metadata(copy_, size, postprocess))
    program.model.doc_string = (
        f"PAMM ({', '.join(tasks)}; {copy_.meta.dataset}) exported by pamm; see "
        f"metadata_props for inputs, outputs and normalisation"
    )
    external = _save(program, out)
    written = out.stat().st_size + ((out.parent / external).stat().st_size if external else 0)
    report = ExportReport(
        path=out,
        opset=opset,
        size=size,
        batch=None if dynamic_batch else batch_size,
        postprocess=postprocess,
        outputs=json.loads(_metadata(copy_, size, postprocess)["outputs"]),
        bytes=written,
        seconds=time.perf_counter() - start,
        external_data=external,
    )
    if check:
        try:
            import onnxruntime
        except ImportError:
            return report
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        exported = session.run(tasks, {"image": image.numpy()})
        report.max_relative_difference = compare_outputs(reference, exported, tasks)
        report.onnxruntime = onnxruntime.__version__
    return report
