"""Issue 15's end-of-run case: a short `torchrun ... -m pamm train` of a paper preset on a small embedded set, with
an evaluation and a checkpoint at the last step, timed phase by phase.

Renders the embedded set (PASCAL layout by default) unless it exists, runs::

    torchrun --nproc_per_node N -m pamm train --config PRESET --out RUN --set train.iterations=20 \\
        --set train.eval_every=20 --set train.checkpoint_every=20 --set model.backbone.pretrained=false ...

under a timeout, and reports the exit status, the wall time and the phase timings the trainer logs in
``train.log`` (build, steps, waiting for data, evaluations, final evaluation, checkpoint writes, metrics write,
teardown), plus the time between the trainer's last line and the process's exit::

    python benchmarks/end_of_run.py --nproc 1 --preset pascal-vitl --work /tmp/eor --out eor.json

The run folder (the checkpoints of a 999 M-parameter model take about 16 GB) is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _follow(log: Path, seen: list, tic: float) -> None:
    """Append the lines ``log`` gained since the last call, stamped with the seconds since ``tic``."""
    if log.exists():
        lines = log.read_text().splitlines()
        now = time.time() - tic
        seen.extend((now, line) for line in lines[len(seen) :])


def _pamm_processes(root: int) -> list[int]:
    """The ``pamm`` processes among ``root`` and its descendants (torchrun's workers, which it starts in sessions of
    their own, not its agent); Linux ``/proc``."""
    parent, argv = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                argv[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        kids = {pid for pid, pp in parent.items() if pp in tree} - tree
        tree |= kids
        grew = bool(kids)
    return sorted(pid for pid in tree if b"pamm" in argv.get(pid, []) and b"torch.distributed.run" not in argv[pid])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="pascal-vitl")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for torchrun")
    p.add_argument(
        "--launcher",
        choices=("torchrun", "plain"),
        default="torchrun",
        help="torchrun, or a plain `python -m pamm train` (one process) for comparison",
    )
    p.add_argument("--images", type=int, default=24, help="training images of the embedded set")
    p.add_argument("--val", type=int, default=6, help="validation images")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--work", default="/tmp/pamm-end-of-run", help="where the data and the run folder go")
    p.add_argument("--timeout", type=int, default=540, help="seconds before the run is stopped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--keep", action="store_true", help="keep the run folder")
    p.add_argument("--out", help="write the record here as JSON (and train.log beside it)")
    args = p.parse_args()

    from pamm.config import load_config

    cfg = load_config(args.preset, {"model.backbone.pretrained": False})
    layout = cfg.data.dataset
    work = Path(args.work)
    data = work / f"data-{layout}-{args.images}"
    root = data / ("PASCALContext" if layout == "pascal" else "NYUDv2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if not root.exists():
        h, w = cfg.data.train_size
        tic = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pamm",
                "data",
                "synth",
                "--out",
                str(data),
                "--layout",
                layout,
                "--train",
                str(args.images),
                "--val",
                str(args.val),
                "--size",
                f"{h}x{w}",
                "--quiet",
            ],
            env=env,
            check=True,
        )
        print(f"rendered {args.images} + {args.val} images in {time.perf_counter() - tic:.1f} s", flush=True)
    run = work / f"run-{args.preset}-{args.launcher}{args.nproc}"
    shutil.rmtree(run, ignore_errors=True)
    sets = [
        f"data.root={root}",
        f"train.iterations={args.iterations}",
        f"train.eval_every={args.iterations}",
        f"train.checkpoint_every={args.iterations}",
        "model.backbone.pretrained=false",
        *args.set,
    ]
    if args.launcher == "torchrun":
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "pamm",
        ]
    else:
        launch = [sys.executable, "-m", "pamm"]
    cmd = [
        *launch,
        "train",
        "--config",
        args.preset,
        "--out",
        str(run),
        "--quiet",
        *[x for s in sets for x in ("--set", s)],
    ]
    print(" ".join(cmd), flush=True)
    logs = Path(args.out).parent if args.out else work
    logs.mkdir(parents=True, exist_ok=True)
    stem = f"{args.preset}-{args.launcher}{args.nproc}"
    out_f, err_f = open(logs / f"{stem}.stdout", "w"), open(logs / f"{stem}.stderr", "w")
    tic = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=out_f, stderr=err_f)
    seen: list[tuple[float, str]] = []  # (seconds since launch, line) as train.log grows: phases even if it hangs
    rc: int | str | None = None
    while rc is None:
        try:
            rc = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if time.time() - tic > args.timeout:
                rc = "timeout"
        _follow(run / "train.log", seen, tic)
    if rc == "timeout":  # where is it? every pamm process prints its threads' stacks on SIGUSR1 (pamm.cli)
        for pid in _pamm_processes(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(5)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out_f.close()
    err_f.close()
    end = time.time()
    log = run / "train.log"
    text = log.read_text() if log.exists() else ""
    timings = [line for line in text.splitlines() if line.startswith("timings: ")]
    record = {
        "preset": args.preset,
        "nproc": args.nproc,
        "images": args.images,
        "val": args.val,
        "iterations": args.iterations,
        "exit_status": rc,
        "wall_s": round(end - tic, 1),
        "log_last_modified_to_exit_s": round(end - log.stat().st_mtime, 1) if log.exists() else None,
        "timings": timings,
        "train_log_seen_at_s": [[round(t, 1), line] for t, line in seen],
        "stderr_tail": (logs / f"{stem}.stderr").read_text()[-6000:],
        "launcher": args.launcher,
        "checkpoint_lines": re.findall(r"checkpoint .* written in [\d.]+ s", text),
        "command": cmd,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        if log.exists():
            shutil.copy(log, Path(args.out).with_suffix(".train.log"))
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
