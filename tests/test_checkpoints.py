"""Checkpoints: a replay buffer's filled rows only, the pointer's fallbacks, and a run that the
file system refuses a write (a full disk, a read-only directory)."""

from __future__ import annotations

import builtins
import copy
import errno
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_transitions
from omegaconf import OmegaConf
from torchrl.data import TensorDictReplayBuffer
from torchrl.record.loggers.csv import CSVExperiment

from torchrl_mcmc.recipes import SAC, compose_config, train
from torchrl_mcmc.recipes.checkpoint import (
    CHECKPOINT_POINTER,
    load_checkpoint,
    load_replay_state_dict,
    replay_state_dict,
    save_checkpoint,
)
from torchrl_mcmc.recipes.config_rules import ConfigError
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.factories import make_replay_buffer
from torchrl_mcmc.recipes.run import Run
from torchrl_mcmc.recipes.run_dir import RUN_LOCK, plan_run

SMOKE = ["preset=smoke", "env=Pendulum-v1"]
MB = 2**20


def _name(frames: int) -> str:
    return f"frames_{frames:012d}.pt"


def _replay_buffer(size: int) -> TensorDictReplayBuffer:
    cfg = OmegaConf.create({"replay": {"size": size, "batch_size": 32}})
    return make_replay_buffer(cfg, torch.device("cpu"))


# ---------------------------------------------------------------------------- the replay buffer
#: (replay.size, transitions written): a million-row buffer that has seen 400, one that has
#: wrapped around (its cursor mid-way), an empty one.
FILLS = {"partly filled": (1_000_000, 400), "wrapped around": (300, 400), "empty": (1000, 0)}


@pytest.mark.parametrize("saved_as", ["filled rows", "torchrl state_dict"])
@pytest.mark.parametrize("fill", list(FILLS))
def test_a_restored_replay_buffer_goes_on_as_the_saved_one(
    fill: str, saved_as: str, tmp_path: Path
) -> None:
    size, written = FILLS[fill]
    buffer = _replay_buffer(size)
    if written:
        buffer.extend(make_transitions(3, 1, written))
    # What checkpoints hold now, and what they held before (TorchRL's own state dict, the whole
    # preallocated storage): both load.
    state = replay_state_dict(buffer) if saved_as == "filled rows" else buffer.state_dict()
    save_checkpoint(tmp_path, {"frames": written, "replay": state})
    restored = _replay_buffer(size)
    load_replay_state_dict(restored, load_checkpoint(tmp_path)["replay"])

    assert len(restored) == len(buffer) == min(size, written)
    assert restored.writer.state_dict() == buffer.writer.state_dict()
    if written:
        assert (restored.storage[:] == buffer.storage[:]).all()
    # The next transitions go to the same rows (past the wrap too), and the same RNG state
    # then samples the same minibatch.
    more = make_transitions(3, 1, 150)
    assert torch.equal(restored.extend(more), buffer.extend(more))
    assert (restored.storage[:] == buffer.storage[:]).all()
    torch.manual_seed(1)
    expected = buffer.sample()
    torch.manual_seed(1)
    assert (restored.sample() == expected).all()


# ---------------------------------------------------------------------------- the pointer
def _checkpoints(run_dir: Path, *frames: int) -> Path:
    for n in frames:
        save_checkpoint(run_dir, {"frames": n}, keep=len(frames))
    return run_dir / "checkpoints"


@pytest.mark.parametrize(
    ("pointer", "why"),
    [
        (None, f"{CHECKPOINT_POINTER} is missing"),
        ("", f"{CHECKPOINT_POINTER} is empty"),
        (_name(900), f"names '{_name(900)}', which is no checkpoint file"),
        ("../config.yaml", "names '../config.yaml', which is no checkpoint file"),
    ],
    ids=["missing", "empty", "a missing file", "no checkpoint"],
)
def test_a_pointer_naming_no_checkpoint_falls_back_to_the_newest_one_setting_nothing_aside(
    pointer: str | None, why: str, tmp_path: Path, caplog
) -> None:
    ckpt_dir = _checkpoints(tmp_path, 100, 200, 300)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    pointer_file = tmp_path / CHECKPOINT_POINTER
    if pointer is None:
        pointer_file.unlink()
    else:
        pointer_file.write_text(pointer)
    with caplog.at_level("WARNING", logger="torchrl_mcmc"):
        assert load_checkpoint(tmp_path)["frames"] == 300
    assert any(why in r.getMessage() for r in caplog.records), caplog.text
    # Nothing renamed (an empty pointer used to set the whole checkpoints/ folder aside), and
    # the pointer names the checkpoint loaded.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "config.yaml",
        CHECKPOINT_POINTER,
    ]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [_name(100), _name(200), _name(300)]
    assert pointer_file.read_text() == _name(300)


def test_without_a_pointer_an_unreadable_newest_file_alone_is_set_aside(tmp_path: Path) -> None:
    ckpt_dir = _checkpoints(tmp_path, 100, 200, 300)
    (tmp_path / CHECKPOINT_POINTER).write_text("")
    newest = ckpt_dir / _name(300)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    assert load_checkpoint(tmp_path)["frames"] == 200
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        _name(100),
        _name(200),
        f"{_name(300)}.unreadable",
    ]
    assert (tmp_path / CHECKPOINT_POINTER).read_text() == _name(200)


def test_a_run_whose_pointer_was_deleted_resumes(tmp_path: Path) -> None:
    cfg = compose_config("sac", [*SMOKE, f"run_root={tmp_path}"])
    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    resume = OmegaConf.merge(cfg, {"resume": str(run_dir)})
    with pytest.raises(ConfigError, match="the run has no checkpoint yet"):
        plan_run(resume)
    _checkpoints(run_dir, 100)
    (run_dir / CHECKPOINT_POINTER).unlink()
    assert plan_run(resume).resume_dir == run_dir
    assert load_checkpoint(run_dir)["frames"] == 100


def test_a_resume_whose_checkpoints_folder_is_read_only_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch
) -> None:
    cfg = compose_config("sac", [*SMOKE, f"run_root={tmp_path}"])
    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    ckpt_dir = _checkpoints(run_dir, 100)
    real_mkdtemp = tempfile.mkdtemp

    def refusing_mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == ckpt_dir:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", refusing_mkdtemp)
    with pytest.raises(ConfigError) as refused:
        plan_run(OmegaConf.merge(cfg, {"resume": str(run_dir)}))
    assert str(refused.value) == (
        f"resume={str(run_dir)!r}: its checkpoints cannot be written: no folder can be made in "
        f"{ckpt_dir} (Permission denied)."
    )


def test_an_unreadable_checkpoint_that_cannot_be_renamed_stays_and_an_older_one_loads(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    ckpt_dir = _checkpoints(tmp_path, 100, 200)
    newest = ckpt_dir / _name(200)
    newest.write_bytes(b"")

    def refusing_rename(self: Path, target: Any) -> Path:
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "rename", refusing_rename)
    with caplog.at_level("WARNING", logger="torchrl_mcmc"):
        assert load_checkpoint(tmp_path)["frames"] == 100
    assert (
        f"could not set the unreadable checkpoint {newest} aside (Read-only file system); it "
        "stays where it is" in caplog.text
    )
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [_name(100), _name(200)]


def test_a_resume_removes_the_temporary_files_of_writes_cut_short(tmp_path: Path) -> None:
    ckpt_dir = _checkpoints(tmp_path, 100)
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = [
        ckpt_dir / f".{_name(200)}.tmp-{ended.pid}",
        tmp_path / f".{CHECKPOINT_POINTER}.tmp-{ended.pid}",
    ]
    # A process that still runs may be writing its file now: that one stays.
    running = ckpt_dir / f".{_name(200)}.tmp-{os.getppid()}"
    for path in [*stale, running]:
        path.write_bytes(b"half a checkpoint")
    assert load_checkpoint(tmp_path)["frames"] == 100
    assert [p.exists() for p in stale] == [False, False]
    assert running.exists()


# ---------------------------------------------------------------------------- file-system errors
def _refuse_writes(monkeypatch, refused: Callable[[Path], bool], code: int) -> None:
    """Opening a file for writing fails with ``OSError(code)`` where ``refused(path)``: a full
    disk (``ENOSPC``) or a read-only directory (``EACCES``)."""
    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+") and refused(Path(file)):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)


def _make_read_only(directory: Path, monkeypatch) -> None:
    """``chmod a-w``; where this process writes there anyway (root), its writes are refused."""
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    probe = directory / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return
    probe.unlink()
    directory.chmod(mode)
    _refuse_writes(monkeypatch, lambda path: path.parent == directory, errno.EACCES)


def _run_dir(run_root: Path) -> Path:
    (run_dir,) = {p.parent for p in run_root.rglob("config.yaml")}
    return run_dir


def _error(caplog) -> str:
    """The one error the run logged, checked to come without a traceback."""
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records)
    return error.getMessage()


def _temporary_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob(".*.tmp-*"))


def test_a_full_disk_ends_the_run_at_its_last_checkpoint_which_is_lean_and_resumes_exactly(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """A million-row buffer, 400 frames, a checkpoint every 200. The disk is full for the
    learning curve (a warning), then for the checkpoint at 400 (the run ends); the resume from
    200 restores it exactly, completes and is refused its summary.json (the run ends again); a
    second resume writes it."""
    overrides = [*SMOKE, f"run_root={tmp_path}", "replay.size=1000000"]
    no_space = os.strerror(errno.ENOSPC)
    at_checkpoint, at_restore = {}, {}

    def snapshot(run: Run, into: dict[str, Any]) -> None:
        """The run's next minibatch (the RNG state left as it is) and its parameters."""
        with torch.random.fork_rng():
            into["minibatch"] = run.buffer.sample()
        into["parameters"] = copy.deepcopy(run.method.state_dict()["loss"])

    real_checkpoint, real_restore, real_save = Run.checkpoint, Run._restore, torch.save

    def checkpoint(run: Run) -> Path:
        path = real_checkpoint(run)
        if run.progress.frames == 200:
            snapshot(run, at_checkpoint)
        return path

    def save_until_the_disk_is_full(obj, f, *args, **kwargs) -> None:
        if isinstance(obj, dict) and obj.get("frames") == 400:
            f.write(b"the first half of a checkpoint")
            raise OSError(errno.ENOSPC, no_space)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(Run, "checkpoint", checkpoint)
    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    _refuse_writes(monkeypatch, lambda p: p.name.startswith(".learning_curve.png"), errno.ENOSPC)
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        run = train(compose_config("sac", overrides), SAC)
    run_dir = run.path
    ckpt_dir = run_dir / "checkpoints"
    assert run.exit_code == ExitCode.FILESYSTEM == 3
    error = _error(caplog)
    assert f"could not write {ckpt_dir / _name(400)} ([Errno 28] {no_space})" in error
    assert f"its last checkpoint, {ckpt_dir / _name(200)}, is intact" in error
    assert f"resume={run_dir}" in error
    assert error in (run_dir / "train.log").read_text()
    # The learning curve could not be written either time; the run went on.
    curve = [r.getMessage() for r in caplog.records if "learning_curve.png" in r.getMessage()]
    assert len(curve) == 2 and all(no_space in m and "goes on" in m for m in curve), curve
    assert not (run_dir / "learning_curve.png").exists()
    # The checkpoint at 200 is intact and named by the pointer; nothing half-written is left.
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [_name(200)]
    assert (run_dir / CHECKPOINT_POINTER).read_text() == _name(200)
    assert _temporary_files(run_dir) == []
    assert not (run_dir / "summary.json").exists()
    # It holds the 200 rows written, not the million preallocated (40 MB).
    assert (ckpt_dir / _name(200)).stat().st_size < 5 * MB
    assert load_checkpoint(run_dir)["replay"]["_storage"]["_len"] == 200

    # The resume: the same parameters, buffer and RNG state as the run had at 200 frames.
    def restore(run: Run, state: dict[str, Any]) -> None:
        real_restore(run, state)
        snapshot(run, at_restore)

    monkeypatch.undo()
    monkeypatch.setattr(Run, "_restore", restore)
    _refuse_writes(monkeypatch, lambda p: p.name.startswith(".summary.json"), errno.ENOSPC)
    caplog.clear()
    resume = [*overrides, f"resume={run_dir}"]
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        assert train(compose_config("sac", resume), SAC).exit_code == ExitCode.FILESYSTEM
    assert (at_restore["minibatch"] == at_checkpoint["minibatch"]).all()
    assert at_restore["minibatch"].keys() == at_checkpoint["minibatch"].keys()
    torch.testing.assert_close(
        at_restore["parameters"], at_checkpoint["parameters"], rtol=0, atol=0
    )
    error = _error(caplog)
    assert f"could not write {run_dir / 'summary.json'} ([Errno 28] {no_space}" in error
    assert f"its last checkpoint, {ckpt_dir / _name(400)}, is intact" in error
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [_name(200), _name(400)]
    assert all(p.stat().st_size < 5 * MB for p in ckpt_dir.iterdir())
    assert _temporary_files(run_dir) == [] and not (run_dir / "summary.json").exists()

    # Nothing left to collect: the second resume writes the summary of the complete run.
    monkeypatch.undo()
    run = train(compose_config("sac", resume), SAC)
    assert run.exit_code == ExitCode.OK
    assert run.summary["frames"] == 400
    assert [h["frames"] for h in run.summary["eval_history"]] == [200, 400]


@pytest.mark.parametrize("read_only", ["checkpoints", "run directory"])
def test_a_read_only_directory_ends_the_run_at_its_last_checkpoint_which_resumes(
    read_only: str, tmp_path: Path, monkeypatch, caplog
) -> None:
    """200 frames in batches of 50, a checkpoint at 150: then the directory turns read-only,
    and the final checkpoint, at 200, is refused (in the run directory: its pointer, and the
    learning curve)."""
    overrides = [
        *SMOKE,
        f"run_root={tmp_path}",
        "collector.total_frames=200",
        "collector.frames_per_batch=50",
        "checkpoint.interval_frames=120",
        "eval.interval_frames=1000",
    ]
    real_checkpoint = Run.checkpoint
    made_read_only = []

    def checkpoint_then_read_only(run: Run) -> Path:
        path = real_checkpoint(run)
        made_read_only.append(path.parent if read_only == "checkpoints" else run.path)
        _make_read_only(made_read_only[-1], monkeypatch)
        return path

    monkeypatch.setattr(Run, "checkpoint", checkpoint_then_read_only)
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        try:
            run = train(compose_config("sac", overrides), SAC)
        finally:
            for directory in made_read_only:
                directory.chmod(0o755)
            monkeypatch.undo()
    run_dir = _run_dir(tmp_path)
    ckpt_dir = run_dir / "checkpoints"
    assert run.exit_code == ExitCode.FILESYSTEM
    error = _error(caplog)
    assert f"could not write {ckpt_dir / _name(200)} ([Errno 13] Permission denied" in error
    assert f"its last checkpoint, {ckpt_dir / _name(150)}, is intact" in error
    assert f"resume={run_dir}" in error
    curve_refused = any(
        "learning_curve.png" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )
    assert curve_refused == (read_only == "run directory")
    # A checkpoint written but whose pointer was refused is removed: the pointer's is the last.
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [_name(150)]
    assert (run_dir / CHECKPOINT_POINTER).read_text() == _name(150)
    assert _temporary_files(run_dir) == []

    resumed = train(compose_config("sac", [*overrides, f"resume={run_dir}"]), SAC)
    assert resumed.exit_code == ExitCode.OK
    assert resumed.summary["frames"] == 200
    assert "resumed at 150 frames" in (run_dir / "train.log").read_text()


def test_a_full_disk_for_the_metrics_ends_the_run_at_its_last_checkpoint(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """The CSV logger's write at 300 frames finds the disk full (50-frame batches, a checkpoint
    at 200): one error, exit 3; the resume logs each step once."""
    overrides = [*SMOKE, f"run_root={tmp_path}", "collector.frames_per_batch=50"]
    no_space = os.strerror(errno.ENOSPC)
    real_add_scalar = CSVExperiment.add_scalar

    def add_scalar(self, name, value, global_step=None):
        if global_step >= 300:
            raise OSError(errno.ENOSPC, no_space)  # a write(): no file name
        real_add_scalar(self, name, value, global_step)

    monkeypatch.setattr(CSVExperiment, "add_scalar", add_scalar)
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        run = train(compose_config("sac", overrides), SAC)
    assert run.exit_code == ExitCode.FILESYSTEM
    error = _error(caplog)
    assert f"could not write {run.path / 'logs'} ([Errno 28] {no_space})" in error
    assert f"The run stops at 300 frames; its last checkpoint, {run.path}" in error
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == [_name(200)]

    monkeypatch.undo()
    resumed = train(compose_config("sac", [*overrides, f"resume={run.path}"]), SAC)
    assert resumed.exit_code == ExitCode.OK
    (returns,) = (run.path / "logs").rglob("eval/return.csv")
    steps = [int(line.split(",")[0]) for line in returns.read_text().splitlines()]
    assert steps == [200, 400]


def test_a_full_disk_for_train_log_is_said_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Every write to ``train.log`` after its first three lines finds the disk full."""
    real_open = logging.FileHandler._open

    class FillingStream:
        def __init__(self, stream) -> None:
            self.stream, self.lines = stream, 0

        def write(self, text: str) -> int:
            self.lines += 1
            if self.lines > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.stream.write(text)

        def __getattr__(self, name: str):
            return getattr(self.stream, name)

    monkeypatch.setattr(logging.FileHandler, "_open", lambda self: FillingStream(real_open(self)))
    run = train(compose_config("sac", [*SMOKE, f"run_root={tmp_path}"]), SAC)
    assert run.exit_code == ExitCode.OK and run.summary["frames"] == 400
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "train.log cannot be written" in line]
    assert said == [
        f"torchrl_mcmc: {run.path / 'train.log'} cannot be written ([Errno 28] "
        f"{os.strerror(errno.ENOSPC)}); it gets no more log lines, the console still does"
    ]
    assert "Traceback" not in err and "Logging error" not in err
    assert len((run.path / "train.log").read_text().splitlines()) == 3


def test_each_run_in_a_process_logs_to_its_own_train_log_only(tmp_path: Path) -> None:
    first, second = (
        train(compose_config("sac", [*SMOKE, f"run_root={tmp_path / name}", f"seed={seed}"]), SAC)
        for name, seed in (("first", 1), ("second", 2))
    )
    logs = [(run.path / "train.log").read_text() for run in (first, second)]
    for run, log, other in zip((first, second), logs, reversed(logs), strict=True):
        assert f"run directory: {run.path}" in log and str(run.path) not in other
    handlers = logging.getLogger("torchrl_mcmc").handlers
    assert not [h for h in handlers if isinstance(h, logging.FileHandler)]


# ---------------------------------------------------------------------------- one process a run
def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path: Path, caplog) -> None:
    """A resume of a run another live process trains is refused (exit 2, nothing written); a
    lock from another machine names it; one left by a process that ended is taken over; a run
    that ends leaves none."""
    overrides = [*SMOKE, f"run_root={tmp_path}", "collector.total_frames=200"]
    run = train(compose_config("sac", overrides), SAC)
    run_dir, lock = run.path, run.path / RUN_LOCK
    assert run.exit_code == ExitCode.OK and not lock.exists()
    resume = compose_config("sac", [*overrides, "collector.total_frames=300", f"resume={run_dir}"])
    host = socket.gethostname()

    alive = subprocess.Popen(["sleep", "60"])
    try:
        for holder, message in [
            (
                f"{alive.pid} {host}",
                f"{run_dir} is being trained by process {alive.pid} of this machine: stop it "
                "first (SIGTERM checkpoints it), or wait for it to end.",
            ),
            (
                "4242 other-node",
                f"{run_dir} is being trained by process 4242 on other-node ({lock} says so): "
                f"stop that process first; if it has ended (its machine went down), remove {lock} "
                "and start this one again.",
            ),
        ]:
            lock.write_text(holder + "\n")
            before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
            caplog.clear()
            refused = train(resume, SAC)
            assert refused.exit_code == ExitCode.BAD_INPUT
            assert _error(caplog) == f"configuration error: {message}"
            assert lock.read_text() == holder + "\n"  # the holder's, untouched
            assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    finally:
        alive.kill()
        alive.wait()

    lock.write_text(f"{alive.pid} {host}\n")  # its process has ended now (killed with -9, say)
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        resumed = train(resume, SAC)
    assert resumed.exit_code == ExitCode.OK and resumed.summary["frames"] == 300
    assert f"{lock} was left by process {alive.pid}, which has ended: taken over" in caplog.text
    assert not lock.exists()
