"""One torchrun rank of test_distributed.test_pooled_batchnorm_is_exact_in_float64.

usage: torchrun --nproc_per_node 2 ddp_float64_exactness.py REPORT_PREFIX  -> REPORT_PREFIX{rank}.json
Builds the demo model in float64 (no pretrained weights, router noise off), runs the whole batch in this process
(the reference), then its own half through a copy with pooled BatchNorms; reports the relative error of its half's
outputs and of the all-reduced gradients (over every parameter, as one vector).
"""

import collections
import copy
import json
import sys

import torch
import torch.distributed as dist

import pamm
from pamm.config import load_config
from pamm.engine.distributed import sync_batchnorm

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = load_config(
    "demo",
    {
        "model.dim": 32,
        "model.router_noise": False,
        "model.backbone.drop_path": 0.0,
        "model.backbone.weights": None,
        "model.backbone.pretrained": False,
    },
)
torch.manual_seed(0)
model = pamm.build_model(cfg, load_backbone_weights=False).double().train()
pooled = sync_batchnorm(copy.deepcopy(model), torch.device("cpu"))
x = torch.randn(2 * world, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
heads = {t: torch.randn_like(y) for t, y in model(x).items()}  # fixed random weights of a linear loss
model.zero_grad()


def loss(outputs, rows):
    return sum((y * heads[t][rows]).sum() for t, y in outputs.items())


full = model(x)
loss(full, slice(None)).backward()
rows = slice(2 * rank, 2 * rank + 2)
mine = pooled(x[rows])
loss(mine, rows).backward()
out_err = max(((mine[t] - full[t][rows].detach()).norm() / full[t][rows].norm()).item() for t in full)
grads, ref = [], []
for p, q in zip(model.parameters(), pooled.parameters()):
    if p.grad is None:
        continue
    g = q.grad.clone()
    dist.all_reduce(g)
    grads.append(g.flatten())
    ref.append(p.grad.flatten())
grads, ref = torch.cat(grads), torch.cat(ref)
converted = collections.Counter(type(m).__name__ for m in pooled.modules() if "BatchNorm" in type(m).__name__)
report = {
    "output_rel_err": out_err,
    "grad_rel_err": ((grads - ref).norm() / ref.norm()).item(),
    "converted": dict(converted),
}
with open(f"{sys.argv[1]}{rank}.json", "w") as f:
    json.dump(report, f)
dist.destroy_process_group()
