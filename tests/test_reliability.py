"""Guarantees: atomic and verified checkpoints, resume falls back past damaged ones, non-finite steps are skipped
then stop training, checkpoints of another model are refused tensor by tensor, pickled code is never run."""

import io
import pickle

import pytest
import torch

import pamm
from pamm.engine.checkpoint import (
    CheckpointError,
    load_model,
    load_state,
    load_weights,
    save_state,
    save_weights,
)
from pamm.engine.run import best_checkpoint, find_resume_checkpoint
from pamm.engine.trainer import Trainer, TrainingStopped
from pamm.errors import InputError

from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_model():
    return pamm.build_model(tiny_config())


def test_weights_round_trip_and_damage_is_detected(tiny_model, tmp_path):
    cfg = tiny_config()
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny_model.state_dict(), cfg, {"step": 5})
    state, stored_cfg, extra = load_weights(path)
    assert stored_cfg == cfg and extra == {"step": 5}
    assert all(torch.equal(state[k], v) for k, v in tiny_model.state_dict().items())
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind

    raw = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    raw[-100] ^= 0xFF  # inside the last tensor's bytes
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted: content digest does not match"):
        load_weights(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        load_weights(truncated)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def test_non_finite_weights_are_never_written(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state["heads.depth.pred.bias"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError, match="non-finite values in heads.depth.pred.bias"):
        save_weights(tmp_path / "nan.safetensors", state, tiny_config())
    assert not list(tmp_path.iterdir())


def test_training_state_round_trip_and_pickled_code_is_refused(tmp_path):
    path = tmp_path / "s.state.pt"
    save_state(path, {"step": 3, "rng": [{"torch": torch.get_rng_state()}], "name": "x"})
    assert load_state(path)["step"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = io.BytesIO()
    torch.save({"x": Evil()}, payload)
    forged = tmp_path / "forged.state.pt"
    save_state(forged, {"ok": 1})  # a valid header/digest around a malicious payload
    raw = forged.read_bytes()
    n = int.from_bytes(raw[:4], "little")
    import hashlib
    import json

    header = json.loads(raw[4 : 4 + n])
    body = payload.getvalue()
    header.update(size=len(body), sha256=hashlib.sha256(body).hexdigest())
    hb = json.dumps(header).encode()
    forged.write_bytes(len(hb).to_bytes(4, "little") + hb + body)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_state(forged)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="truncated or not a pamm state file|damaged"):
        load_state(plain)


def test_checkpoint_of_another_model_names_the_difference_and_counts_the_mismatches(tiny_model, tmp_path):
    path = tmp_path / "nyud.safetensors"
    save_weights(path, tiny_model.state_dict(), tiny_config())
    other = tiny_config(model__d_state=4)
    with pytest.raises(CheckpointError) as err:
        load_model(path, cfg=other)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"checkpoint {path} does not fit the model of config nyud-vitl (checkpoint vs config: model.d_state 8 vs 4); "
    )
    assert "stages.0.A_log: checkpoint (4, 128, 8) vs model (4, 128, 4)" in msg
    shapes = int(msg.split("; ")[1].split(" tensor(s) of another shape")[0])
    assert shapes >= 4 * 3  # A_log, priors and B/C projections of every stage
    assert "missing" not in msg and "unexpected" not in msg


def _fake_run(tmp_path, steps):
    cfg = tiny_config()
    model = pamm.build_model(cfg)
    ckpt = tmp_path / "run" / "checkpoints"
    for s in steps:
        save_weights(ckpt / f"step-{s:07d}.safetensors", model.state_dict(), cfg, {"step": s})
        save_state(ckpt / f"step-{s:07d}.state.pt", {"step": s})
    return tmp_path / "run", ckpt


def test_resume_falls_back_to_the_last_valid_checkpoint(tmp_path):
    run, ckpt = _fake_run(tmp_path, [2, 4])
    newest = ckpt / "step-0000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn write of the newest weights
    messages = []
    weights, state = find_resume_checkpoint(run, log=messages.append)
    assert weights.name == "step-0000002.safetensors" and state.name == "step-0000002.state.pt"
    assert "skipping damaged checkpoint of step 4" in messages[0]
    (ckpt / "step-0000002.state.pt").write_bytes(b"\0" * 10)  # and the older state damaged too
    assert find_resume_checkpoint(run, log=messages.append) is None


def test_best_checkpoint_of_a_run_falls_back_to_the_newest_valid_step(tmp_path):
    run, ckpt = _fake_run(tmp_path, [2, 4])
    messages = []
    assert best_checkpoint(run, log=messages.append) == ckpt / "step-0000004.safetensors"
    assert "no valid best.safetensors; using step-0000004.safetensors" in messages[-1]
    (ckpt / "best.safetensors").write_bytes((ckpt / "step-0000002.safetensors").read_bytes())
    assert best_checkpoint(run, log=messages.append) == ckpt / "best.safetensors"
    (ckpt / "best.safetensors").write_bytes(b"\0" * 100)
    (ckpt / "step-0000004.safetensors").write_bytes(b"\0" * 100)
    assert best_checkpoint(run, log=messages.append) == ckpt / "step-0000002.safetensors"
    (ckpt / "step-0000002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no valid checkpoint in"):
        best_checkpoint(run, log=messages.append)
    with pytest.raises(InputError, match="does not exist; expected a folder written by `pamm train`"):
        best_checkpoint(tmp_path / "nowhere")


def test_unwritable_run_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="file is a file; expected a folder there"):
        Trainer(tiny_config(), blocker / "run", device="cpu", progress=False, log=lambda m: None)


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    run, _ = _fake_run(tmp_path, [2])
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(InputError, match="already holds checkpoints; pass --resume"):
        Trainer(tiny_config(), run, device="cpu", progress=False, log=lambda m: None)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before and not (run / ".pamm.lock").exists()


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, monkeypatch):
    from pamm.data.synth import synthesize

    synthesize(tmp_path / "data", layout="nyud", n_train=4, n_val=1, size=(64, 96), seed=0, progress=False)
    cfg = tiny_config(
        data__root=str(tmp_path / "data" / "NYUDv2"),
        data__workers=0,
        train__batch_size=2,
        train__iterations=10,
        train__warmup_iters=0,
        train__max_nonfinite_steps=2,
        train__checkpoint_every=0,
        train__eval_every=0,
        train__lr=1e-3,
        model__dim=32,
    )
    logs = []
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=logs.append)
    batches = trainer.batches()
    real_loss = trainer.loss_fn.forward

    def poisoned(outputs, targets, routing=None):
        total, parts = real_loss(outputs, targets, routing)
        return total * float("nan"), parts

    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    monkeypatch.setattr(trainer.loss_fn, "forward", poisoned)
    assert trainer.train_step(next(batches)) is None
    after = trainer.model.state_dict()
    assert all(
        torch.equal(before[k], after[k])
        for k in before
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert trainer.nonfinite == 1 and "non-finite loss or gradient, update skipped (1/2)" in logs[-1]
    monkeypatch.setattr(trainer.loss_fn, "forward", real_loss)
    assert trainer.train_step(next(batches)) is not None  # healthy steps go on
    monkeypatch.setattr(trainer.loss_fn, "forward", poisoned)
    trainer.train_step(next(batches))
    with pytest.raises(TrainingStopped, match="3 steps had a non-finite loss or gradient"):
        trainer.train_step(next(batches))
    trainer.close()


def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    """Router noise, drop-path, augmentation and two DataLoader workers included (deterministic mode, CPU)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from pamm.data.synth import synthesize

    synthesize(tmp_path / "data", layout="nyud", n_train=8, n_val=1, size=(64, 96), seed=5, progress=False)
    sets = [
        f"data.root={tmp_path / 'data' / 'NYUDv2'}",
        "data.train_size=[64,96]",
        "data.test_size=[64,96]",
        "data.workers=2",
        "model.dim=32",
        "model.backbone.drop_path=0.1",
        "model.router_noise=true",
        "train.deterministic=true",
        "train.iterations=12",
        "train.batch_size=2",
        "train.warmup_iters=2",
        "train.checkpoint_every=2",
        "train.eval_every=0",
        "eval.edge=false",
    ]
    args = [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def train(out, *extra, wait=True):
        cmd = [sys.executable, "-m", "pamm", "train", "--config", "demo", "--out", str(out), "--quiet", *args, *extra]
        if wait:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
            return done
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    train(tmp_path / "straight")
    victim = train(tmp_path / "killed", wait=False)
    kill_after = random.choice([2, 4, 6, 8])  # kill somewhere after this checkpoint appears (maybe mid-write)
    marker = tmp_path / "killed" / "checkpoints" / f"step-{kill_after:07d}.state.pt"
    deadline = time.time() + 600
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read().decode()[-2000:]
    train(tmp_path / "killed", "--resume")
    assert "resumed from step-" in (tmp_path / "killed" / "train.log").read_text()
    assert "step 12: val semseg mIoU " in (tmp_path / "straight" / "train.log").read_text()  # evaluations logged
    a, _, extra_a = load_weights(tmp_path / "straight" / "checkpoints" / "step-0000012.safetensors")
    b, _, extra_b = load_weights(tmp_path / "killed" / "checkpoints" / "step-0000012.safetensors")
    assert extra_a["step"] == extra_b["step"] == 12 and a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"resumed run differs in {different[:5]} (killed after step {kill_after})"


@pytest.mark.parametrize("flush", [True, False])
def test_cpu_training_flushes_denormals_when_configured(tmp_path, flush):
    """train.flush_denormal (default on): Adam's tiny second moments must not fall into slow denormal arithmetic."""
    from pamm.data.synth import synthesize

    synthesize(tmp_path / "data", layout="nyud", n_train=2, n_val=1, size=(64, 96), seed=0, progress=False)
    cfg = tiny_config(
        train__flush_denormal=flush, data__root=str(tmp_path / "data" / "NYUDv2"), train__batch_size=2, model__dim=32
    )
    torch.set_flush_denormal(not flush)
    try:
        with Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=lambda msg: None):
            tiny = torch.tensor([1e-40]) * 2.0  # a denormal float32 result
            assert bool(tiny[0] == 0) == flush
    finally:
        torch.set_flush_denormal(False)
