"""Shared test fixtures. Tests run offline on CPU: hub downloads fail fast instead of retrying."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import pamm  # noqa: E402

TINY = {
    "model.backbone.name": "vit_tiny_patch16_224",
    "model.backbone.pretrained": False,
    "model.backbone.taps": [2, 5, 8, 11],
    "model.backbone.drop_path": 0.0,
    "model.dim": 64,
    "model.d_state": 8,
    "model.expert_kernel": 3,
    "runtime.scan_backend": "auto",
    "data.train_size": [64, 96],
    "data.test_size": [64, 96],
}


def tiny_config(preset: str = "nyud-vitl", **overrides):
    """A small CPU version of a paper preset (vit_tiny, d=64, N=8) with ``overrides`` ({"a.b": v} style, given
    with "__" for ".")."""
    ov = dict(TINY)
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    if preset == "pascal-vitl":
        ov["data.train_size"] = ov["data.test_size"] = [64, 64]
    return pamm.load_config(preset, ov)


# One intra-op thread per test process: the suite runs as parallel pytest-xdist workers (`pytest -n 2`), and
# small CPU kernels gain nothing from more threads.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def wait_for_log_line(process, log, text: str, timeout: float = 300) -> None:
    """Wait until the file ``log`` holds ``text``, ``process`` (a Popen) has ended, or ``timeout`` seconds passed."""
    import time

    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and text not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
