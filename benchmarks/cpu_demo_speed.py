"""Training speed of the CPU demo with and without flushing denormals (``train.flush_denormal``).

Runs ``pamm train --config demo`` for --steps steps once per setting, side by side in one invocation (same data,
same machine state), and reports the median images/s of the logged intervals (TensorBoard ``train/images_per_s``,
the first interval, which includes start-up, left out)::

    python benchmarks/cpu_demo_speed.py --data data/demo/NYUDv2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def images_per_s(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.glob("events*"))))
    events.Reload()
    return [e.value for e in events.Scalars("train/images_per_s")][1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo/NYUDv2", help="an NYUD-layout folder (make demo renders one)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", help="write the numbers here as JSON")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flush in ("true", "false"):
            run = Path(tmp) / f"flush-{flush}"
            cmd = [
                sys.executable,
                "-m",
                "pamm",
                "train",
                "--config",
                "demo",
                "--out",
                str(run),
                "--quiet",
                "--set",
                f"data.root={args.data}",
                "--set",
                f"train.iterations={args.steps}",
                "--set",
                "train.eval_every=0",
                "--set",
                "train.checkpoint_every=0",
                "--set",
                "train.log_every=20",
                "--set",
                f"train.warmup_iters={min(30, args.steps - 1)}",
                "--set",
                f"train.flush_denormal={flush}",
            ]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            rates = images_per_s(run)
            result[f"flush_denormal={flush}"] = {"median_images_per_s": statistics.median(rates), "intervals": rates}
            print(
                f"flush_denormal={flush}: median {statistics.median(rates):.2f} images/s over {len(rates)} "
                f"intervals of 20 steps"
            )
    on, off = (result[f"flush_denormal={f}"]["median_images_per_s"] for f in ("true", "false"))
    print(f"ratio on/off: {on / off:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": args.steps, **result}, indent=1))


if __name__ == "__main__":
    main()
