"""The ``pamm`` command: ``data``, ``train``, ``evaluate``, ``predict``, ``convert-official``, ``export``, ``config``.

Exit statuses follow :mod:`pamm.errors`: 0 success; 1 an internal error (a bug: the traceback is printed); 2 an
input or usage error the user can fix (one line naming the file or key and what was expected); 3 a resource or
environment error (disk full, permission denied, a run folder in use); 130 / 143 interrupted by SIGINT / SIGTERM.
``--debug`` also prints the traceback of the errors given as one line.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_SIGINT, EXIT_SIGTERM, Interrupted, Terminated, describe, exit_code

__all__ = ["main", "build_parser"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


def _load_cfg(config: str, sets: list[str]):
    from .config import load_config, parse_override

    return load_config(config, dict(parse_override(s) for s in sets or []))


def _synth_size(text: str) -> tuple[int, int]:
    from .data.synth import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---- data ------------------------------------------------------------------------------------------------


def cmd_data_synth(args) -> int:
    from .data.synth import synthesize

    summary = synthesize(
        Path(args.out),
        layout=args.layout,
        n_train=args.train,
        n_val=args.val,
        size=args.size,
        seed=args.seed,
        preview=Path(args.preview) if args.preview else None,
        overwrite=args.overwrite,
        progress=not args.quiet,
        workers=args.workers,
        tasks=args.tasks,
    )
    counts, (height, width) = summary["counts"], summary["size"]
    tasks = f", tasks {','.join(summary['tasks'])}" if "tasks" in summary else ""
    print(
        f"{'replaced the dataset in' if summary['replaced'] else 'wrote'} {summary['root']}: {counts['train']} "
        f"train + {counts['val']} val images ({args.layout} layout{tasks}, {height}x{width}, seed {args.seed}, "
        f"{summary['seconds']:.1f} s)" + (f"; preview {summary['preview']}" if summary["preview"] else "")
    )
    return 0


def cmd_data_convert(args) -> int:
    from .data.convert import convert_dataset

    summary = convert_dataset(
        args.source,
        Path(args.root),
        Path(args.out),
        tasks=args.tasks,
        splits=args.splits,
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    counts = " + ".join(f"{n} {split}" for split, n in summary["counts"].items())
    print(
        f"{'replaced the dataset in' if summary['replaced'] else 'wrote'} {summary['root']}: {counts} images "
        f"from {args.root} ({args.source}; tasks {','.join(summary['tasks'])}; {summary['seconds']:.1f} s)"
    )
    return 0


def _comma_list(expected: str) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names (blanks dropped); none at all is refused as "expected <expected>"."""

    def names(text: str) -> list[str]:
        found = [name.strip() for name in text.split(",") if name.strip()]
        if not found:
            raise argparse.ArgumentTypeError(f"expected {expected} got {text!r}")
        return found

    return names


_name_list = _comma_list("comma-separated names,")
_task_list = _comma_list("task names separated by commas, like semseg,depth;")


def cmd_data_check(args) -> int:
    from .data import check_dataset

    problems = check_dataset(args.dataset, args.root, progress=not args.quiet and sys.stderr.isatty())
    for p in problems:
        print(p)
    if problems:
        print(f"pamm data check: {len(problems)} problem(s) found in {args.root}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{args.root}: no problems found")
    return 0


# ---- train / evaluate ------------------------------------------------------------------------------------


def _resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted ``train``: the same arguments with ``--resume``."""
    args = [a for a in argv if a != "--resume"] + ["--resume"]
    world = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE")
    launcher = ["pamm"] if not world else ["torchrun", "--nproc_per_node", world, "-m", "pamm"]
    return shlex.join(launcher + args)


def cmd_train(args) -> int:
    from .engine.evaluator import format_table
    from .engine.trainer import Trainer

    cfg = _load_cfg(args.config, args.set)
    trainer = Trainer(
        cfg,
        args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
        command=shlex.join(["pamm", *args.argv]),
    )
    try:
        with trainer:
            metrics = trainer.fit()
    except Interrupted as e:
        if trainer.dist.is_main:
            print(f"pamm train: {e}", file=sys.stderr)
            if e.resumable:
                print(f"resume with: {_resume_command(args.argv)}", file=sys.stderr)
        return e.exit_status
    if trainer.dist.is_main:
        print(format_table(metrics, cfg.data.task_list))
    return 0


def cmd_evaluate(args) -> int:
    from .engine.checkpoint import read_checkpoint_config
    from .engine.evaluator import evaluate_checkpoint, format_table, write_metrics
    from .engine.run import best_checkpoint
    from .fs import check_writable, remove_empty_folders

    if args.run:
        ckpt = best_checkpoint(args.run)
        out = Path(args.out) if args.out else Path(args.run) / "metrics.json"
    else:
        ckpt = Path(args.checkpoint)
        if ckpt.is_dir() and (ckpt / "checkpoints").is_dir():
            raise ValueError(f"--checkpoint {ckpt} is a run folder, not a weights file; use --run {ckpt}")
        out = Path(args.out) if args.out else ckpt.with_name(ckpt.stem + ".metrics.json")
    cfg = _load_cfg(args.config, args.set) if args.config else read_checkpoint_config(ckpt)
    if args.config is None and args.set:
        from .config import override_config, parse_override

        cfg = override_config(cfg, dict(parse_override(s) for s in args.set))
    created = check_writable(out)  # before the evaluation, not after it
    try:
        metrics, cfg = evaluate_checkpoint(
            ckpt,
            cfg,
            split=args.split,
            device=args.device,
            max_images=args.max_images,
            baselines=args.baselines,
            progress=not args.quiet,
        )
        write_metrics(out, metrics, cfg, extra={"checkpoint": str(ckpt), "split": args.split})
    except BaseException:
        remove_empty_folders(created)
        raise
    print(format_table(metrics, cfg.data.task_list))
    print(f"wrote {out}")
    return 0


# ---- predict / convert -----------------------------------------------------------------------------------


def _scale(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive factor like 1 or 0.5, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1) like 0.33, got {text!r}")
    return value


def cmd_predict(args) -> int:
    from .engine.predictor import DEFAULT_OVERLAP
    from .inference import DEFAULT_MAX_PIXELS, load
    from .predict_files import PredictionFailed, find_inputs, predict_files

    inputs = find_inputs(args.inputs)
    predictor = load(
        args.checkpoint,
        device=args.device,
        mode=args.mode,
        scale=args.scale,
        overlap=DEFAULT_OVERLAP if args.overlap is None else args.overlap,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        resize=args.resize,
    )
    try:
        report = predict_files(
            predictor,
            inputs,
            args.out,
            tasks=args.tasks,
            panel=not args.no_panel,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except PredictionFailed as e:
        for _, message in e.report.failures:
            print(f"pamm predict: error: {message}", file=sys.stderr)
        print(
            f"wrote {len(e.report.written)} file(s) to {args.out}; {len(e.report.failures)} of {len(inputs)} "
            f"input(s) failed",
            file=sys.stderr,
        )
        return 2
    parts = [f"{report.images} image(s)"] if report.images else []
    parts += [f"{report.videos} video(s) ({report.frames} frames)"] if report.videos else []
    print(f"wrote {len(report.written)} file(s) for {' and '.join(parts)} to {args.out}")
    return 0


def cmd_convert(args) -> int:
    from .engine.checkpoint import identify_file
    from .interop.convert import convert_official

    kind = identify_file(args.src)
    if kind in ("pamm-weights", "pamm-state"):
        what = "weights file" if kind == "pamm-weights" else "training state (.state.pt)"
        raise ValueError(
            f"{args.src} is a pamm {what}, not a checkpoint of the authors' code; it needs no "
            f"conversion (load weights with `pamm evaluate --checkpoint` or `pamm predict`)"
        )
    if kind == "folder":
        raise ValueError(f"{args.src} is a folder; expected the authors' checkpoint file (.pth)")
    report = convert_official(
        Path(args.src),
        Path(args.dst),
        preset=args.preset,
        x_experts=args.x_experts,
        prior_seed=args.prior_seed,
        overwrite=args.overwrite,
        format=args.format,
    )
    print(report)
    return 0


# ---- export ----------------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    from .errors import InputError
    from .interop.export import FORMATS, check_output_path, export_onnx, parse_size

    if args.format not in FORMATS:
        raise InputError(f"unknown export format {args.format!r}; expected one of {', '.join(FORMATS)}")
    out = Path(args.out)
    if args.format == "pretrained":
        from .interop.hub import export_pretrained

        export_pretrained(
            args.checkpoint, out, overwrite=args.overwrite, name=args.name, license=args.license, hub_id=args.hub_id
        )
        print(
            f"wrote the pretrained folder {out} (config.json, model.safetensors, README.md); load it with "
            f"pamm.load({str(out)!r}) or PAMM.from_pretrained, share it with `hf upload ORG/NAME {out}`"
        )
        return 0
    size = parse_size(args.size) if args.size else None
    check_output_path(out, args.overwrite)  # before loading the model
    from .interop.hub import load_trained

    model = load_trained(args.checkpoint).model
    report = export_onnx(
        model,
        out,
        size=size,
        batch_size=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        postprocess=args.postprocess,
        overwrite=args.overwrite,
        check=not args.no_check,
    )
    print(report.summary())
    return 0


def cmd_config(args) -> int:
    import yaml

    from .config import config_to_dict, preset_names

    if args.name is None:
        print("presets: " + ", ".join(preset_names()))
        return 0
    print(yaml.safe_dump(config_to_dict(_load_cfg(args.name, args.set)), sort_keys=False), end="")
    return 0


# ---- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pamm",
        description="PAMM: multi-task dense prediction with parameter-aware Mamba experts (arXiv 2511.14503).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="render the embedded dataset or check a dataset folder")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser(
        "synth", help="render procedural indoor scenes in the real NYUD / PASCAL layouts",
        description="Render procedural indoor scenes with exact ground truth into OUT/NYUDv2 or OUT/PASCALContext. "
        "The dataset is written into a hidden folder beside its destination and moved into place at the end, so "
        "an interrupted or failed run (Ctrl-C, disk full) leaves nothing half-written.",
    )  # fmt: skip
    s.add_argument("--out", required=True, help="data root; the dataset folder (NYUDv2/ or PASCALContext/) is "
                   "created inside it")  # fmt: skip
    s.add_argument("--layout", choices=["nyud", "pascal", "generic"], default="nyud",
                   help="nyud / pascal: the benchmarks' layouts; generic: the dataset.yaml format (docs/"
                   "dataset-format.md) with the tasks of --tasks, in OUT/generic (default nyud)")  # fmt: skip
    s.add_argument(
        "--tasks",
        type=_name_list,
        default=None,
        metavar="T1,T2",
        help="generic layout only: tasks to write, e.g. semseg,depth (default: all six)",
    )
    s.add_argument("--train", type=int, default=200, help="training images (default 200)")
    s.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    s.add_argument("--size", type=_synth_size, default=(96, 128), help="image size HEIGHTxWIDTH (default 96x128)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    s.add_argument("--preview", help="also write a contact sheet PNG (images with every ground-truth map), outside "
                   "the dataset folder")  # fmt: skip
    s.add_argument("--overwrite", action="store_true",
                   help="replace the dataset an earlier `pamm data synth` wrote in OUT (and an existing --preview "
                   "file). Without it an existing dataset is refused. Even with it, a folder holding any file that "
                   "synth did not write (per its pamm_synth.json) is never touched. The old dataset is deleted only "
                   "after the new one is complete")  # fmt: skip
    s.add_argument("--workers", type=int, default=1, help="render in this many processes (default 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_data_synth)
    c = dsub.add_parser("check", help="validate a dataset folder and list every problem")
    c.add_argument(
        "--dataset",
        choices=["nyud", "pascal", "generic"],
        required=True,
        help="generic: a folder described by its dataset.yaml",
    )
    c.add_argument("--root", required=True)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_data_check)
    dc = dsub.add_parser(
        "convert", help="rewrite a NYUD / PASCAL folder as a generic dataset (dataset.yaml format)",
        description="Read a NYUD-v2 or PASCAL-Context folder through its loader and write it as a generic dataset "
        "(docs/dataset-format.md): same targets, classes and evaluation constants. The output is written into a "
        "hidden folder beside it and moved into place when complete.",
    )  # fmt: skip
    dc.add_argument("--from", dest="source", choices=["nyud", "pascal"], required=True, help="layout of --root")
    dc.add_argument("--root", required=True, help="the benchmark dataset folder (.../NYUDv2, .../PASCALContext)")
    dc.add_argument("--out", required=True, help="the generic dataset folder to create")
    dc.add_argument("--tasks", type=_name_list, default=None, metavar="T1,T2", help="tasks to keep (default: all)")
    dc.add_argument("--splits", type=_name_list, default=None, metavar="S1,S2", help="default: train,val")
    dc.add_argument("--name", default=None, help="the dataset's name in its manifest (default: the --from layout)")
    dc.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out; only a generic dataset folder holding nothing but the files "
                    "its dataset.yaml accounts for is ever replaced")  # fmt: skip
    dc.add_argument("--quiet", action="store_true", help="no progress bar")
    dc.set_defaults(func=cmd_data_convert)

    t = sub.add_parser("train", help="train a preset or YAML config (torchrun -m pamm train ... for DDP)")
    t.add_argument("--config", required=True, help="preset name (nyud-vitl, pascal-vitl, demo) or YAML file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    t.add_argument("--device", choices=["cpu", "cuda"], default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run or a checkpoint on a full split, write metrics.json")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (uses its best checkpoint)")
    src.add_argument("--checkpoint", help="weights file (.safetensors)")
    e.add_argument("--config", help="config to use instead of the one stored in the checkpoint")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (e.g. data.root=...)")
    e.add_argument("--split", default="val")
    e.add_argument("--out", help="metrics file (default: RUN/metrics.json)")
    e.add_argument("--baselines", action="store_true", help="also score constant predictors fitted on train")
    e.add_argument("--max-images", type=_positive, default=None, metavar="N", help="score only the first N images")
    e.add_argument("--device", choices=["cpu", "cuda"], default=None)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="predict every task for images and videos: maps (.npy, .png) and panels",
        description="Predict every task for images (files, folders, patterns) and videos. Each "
        "image is resized to the model's scale (its area matched to the test size, aspect kept), "
        "predicted whole, and every map is brought back to the image's own size. Writes per image "
        "<stem>_<task>.npy and .png and <stem>_panel.png; per video <stem>_panel.mp4.",
    )
    pr.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image or video files, folders, or patterns like 'photos/**/*.jpg'"
    )
    pr.add_argument(
        "--checkpoint",
        required=True,
        help="a run folder (its best checkpoint), a weights file, a pretrained folder or a Hub model id (org/name)",
    )
    pr.add_argument("--out", required=True, help="output folder (created)")
    pr.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    pr.add_argument("--batch-size", type=_positive, default=8, help="images per forward pass (default 8)")
    pr.add_argument("--tasks", type=_task_list, default=None, help="only these tasks, e.g. semseg,depth")
    pr.add_argument("--no-panel", action="store_true", help="no <stem>_panel.png")
    pr.add_argument("--overwrite", action="store_true", help="replace output files that exist already")
    pr.add_argument(
        "--mode",
        choices=["whole", "slide"],
        default="whole",
        help="whole: one pass per image (default); slide: training-size windows, blended",
    )
    pr.add_argument(
        "--scale",
        type=_scale,
        default=None,
        metavar="auto|FACTOR",
        help="resize factor of the input; auto (default): the resolution rule, 1: the image's own size",
    )
    pr.add_argument(
        "--overlap", type=_fraction, default=None, help="sliding-window overlap, a fraction of the window (default 1/3)"
    )
    pr.add_argument(
        "--resize",
        type=_positive,
        default=None,
        metavar="LONG_SIDE",
        help="downscale image files to this long side on reading (outputs at the downscaled size)",
    )
    pr.add_argument(
        "--max-pixels",
        type=_positive,
        default=None,
        metavar="N",
        help="refuse image files with more pixels (default 40,000,000)",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    cv = sub.add_parser("convert-official", help="convert a checkpoint of the authors' code to a pamm checkpoint "
                        "or a pretrained folder")  # fmt: skip
    cv.add_argument("src", help="the authors' checkpoint (.pth)")
    cv.add_argument("dst", help="a weights file (.safetensors) or a pretrained folder (any other path)")
    cv.add_argument("--preset", choices=["nyud-vitl", "pascal-vitl"], default=None)
    cv.add_argument("--format", choices=["auto", "checkpoint", "pretrained"], default="auto",
                    help="checkpoint: one weights file; pretrained: a folder with config.json, model.safetensors and "
                    "a model card (README.md), ready for the Hub; auto (default): checkpoint when DST ends in "
                    ".safetensors, else pretrained")  # fmt: skip
    cv.add_argument("--prior-seed", type=int, default=0,
                    help="seed of the B/C task priors, which the released checkpoints lack (default 0; see the "
                    "README on why no seed reproduces a released run)")  # fmt: skip
    cv.add_argument("--x-experts", action="store_true", help="keep the x-branch experts the released code discards")
    cv.add_argument("--overwrite", action="store_true", help="replace DST (a pretrained folder only if it is one)")
    cv.set_defaults(func=cmd_convert)

    ex = sub.add_parser(
        "export", help="export a trained model to ONNX, or to a pretrained folder for the Hugging Face Hub",
        description="Export a model: --format onnx writes an ONNX file (input image float32 (N, 3, H, W) RGB in "
        "[0, 1], one output per task), checked in ONNX Runtime; --format pretrained writes a folder with "
        "config.json, model.safetensors and a generated model card (README.md).",
    )  # fmt: skip
    ex.add_argument("--checkpoint", required=True, help="a weights file, a run folder (its best checkpoint), a "
                    "pretrained folder or a Hub model id")  # fmt: skip
    ex.add_argument("--format", default="onnx", help="onnx (default) or pretrained")
    ex.add_argument("--out", required=True, help="the .onnx file, or the pretrained folder, to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output (a folder only if it is a "
                    "pretrained folder)")  # fmt: skip
    ex.add_argument("--size", metavar="HxW", help="ONNX: input size, multiples of the backbone stride (default: the "
                    "model's test size)")  # fmt: skip
    ex.add_argument("--batch-size", type=int, default=1, help="ONNX: fixed batch size (default 1)")
    ex.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size")
    ex.add_argument("--postprocess", action="store_true", help="ONNX: output class ids, metres, unit normals and "
                    "probabilities instead of raw head outputs")  # fmt: skip
    ex.add_argument("--no-check", action="store_true", help="ONNX: skip the ONNX Runtime comparison")
    ex.add_argument("--name", help="pretrained: the model's name in the card")
    ex.add_argument("--license", help="pretrained: licence of the weights in the card (default apache-2.0)")
    ex.add_argument("--hub-id", help="pretrained: the Hub id the folder will have (used in the card's examples)")
    ex.set_defaults(func=cmd_export)

    cf = sub.add_parser("config", help="list presets, or print a resolved config")
    cf.add_argument("name", nargs="?", help="preset or YAML file")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE")
    cf.set_defaults(func=cmd_config)
    return p


def _raise_terminated(signum, frame):
    raise Terminated()


def install_stack_dump() -> bool:
    """``kill -USR1 <pid>`` prints every thread's Python stack to stderr and the command goes on (POSIX): how to see
    where a training that seems stuck is (e.g. each process under torchrun). Returns whether it was installed."""
    if not hasattr(signal, "SIGUSR1"):
        return False
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (ValueError, RuntimeError, io.UnsupportedOperation):  # not the main thread, or stderr has no descriptor
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_stack_dump()
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits with 2
    args.argv = argv
    command = args.command + (f" {args.data_command}" if args.command == "data" else "")
    previous = None
    try:  # SIGTERM becomes an exception, so clean-up code runs (only possible in the main thread)
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        pass
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\npamm {command}: interrupted (SIGINT)", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print(f"\npamm {command}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as e:  # noqa: BLE001 - every error leaves through the exit-status scheme
        code = exit_code(e)
        if code == EXIT_INTERNAL or args.debug or os.environ.get("PAMM_DEBUG"):
            traceback.print_exc()
        if code == EXIT_INTERNAL:
            print(
                f"pamm {command}: internal error (a bug; please report it with the traceback above): "
                f"{type(e).__name__}: {e}",
                file=sys.stderr,
            )
        else:
            print(f"pamm {command}: error: {describe(e)}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
