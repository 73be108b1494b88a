"""Print the Triton scan variant ("v2" or "v3") with the lower NYUD-stage forward+backward time in a
``benchmarks/scan.py --suite`` record, among the variants that ran and agreed with v2 (max rel. diff <= 1e-4).

  PAMM_SCAN_KERNEL=$(python benchmarks/pick_kernel.py OUT/scan_suite.json) python benchmarks/train_step.py ...
"""

import json
import sys

record = json.load(open(sys.argv[1]))
rows = record.get("kernels", {}).get("nyud", {}).get("rows", [])
ok = [r for r in rows if "error" not in r and r.get("max_rel_diff", 1.0) <= 1e-4 and r["variant"] in ("v2", "v3")]
print(min(ok, key=lambda r: r["fwd_bwd_ms"])["kernel"] if ok else "v2")
