"""One forward and backward of the Triton selective scan per stage, after a warm-up: a target for profilers::

    ncu --clock-control none -k regex:_scan_ -c 4 --section WarpStateStats ... \\
        python benchmarks/scan_profile.py --stages nyud,pascal --skip-warmup-launches

The warm-up compiles the kernels; under ncu, ``--launch-skip`` (or -s) skips its launches: 2 per stage.
"""

from __future__ import annotations

import argparse
import json

import torch

from pamm.ops import scan_orders
from pamm.ops.selective_scan_triton import selective_scan_triton
from scan_common import STAGES, stage_inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="nyud,pascal")
    parser.add_argument("--config", default="{}", help="launch config overrides (JSON)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    config = json.loads(args.config)
    runs = []
    for name in args.stages.split(","):
        stage = STAGES[name]
        L = stage["grid"][0] * stage["grid"][1]
        inputs = stage_inputs(
            stage["batch"],
            stage["d_inner"],
            stage["tasks"],
            stage["state"],
            L,
            "cuda",
            dtype=getattr(torch, args.dtype),
        )
        orders = scan_orders(*stage["grid"], device="cuda")
        runs.append((inputs, orders))
        selective_scan_triton(**inputs, delta_softplus=True, orders=orders, config=config).sum().backward()
    torch.cuda.synchronize()
    for inputs, orders in runs:  # the profiled launches: forward, backward per stage
        selective_scan_triton(**inputs, delta_softplus=True, orders=orders, config=config).sum().backward()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
