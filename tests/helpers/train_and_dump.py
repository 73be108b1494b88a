"""Train a config (as `pamm train`, one process or one torchrun rank) and dump this process's final weights.

usage: python train_and_dump.py RUN_DIR DUMP_PREFIX KEY=VALUE ...  (config overrides on top of the demo preset)
"""

import sys

import torch

from pamm.config import load_config, parse_override
from pamm.engine.distributed import shutdown_distributed
from pamm.engine.trainer import Trainer

torch.set_num_threads(1)
run_dir, prefix, *sets = sys.argv[1:]
cfg = load_config("demo", dict(parse_override(s) for s in sets))
trainer = Trainer(cfg, run_dir, progress=False, log=lambda msg: None)
trainer.fit()
torch.save(trainer.model.state_dict(), f"{prefix}{trainer.dist.rank}.pt")
shutdown_distributed()
