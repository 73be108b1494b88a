"""DDP on CPU (gloo): two processes with the global batch split between them end with identical weights, equal to
one process training on the whole global batch (exact pooling of losses and BatchNorm over the global batch)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).parent / "helpers" / "train_and_dump.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_nyud(tmp_path_factory):
    from pamm.data.synth import synthesize

    root = tmp_path_factory.mktemp("ddp-data")
    synthesize(root, layout="nyud", n_train=8, n_val=2, size=(64, 96), seed=3, progress=False)
    return root / "NYUDv2"


def _overrides(root, batch):
    return [f"data.root={root}", "data.train_size=[64,96]", "data.test_size=[64,96]", "data.workers=0",
            "model.dim=32", "model.router_noise=false", "model.backbone.drop_path=0.0", "model.scan.backend=auto",
            "train.optimizer=sgd", "train.lr=0.01", "train.warmup_iters=0", "train.iterations=3",
            f"train.batch_size={batch}", "train.eval_every=0", "train.checkpoint_every=0", "eval.batch_size=1",
            "eval.edge=false"]


def test_two_process_ddp_matches_single_process(tiny_nyud, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = subprocess.run([sys.executable, str(HELPER), str(tmp_path / "single"), str(tmp_path / "single-rank"),
                             *_overrides(tiny_nyud, 4)], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HELPER),
                          str(tmp_path / "ddp"), str(tmp_path / "ddp-rank"), *_overrides(tiny_nyud, 2)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ref = torch.load(tmp_path / "single-rank0.pt")
    rank0 = torch.load(tmp_path / "ddp-rank0.pt")
    rank1 = torch.load(tmp_path / "ddp-rank1.pt")
    assert ref.keys() == rank0.keys() == rank1.keys()
    for k in ref:
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ at {k}"
        if ref[k].is_floating_point():
            torch.testing.assert_close(rank0[k], ref[k], rtol=2e-4, atol=2e-6, msg=f"DDP != single process at {k}")
        else:
            assert torch.equal(rank0[k], ref[k]), k
    # the run really trained (3 steps of BatchNorm statistics over the global batch) and the checkpoint written by
    # rank 0 alone holds these weights
    assert ref["heads.depth.proj.1.num_batches_tracked"] == 3
    assert ref["heads.depth.proj.1.running_mean"].abs().sum() > 0
    from pamm.engine.checkpoint import load_weights

    stored, _, extra = load_weights(tmp_path / "ddp" / "checkpoints" / "step-0000003.safetensors")
    assert extra["step"] == 3 and torch.equal(stored["heads.depth.pred.weight"], rank0["heads.depth.pred.weight"])
    assert (tmp_path / "ddp" / "metrics.json").exists()
