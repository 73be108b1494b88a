"""Train a config (as `pamm train`, one process or one torchrun rank) and dump this process's weights before and
after training.

usage: python train_and_dump.py [--resume] RUN_DIR DUMP_PREFIX KEY=VALUE ...  (overrides on top of the demo preset)
writes DUMP_PREFIX{rank}.pt (final state dict) and DUMP_PREFIX{rank}-init.pt (the state training started from)
"""

import sys

import torch

from pamm.config import load_config, parse_override
from pamm.engine.trainer import Trainer

torch.set_num_threads(1)
args = sys.argv[1:]
resume = args[0] == "--resume"
run_dir, prefix, *sets = args[resume:]
cfg = load_config("demo", dict(parse_override(s) for s in sets))
# builds (and with --resume restores): the weights training starts from
trainer = Trainer(cfg, run_dir, resume=resume, progress=False, log=lambda msg: None)
torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{prefix}{trainer.dist.rank}-init.pt")
rank = trainer.dist.rank
trainer.fit()  # ends with the process group shut down
torch.save(trainer.model.state_dict(), f"{prefix}{rank}.pt")
