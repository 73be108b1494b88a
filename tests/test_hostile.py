"""The hostile-use matrix (issue 12): each test feeds what a careless or unlucky user would, through the `pamm`
command (in this process where possible, in a subprocess for signals and locks held by another process), and checks
the exit status, that the message is one line naming the file or key, and that nothing was lost or half-written.

Runs use the demo preset on a tiny embedded dataset (8 + 2 images of 64x96) for a few steps.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pamm import errors
from pamm.cli import main

from conftest import wait_for_log_line

# ----------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pamm.data.synth import synthesize

    root = tmp_path_factory.mktemp("hostile-data")
    synthesize(root, layout="nyud", n_train=8, n_val=2, size=(64, 96), seed=0, progress=False)
    return root / "NYUDv2"


@pytest.fixture
def data(dataset, tmp_path):
    """A private copy of the dataset, free to damage."""
    copy = tmp_path / "NYUDv2"
    shutil.copytree(dataset, copy)
    return copy


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Validation verdicts cached in a temporary folder, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAMM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def sets(root, **overrides) -> list[str]:
    values = {
        "data.root": str(root),
        "data.train_size": "[64,96]",
        "data.test_size": "[64,96]",
        "data.workers": 0,
        "train.iterations": 2,
        "train.warmup_iters": 0,
        "train.batch_size": 2,
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.log_every": 1,
        "eval.edge": "false",
        "eval.batch_size": 2,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


def train_args(out, root, *extra, **overrides) -> list[str]:
    return ["train", "--config", "demo", "--out", str(out), "--quiet", *sets(root, **overrides), *extra]


def run(capsys, argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(err: str, command: str = "train") -> str:
    """The error line of ``err``; asserts it is the only line saying ``error``."""
    lines = [line for line in err.splitlines() if line.strip()]
    errs = [line for line in lines if "error" in line]
    assert len(errs) == 1, err
    assert errs[0].startswith(f"pamm {command}: error: "), err
    assert "Traceback" not in err, err
    return errs[0]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder`` with its mode, size, modification time and content digest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(folder))] = (stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A run of 4 steps with checkpoints at steps 2 and 4 (read-only for the tests: copy before changing)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    rc = main([str(a) for a in train_args(out, dataset, train__iterations=4, train__checkpoint_every=2)])
    assert rc == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ----------------------------------------------------------------------------------------------------------
# 12.2 the run-folder lock


HOLDER = """
import sys, time
from pathlib import Path
from pamm.engine.run import RunLock
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
RunLock(sys.argv[1], command="holder").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_live_run_locks_its_folder_and_a_dead_one_does_not(run_copy, dataset, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_copy)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_copy)
        rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=6))
        assert rc == errors.EXIT_RESOURCE
        line = one_line_error(err)
        assert (
            f"run folder {run_copy} is in use by another training (pid {holder.pid} on host "
            f"{socket.gethostname()}" in line
        )
        assert snapshot(run_copy) == before  # nothing touched
        fresh = run_copy.parent / "second"  # a second `train --out X` while X is in use: refused the same way
        holder2 = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(fresh)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
        )
        try:
            assert holder2.stdout.readline().strip() == "held"
            rc, _, err = run(capsys, train_args(fresh, dataset))
            assert rc == 3 and "is in use by another training" in one_line_error(err)
            assert sorted(p.name for p in fresh.iterdir()) == [".pamm.lock"]
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()  # a crash: the lock file stays behind, its lock dies with the process
        holder.wait()
    assert (run_copy / ".pamm.lock").exists()
    rc, _, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=5))
    assert rc == 0, err
    assert "resumed from step-0000004.safetensors at step 4" in (run_copy / "train.log").read_text()
    assert not (run_copy / ".pamm.lock").exists()  # released and removed at the end


FORKING_HOLDER = """
import os, sys, time
from pathlib import Path
from pamm.engine.run import RunLock
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
RunLock(sys.argv[1], command="holder").acquire()
if os.fork() == 0:  # like a DataLoader worker: inherits the locked descriptor, outlives its parent a while
    time.sleep(60)
    os._exit(0)
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_runs_forked_children_do_not_keep_its_folder_locked(tmp_path):
    """SIGKILL leaves forked children (DataLoader workers) alive for a few seconds with the lock's descriptor; the
    flock is still held, but by orphans of a dead training: `--resume` right after the kill must not be refused."""
    from pamm.engine.run import RunLock, RunLocked

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} "):  # a live holder refuses
            RunLock(run_dir).acquire()
        holder.kill()
        holder.wait()
        lock = RunLock(run_dir)
        lock.acquire()  # the orphan still holds the old file's flock
        assert json.loads((run_dir / ".pamm.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} "):
            RunLock(run_dir).acquire()  # and the new lock is a real one
        lock.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)


def test_lock_without_flock_detects_stale_locks_by_pid(tmp_path, monkeypatch):
    import fcntl

    from pamm.engine.run import RunLock, RunLocked

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ".pamm.lock"
    for pid, host, refused in [
        (dead.pid, socket.gethostname(), False),
        (os.getppid(), socket.gethostname(), True),
        (dead.pid, "another-host", True),
    ]:
        lock_file.write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))
        lock = RunLock(tmp_path)
        if refused:
            with pytest.raises(RunLocked, match=f"pid {pid} on host {host}"):
                lock.acquire()
            assert json.loads(lock_file.read_text())["pid"] == pid  # the holder's file is left alone
        else:
            lock.acquire()
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
            with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
                RunLock(tmp_path).acquire()
            lock.release()
            assert not lock_file.exists()


# ----------------------------------------------------------------------------------------------------------
# 12.3 resume with fewer iterations than done; a finished run


def test_resume_below_the_runs_step_is_refused_without_touching_anything(run_copy, dataset, capsys):
    before = snapshot(run_copy)
    rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=3))
    assert rc == errors.EXIT_INPUT
    assert "is at step 4, beyond train.iterations=3; nothing was changed" in one_line_error(err)
    assert snapshot(run_copy) == before
    rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=4))  # already finished
    assert rc == 0 and "already finished at step 4" in out, err
    assert snapshot(run_copy) == before
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["depth"]["rmse"] > 0


def test_resume_removes_temporaries_of_writes_a_killed_run_left(run_copy, dataset, capsys):
    leftovers = [
        run_copy / "checkpoints" / ".step-0000006.state.pt.k2j4h.tmp",
        run_copy / "checkpoints" / ".best.safetensors.a8d9.tmp",
        run_copy / ".metrics.json.x1.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    mine = run_copy / "checkpoints" / ".my-notes.tmp"  # not a name pamm writes: left alone
    mine.write_text("keep")
    rc, _, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=4))
    assert rc == 0 and "removed 3 temporary file(s) left by an interrupted write" in err
    assert not any(p.exists() for p in leftovers) and mine.read_text() == "keep"


def test_resume_of_a_run_killed_before_its_metrics_write_writes_them(run_copy, dataset, capsys):
    old = json.loads((run_copy / "metrics.json").read_text())
    (run_copy / "metrics.json").unlink()
    rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=4))
    assert rc == 0, err
    new = json.loads((run_copy / "metrics.json").read_text())
    assert new["step"] == 4 and new["depth"] == old["depth"] and new["semseg"] == old["semseg"]


def test_resume_extends_a_run(run_copy, dataset, capsys):
    rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=6))
    assert rc == 0, err
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["step"] == 6
    from pamm.engine.run import checkpoint_steps

    assert checkpoint_steps(run_copy) == [6, 4]
    assert "iterations: 6" in (run_copy / "config.yaml").read_text()


# ----------------------------------------------------------------------------------------------------------
# 12.4 damaged data found before the first step; data.on_error: skip; workers


def _truncate_image(root: Path, image_id: str) -> Path:
    path = root / "images" / f"{image_id}.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _first_ids(root: Path, split: str = "train", n: int = 1) -> list[str]:
    return (root / "gt_sets" / f"{split}.txt").read_text().split()[:n]


def _damage(root: Path, kind: str) -> Path:
    image_id = _first_ids(root)[0]
    if kind == "truncated image":
        return _truncate_image(root, image_id)
    if kind == "depth of the wrong shape":
        path = root / "depth" / f"{image_id}.npy"
        np.save(path, np.ones((32, 48), np.float32))
        return path
    if kind == "label out of range":
        path = root / "segmentation" / f"{image_id}.png"
        labels = np.asarray(Image.open(path)).copy()
        labels[0, 0] = 200
        Image.fromarray(labels).save(path)
        return path
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["truncated image", "depth of the wrong shape", "label out of range"])
def test_damaged_data_is_refused_before_the_first_step(data, tmp_path, capsys, kind):
    bad = _damage(data, kind)
    out = tmp_path / "run"
    rc, _, err = run(capsys, train_args(out, data))
    assert rc == errors.EXIT_INPUT
    line = one_line_error(err)
    assert "1 of 8 train samples are damaged, first: " in line and str(bad) in line
    assert "data.on_error=skip" in line
    assert not out.exists()  # nothing half-made


def test_on_error_skip_leaves_bad_samples_out_and_reports_them(data, tmp_path, capsys):
    bad = _damage(data, "truncated image")
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, train_args(out, data, data__on_error="skip"))
    assert rc == 0, err
    image_id = bad.stem
    assert "skipping 1 damaged train sample(s)" in err and str(bad) in err
    assert f"1 damaged sample(s) were skipped (data.on_error=skip): train: {image_id}" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["skipped_samples"]["train"]) == [image_id]
    assert str(bad) in metrics["skipped_samples"]["train"][image_id]
    assert "training demo: 7 images" in (out / "train.log").read_text()


def test_validation_is_cached_on_file_size_and_mtime_outside_the_dataset(data, tmp_path):
    from pamm.data import build_dataset, validate_dataset

    before = snapshot(data)
    dataset = build_dataset("nyud", data, "train")
    first = validate_dataset(dataset, cache_dir=tmp_path / "c")
    assert (first.samples, first.cached, first.bad) == (8, 0, {})
    again = validate_dataset(build_dataset("nyud", data, "train"), cache_dir=tmp_path / "c")
    assert (again.cached, again.bad) == (8, {})
    bad = _damage(data, "label out of range")  # rewritten: new size / mtime, checked again
    third = validate_dataset(build_dataset("nyud", data, "train"), cache_dir=tmp_path / "c")
    assert third.cached == 7 and list(third.bad) == [bad.stem]
    assert "label values 200 out of range" in third.bad[bad.stem]
    assert set(snapshot(data)) == set(before)  # the cache lives elsewhere: nothing added to the dataset
    assert [p.name for p in (tmp_path / "c").iterdir()][0].startswith("validated-nyud-")


def test_a_sample_failing_in_a_worker_is_one_line_not_a_worker_traceback(data, tmp_path):
    from pamm.config import load_config, parse_override
    from pamm.data import DatasetError
    from pamm.engine.trainer import Trainer

    overrides = dict(parse_override(s) for s in sets(data, data__workers=2)[1::2])
    trainer = Trainer(
        load_config("demo", overrides), tmp_path / "run", device="cpu", progress=False, log=lambda m: None
    )
    try:
        for image_id in (data / "gt_sets" / "train.txt").read_text().split():  # damaged after validation
            _truncate_image(data, image_id)
        with pytest.raises(DatasetError) as info:
            next(trainer.batches())
        message = str(info.value)
        assert "\n" not in message and "Traceback" not in message and "worker" not in message
        assert "corrupt or truncated image" in message and str(data / "images") in message
    finally:
        trainer.close()


def test_an_evaluation_sample_failing_in_a_worker_is_one_line(finished_run, data):
    from pamm.config import override_config
    from pamm.data import DatasetError
    from pamm.engine.checkpoint import load_model
    from pamm.engine.evaluator import eval_transform, evaluate
    from pamm.engine.loading import prepare_split

    model, cfg = load_model(finished_run / "checkpoints" / "best.safetensors")
    cfg = override_config(cfg, {"data.root": str(data), "data.workers": 2, "eval.batch_size": 1})
    val = prepare_split(cfg, "val", eval_transform(cfg))
    victim = _truncate_image(data, _first_ids(data, "val")[0])  # after the validation
    with pytest.raises(DatasetError) as info:
        evaluate(model, cfg, dataset=val)
    assert "\n" not in str(info.value) and str(victim) in str(info.value) and "Traceback" not in str(info.value)


def test_on_error_skip_replaces_a_sample_that_fails_at_load_time(data, tmp_path):
    from pamm.config import load_config, parse_override
    from pamm.engine.trainer import Trainer

    overrides = dict(parse_override(s) for s in sets(data, data__workers=2, data__on_error="skip")[1::2])
    trainer = Trainer(
        load_config("demo", overrides), tmp_path / "run", device="cpu", progress=False, log=lambda m: None
    )
    try:
        victim = _first_ids(data)[0]
        _truncate_image(data, victim)
        replaced = {}
        batches = trainer.batches()
        for _ in range(4):  # one epoch: every sample once
            batch = next(batches)
            assert batch["image"].shape[0] == 2
            for meta in batch["meta"]:
                replaced.update(meta.get("replaced", ()))
        assert list(replaced) == [victim]
        batches.close()
    finally:
        trainer.close()


# ----------------------------------------------------------------------------------------------------------
# 12.5 disk full


def _enospc_for(monkeypatch, predicate):
    """Make atomic writes of files matching ``predicate`` hit a full disk after writing some bytes."""
    import pamm.fs

    real = pamm.fs._write_temporary

    def write_temporary(path, write):
        if not predicate(Path(path)):
            return real(path, write)

        def full(tmp):
            with open(tmp, "wb") as f:
                f.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, full)

    monkeypatch.setattr(pamm.fs, "_write_temporary", write_temporary)


@pytest.mark.parametrize("victim", [".safetensors", ".state.pt"])
def test_disk_full_at_a_checkpoint_is_one_line_exit_3_and_nothing_half_written(
    dataset, tmp_path, capsys, monkeypatch, victim
):
    _enospc_for(monkeypatch, lambda p: p.name.endswith(victim))
    out = tmp_path / "run"
    rc, _, err = run(capsys, train_args(out, dataset, train__checkpoint_every=1))
    assert rc == errors.EXIT_RESOURCE
    line = one_line_error(err)
    assert f"could not write {out / 'checkpoints' / ('step-0000001' + victim)}: no space left on the device" in line
    assert "training stopped at step 1; newest complete checkpoint: none" in line
    assert list((out / "checkpoints").iterdir()) == []  # neither half of the checkpoint, no temporary file
    assert not (out / "metrics.json").exists()


def test_disk_full_at_the_metrics_write_keeps_the_old_metrics(run_copy, dataset, capsys, monkeypatch):
    old = (run_copy / "metrics.json").read_bytes()
    _enospc_for(monkeypatch, lambda p: p.name == "metrics.json")
    rc, _, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=5))
    assert rc == errors.EXIT_RESOURCE
    assert f"could not write {run_copy / 'metrics.json'}: no space left on the device" in one_line_error(err)
    assert (run_copy / "metrics.json").read_bytes() == old
    assert sorted(p.name for p in run_copy.iterdir() if p.name.startswith(".")) == []  # no temporary, lock released
    rc, _, err = run(capsys, ["evaluate", "--run", run_copy, "--quiet", "--max-images", 1])
    assert rc == errors.EXIT_RESOURCE and "no space left" in one_line_error(err, "evaluate")
    assert (run_copy / "metrics.json").read_bytes() == old


# ----------------------------------------------------------------------------------------------------------
# 12.6 empty split files


def test_empty_split_files_fail_data_check_and_are_refused_before_training(data, tmp_path, capsys):
    split = data / "gt_sets" / "val.txt"
    split.write_text("\n\n")
    rc, out, err = run(capsys, ["data", "check", "--dataset", "nyud", "--root", data, "--quiet"])
    assert rc == errors.EXIT_INPUT
    assert f"{split}: split file lists no image ids; expected one image id per line" in out
    assert "1 problem(s) found" in err
    rc, _, err = run(capsys, train_args(tmp_path / "run", data))
    assert rc == errors.EXIT_INPUT
    assert f"{split}: split file lists no image ids" in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_empty_split_error_is_on_its_own_line_after_a_progress_bar(run_copy, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "gt_sets" / "val.txt").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "pamm", "evaluate", "--run", str(run_copy), "--set", f"data.root={data}"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert (
        f"\npamm evaluate: error: {data / 'gt_sets' / 'val.txt'}: split file lists no image ids" in "\n" + done.stderr
    )


# ----------------------------------------------------------------------------------------------------------
# 12.7 evaluate: --max-images, an unwritable --out


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_evaluate_max_images_must_be_positive(run_copy, capsys, value):
    before = snapshot(run_copy)
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--run", str(run_copy), "--max-images", value])
    assert info.value.code == errors.EXIT_INPUT
    assert "--max-images: expected a positive integer" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_evaluate_checks_its_output_before_evaluating(run_copy, tmp_path, capsys, monkeypatch):
    import pamm.engine.evaluator
    import pamm.fs

    def never(*a, **k):
        raise AssertionError("evaluated before checking the output")

    monkeypatch.setattr(pamm.engine.evaluator, "evaluate_checkpoint", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(capsys, ["evaluate", "--run", run_copy, "--out", blocker / "m.json"])
    assert rc == errors.EXIT_INPUT and f"{blocker} is a file; expected a folder" in one_line_error(err, "evaluate")
    rc, _, err = run(capsys, ["evaluate", "--run", run_copy, "--out", tmp_path])
    assert rc == errors.EXIT_INPUT and f"{tmp_path} is a folder; expected a file path" in one_line_error(
        err, "evaluate"
    )

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pamm.fs.tempfile, "mkstemp", denied)
    target = tmp_path / "new" / "deeper" / "m.json"
    rc, _, err = run(capsys, ["evaluate", "--run", run_copy, "--out", target])
    assert rc == errors.EXIT_RESOURCE
    assert f"cannot write {target}: Permission denied" in one_line_error(err, "evaluate")
    assert not (tmp_path / "new").exists()  # the folders made for the check are removed again


# ----------------------------------------------------------------------------------------------------------
# 12.8 atomically written files respect the umask


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_written_file_respects_the_umask(dataset, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        rc, _, err = run(capsys, train_args(out, dataset, train__checkpoint_every=1))
        assert rc == 0, err
        rc, _, err = run(capsys, ["evaluate", "--run", out, "--out", tmp_path / "eval.json", "--quiet"])
        assert rc == 0, err
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "eval.json"]
    assert {"config.yaml", "metrics.json", "train.log", "best.safetensors", "step-0000002.state.pt"} <= {
        p.name for p in files
    }
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


# ----------------------------------------------------------------------------------------------------------
# 12.9 misleading messages


def test_folder_or_training_state_given_as_a_checkpoint(run_copy, tmp_path, capsys):
    rc, _, err = run(capsys, ["evaluate", "--checkpoint", run_copy])
    assert (
        rc == 2
        and f"--checkpoint {run_copy} is a run folder, not a weights file; use --run {run_copy}"
        in one_line_error(err, "evaluate")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, ["evaluate", "--checkpoint", empty])
    assert rc == 2 and f"{empty} is a folder, not a checkpoint file" in one_line_error(err, "evaluate")
    state = run_copy / "checkpoints" / "step-0000004.state.pt"
    rc, _, err = run(capsys, ["evaluate", "--checkpoint", state])
    line = one_line_error(err, "evaluate")
    assert rc == 2 and f"{state} is a pamm training state" in line and "damaged" not in line
    assert str(run_copy / "checkpoints" / "step-0000004.safetensors") in line


def test_checkpoint_of_another_preset_says_so_first_and_briefly(run_copy, tmp_path, capsys):
    from pamm.config import load_config
    from pamm.engine.checkpoint import CheckpointError, load_model

    ckpt = run_copy / "checkpoints" / "best.safetensors"
    rc, _, err = run(
        capsys,
        [
            "evaluate",
            "--checkpoint",
            ckpt,
            "--config",
            "nyud-vitl",
            "--set",
            "model.backbone.pretrained=false",
            "--set",
            f"data.root={tmp_path}",
        ],
    )
    assert rc == 2
    line = one_line_error(err, "evaluate")
    assert line.startswith(
        f"pamm evaluate: error: checkpoint {ckpt} is a demo checkpoint, the config is nyud-vitl: "
        f"the model does not fit ("
    )
    assert "model.dim 32 vs 768" in line and "missing" in line and "unexpected" in line
    assert len(line) < 1200, len(line)
    with pytest.raises(CheckpointError, match=r"d_state 8 vs 4.*1?\d tensor\(s\) of another shape"):
        load_model(ckpt, cfg=load_config("demo", {"model.d_state": 4}))


def test_convert_official_on_our_own_files_says_what_they_are(run_copy, tmp_path, capsys):
    for name, what in [("step-0000004.state.pt", "training state"), ("best.safetensors", "weights file")]:
        rc, _, err = run(capsys, ["convert-official", run_copy / "checkpoints" / name, tmp_path / "x.safetensors"])
        line = one_line_error(err, "convert-official")
        assert rc == 2 and f"is a pamm {what}" in line and "needs no conversion" in line
        assert "mmap" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_damaged_state_file_is_reported_on_stderr(run_copy, dataset, capsys):
    state = run_copy / "checkpoints" / "step-0000004.state.pt"
    state.write_bytes(state.read_bytes()[:5000])
    rc, out, err = run(capsys, train_args(run_copy, dataset, "--resume", train__iterations=5))
    assert rc == 0, err
    assert "warning: skipping damaged checkpoint of step 4" in err and "skipping" not in out
    assert "resumed from step-0000002.safetensors at step 2" in (run_copy / "train.log").read_text()


# ----------------------------------------------------------------------------------------------------------
# 12.10 half-made run folders


@pytest.mark.parametrize("failure", ["missing root", "unknown backbone", "offline weights", "non-finite loss"])
def test_a_run_failing_before_its_first_step_leaves_nothing_behind(dataset, tmp_path, capsys, failure):
    overrides = {
        "missing root": {"data__root": tmp_path / "nowhere"},
        "unknown backbone": {"model__backbone__name": "no_such_net"},
        "offline weights": {"model__backbone__weights": "null", "model__backbone__pretrained": "true"},
        "non-finite loss": {"train__loss_weights__depth": "1e39", "train__max_nonfinite_steps": 0},
    }[failure]
    fresh, existing = tmp_path / "new" / "run", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        rc, _, err = run(capsys, train_args(out, dataset, **overrides))
        assert rc == errors.EXIT_INPUT, err
        one_line_error(err)
    assert not (tmp_path / "new").exists()  # created by the call, removed with everything in it
    assert existing.is_dir() and list(existing.iterdir()) == []  # existed before: kept, and left as it was


def test_files_of_a_folder_that_is_not_a_run_are_never_overwritten(dataset, tmp_path, capsys):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own config\n")
    before = snapshot(folder)
    rc, _, err = run(capsys, train_args(folder, dataset))
    assert rc == 2 and "holds a config.yaml that is not a pamm run's" in one_line_error(err)
    assert snapshot(folder) == before
    (folder / "config.yaml").rename(folder / "my-config.yaml")  # unrelated files stay as they are (make demo
    before = snapshot(folder)  # puts the dataset preview into the run folder first)
    rc, _, err = run(capsys, train_args(folder, dataset))
    assert rc == 0, err
    assert {k: v for k, v in snapshot(folder).items() if k in before} == before


# ----------------------------------------------------------------------------------------------------------
# 12.11 SIGINT / SIGTERM: a checkpoint, the resume command, 130 / 143; losses in train.log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_checkpoint_and_prints_the_resume_command(dataset, tmp_path, signum):
    """A real process and a real signal; for SIGTERM the printed command is then run (about 25 s: two runs)."""
    out = tmp_path / "run"
    argv = train_args(out, dataset, train__iterations=40)
    victim = subprocess.Popen(
        [sys.executable, "-m", "pamm", *map(str, argv)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "train.log"
    wait_for_log_line(victim, log, "step 2/40")
    victim.send_signal(signum)
    stdout, stderr = victim.communicate(timeout=120)
    assert victim.returncode == (130 if signum == signal.SIGINT else 143), stderr
    text = log.read_text()
    step = int(text.split(" received: stopped at step ")[1].split()[0])
    assert 2 <= step < 40
    assert (out / "checkpoints" / f"step-{step:07d}.state.pt").exists()
    lines = stderr.strip().splitlines()
    assert (
        lines[-2] == f"pamm train: {signal.Signals(signum).name} received: stopped at step {step} of 40; "
        f"checkpoint {out / 'checkpoints' / f'step-{step:07d}.safetensors'} written"
    )
    assert lines[-1].startswith("resume with: pamm train ") and lines[-1].endswith(" --resume")
    assert "Traceback" not in stderr
    for s in range(1, step + 1):  # the losses, as TensorBoard has them, at the logging interval (1 here)
        assert f"step {s}/40: loss " in text
    if signum == signal.SIGINT:
        return
    import shlex

    resume = shlex.split(lines[-1][len("resume with: ") :])[1:]
    resume = [a if a != "train.iterations=40" else f"train.iterations={step + 1}" for a in resume]
    done = subprocess.run(
        [sys.executable, "-m", "pamm", *resume], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["step"] == step + 1


def test_signal_during_an_evaluation_checkpoints_it_as_pending_and_resume_redoes_it(dataset, tmp_path, monkeypatch):
    from pamm.config import load_config, parse_override
    from pamm.engine import trainer as trainer_module
    from pamm.engine.trainer import Trainer

    overrides = dict(
        parse_override(s) for s in sets(dataset, train__iterations=3, train__eval_every=2, eval__batch_size=1)[1::2]
    )
    cfg = load_config("demo", overrides)
    real = trainer_module.evaluate

    def evaluate_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives during the evaluation
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_with_ctrl_c)
    logs = []
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=logs.append)
    with pytest.raises(errors.Interrupted) as info:
        trainer.fit()
    assert info.value.exit_status == errors.EXIT_SIGINT and "stopped at step 2 of 3" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.setattr(trainer_module, "evaluate", real)
    logs.clear()
    metrics = Trainer(cfg, tmp_path / "run", resume=True, device="cpu", progress=False, log=logs.append).fit()
    assert any(m.startswith("step 2: val ") for m in logs), logs  # the interrupted evaluation, redone first
    assert metrics["images"] == 2 and (tmp_path / "run" / "checkpoints" / "step-0000003.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------
# 12.12 exit codes


def test_exit_codes_of_each_kind_of_failure(dataset, tmp_path, capsys, monkeypatch):
    from pamm.engine.checkpoint import CheckpointError
    from pamm.engine.run import RunLocked
    from pamm.engine.trainer import TrainingStopped

    cases = {
        errors.ResourceError("x"): 3,
        RunLocked("x"): 3,
        OSError(errno.ENOSPC, "full"): 3,
        PermissionError(errno.EACCES, "denied"): 3,
        FileNotFoundError(errno.ENOENT, "nope"): 2,
        CheckpointError("x"): 2,
        TrainingStopped("x"): 2,
        ValueError("x"): 2,
        KeyError("x"): 1,
        RuntimeError("x"): 1,
        KeyboardInterrupt(): 130,
        errors.Terminated(): 143,
        errors.Interrupted("x", signal.SIGTERM): 143,
        errors.Interrupted("x", signal.SIGINT): 130,
    }
    for e, code in cases.items():
        assert errors.exit_code(e) == code, e
    import pamm.engine.trainer

    def bug(*a, **k):
        raise KeyError("a bug")

    fit = pamm.engine.trainer.Trainer.fit
    monkeypatch.setattr(pamm.engine.trainer.Trainer, "fit", bug)
    rc, _, err = run(capsys, train_args(tmp_path / "run", dataset))
    assert rc == errors.EXIT_INTERNAL and "Traceback" in err and "internal error (a bug" in err
    assert not (tmp_path / "run" / ".pamm.lock").exists()  # released even then
    monkeypatch.setattr(pamm.engine.trainer.Trainer, "fit", fit)
    rc, _, err = run(capsys, ["train", "--config", "demo", "--out", tmp_path / "r", "--set", "train.nope=1"])
    assert rc == 2 and "unknown config key 'train.nope'" in one_line_error(err)
    rc, _, err = run(capsys, ["evaluate", "--checkpoint", tmp_path / "missing.safetensors"])
    assert rc == 2 and "does not exist" in one_line_error(err, "evaluate")


def test_out_of_memory_and_killed_workers_are_resource_errors_in_one_line():
    from pamm.engine.loading import next_batch

    class OutOfMemoryError(RuntimeError):  # what torch raises, told by name
        pass

    oom = OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB "
        "of which 1.2 GiB is free.\nOf the allocated memory 70 GiB is allocated by PyTorch ..."
    )
    assert errors.exit_code(oom) == errors.EXIT_RESOURCE
    line = errors.describe(oom)
    assert line.startswith("CUDA out of memory. Tried to allocate 2.00 GiB. Lower train.batch_size")
    assert "\n" not in line

    def dead(message):
        def batches():
            raise RuntimeError(message)
            yield

        return batches()

    for message, hint in [
        (
            "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that "
            "dataloader's workers are out of shared memory. Please try to raise your shared memory "
            "limit.",
            "enlarge /dev/shm",
        ),
        ("DataLoader worker (pid(s) 4242) exited unexpectedly", "lower data.workers"),
    ]:
        with pytest.raises(errors.ResourceError) as info:
            next_batch(dead(message))
        assert "DataLoader worker (pid" in str(info.value) and hint in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="something else"):
        next_batch(dead("something else"))


def test_readme_documents_the_exit_codes_of_pamm_errors():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Exit statuses") :]
    section = section[: section.index("\n## ")]
    for code in (
        errors.EXIT_OK,
        errors.EXIT_INTERNAL,
        errors.EXIT_INPUT,
        errors.EXIT_RESOURCE,
        errors.EXIT_SIGINT,
        errors.EXIT_SIGTERM,
    ):
        assert f"| {code} |" in section, code


def test_sigusr1_prints_every_threads_stack_and_the_command_goes_on():
    """How to see where a seemingly stuck `pamm train` is (each torchrun process): kill -USR1 PID."""
    code = (
        "import os, signal; from pamm.cli import install_stack_dump; assert install_stack_dump(); "
        "os.kill(os.getpid(), signal.SIGUSR1); print('still running')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "still running"
    assert "Current thread" in r.stderr and 'File "<string>", line 1' in r.stderr
