"""Atomic checkpoints of a run directory, and the newest intact one back.

A run directory holds ``checkpoints/frames_<N>.pt`` files and :data:`CHECKPOINT_POINTER`, a
text file naming the newest. Every file here is written through :func:`atomic_write`, so a
reader (or a resume after ``kill -9``) sees either the previous version or the new one, never a
half-written file. A kill in the middle of a write leaves its temporary file
(``.<name>.tmp-<pid>``) behind: the next resume removes it (:func:`remove_stale_temp_files`).

A checkpoint's replay buffer holds the buffer's filled rows only (:func:`replay_state_dict`),
not the whole storage TorchRL preallocates: a buffer of a million transitions that has seen a
few thousand costs a few thousand rows on disk.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer

logger = logging.getLogger(__name__)

#: The file in a run directory that names its newest checkpoint.
CHECKPOINT_POINTER = "latest_checkpoint.txt"

#: Suffix given to a checkpoint file found unreadable, so that rotation never keeps it in place
#: of an intact one (and it stays there to be looked at).
UNREADABLE_SUFFIX = ".unreadable"

#: The checkpoint files of ``<run dir>/checkpoints``; zero-padded, so that names sort by frames.
_CHECKPOINT_FILES = "frames_*.pt"
#: What :func:`atomic_write` puts between a file's name and its process id in the name of the
#: temporary file it writes first.
_TEMP_MARK = ".tmp-"


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Replaces ``path`` with what ``write`` writes to a binary file: temp file, fsync, rename.

    The temporary file, ``.<name>.tmp-<pid>`` next to ``path``, is removed when writing fails
    (a full disk: ``path`` is left as it was).

    Args:
        path: the file to write.
        write: called with the open temporary file.
    """
    tmp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Removes the temporary files a killed :func:`atomic_write` left in ``directory``.

    A file of a process still running (a run writing there now) is left alone. Returns the
    files removed.
    """
    removed = []
    for tmp in sorted(directory.glob(f".*{_TEMP_MARK}*")):
        pid = tmp.name.rpartition(_TEMP_MARK)[2]
        if not pid.isdigit() or process_running(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
        logger.info("removed %s, left by a write that was cut short", tmp)
    return removed


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a running process of this machine other than this one (which writes
    nothing while it cleans up: a file named with its own id is from an earlier process)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def rng_state() -> dict[str, Any]:
    """torch's, numpy's and Python's RNG states, as ``torch.load(weights_only=True)`` reads
    them back (numpy's key array as a tensor)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def replay_state_dict(buffer: ReplayBuffer) -> dict[str, Any]:
    """``buffer.state_dict()`` with the filled rows of its storage only.

    TorchRL's state dict holds the storage's whole preallocated tensors, ``replay.size`` rows
    however few are filled; this one holds the first ``len(buffer)`` rows (those a buffer that
    fills from the start and wraps around has written), and everything else (the writer's
    cursor and count, the sampler's state, the storage's length) as TorchRL saves it.
    :func:`load_replay_state_dict` reads it back. For a storage of one dimension, as the
    recipes' (:func:`~torchrl_mcmc.recipes.factories.make_replay_buffer`).
    """
    state = buffer.state_dict()
    storage = buffer.storage
    if storage.initialized:
        rows = storage[:]  # the filled rows
        if len(storage) < storage.max_size:
            rows = rows.clone()  # a view: torch.save would write the whole tensor it views
        state["_storage"] = {**state["_storage"], "_storage": rows.state_dict()}
    return state


def load_replay_state_dict(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    """Restores what :func:`replay_state_dict` saved into ``buffer``, a new buffer made as the
    saved one was: the same rows, length and next write position, and the same samples for
    the same RNG state.

    The saved storage may hold more rows than the buffer's length: the filled ones come first,
    and only those are read. So TorchRL's own ``buffer.state_dict()``, whose storage is the
    whole preallocated tensor, loads too.
    """
    saved = state["_storage"]
    # The writer, sampler, transforms and batch size first, on a storage left empty (what
    # TorchRL saves for an empty one), which writing the rows back then allocates.
    empty = {"_storage": {}, "initialized": False, "_len": 0}
    buffer.load_state_dict({**state, "_storage": empty})
    if saved["initialized"]:
        filled = saved["_len"]
        rows = TensorDict().load_state_dict(saved["_storage"], strict=False)[:filled]
        buffer.storage.set(slice(0, filled), rows)


def checkpoint_path(run_dir: Path, frames: int) -> Path:
    """Where :func:`save_checkpoint` writes the checkpoint of ``frames`` frames."""
    return run_dir / "checkpoints" / f"frames_{frames:012d}.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Writes ``state`` atomically: temp file, fsync, rename, then the pointer, same way.

    A reader (or a resume after ``kill -9``) sees either the previous checkpoint or the new
    one, never a half-written file. When a write fails (an ``OSError``: a full disk, a
    read-only directory), the previous checkpoint stays the one the pointer names, and the
    error goes up: a new checkpoint whose pointer could not be written is removed.

    Args:
        run_dir: the run directory.
        state: what to save; ``state["frames"]`` names the file.
        keep: how many checkpoints to keep, the newest; older ones are deleted.

    Returns:
        The checkpoint's path.
    """
    path = checkpoint_path(run_dir, state["frames"])
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    try:
        _point_to(run_dir, path)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()  # no pointer names it: a resume would start from the previous one
        raise
    for old in _checkpoint_files(path.parent)[keep:]:
        old.unlink()
    return path


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a checkpoint to resume from, or a pointer naming one."""
    return (run_dir / CHECKPOINT_POINTER).exists() or bool(
        _checkpoint_files(run_dir / "checkpoints")
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume of ``run_dir`` starts from, unless it turns out unreadable:
    the one the pointer names, else the newest ``checkpoints/frames_*.pt``; None if none."""
    pointed, _ = _pointed_checkpoint(run_dir)
    if pointed is not None:
        return pointed
    return next(iter(_checkpoint_files(run_dir / "checkpoints")), None)


def load_checkpoint(
    run_dir: Path, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """The newest intact checkpoint of ``run_dir`` (``torch.load(weights_only=True)``), its
    tensors where they were saved or, given ``map_location``, there (``"cpu"`` reads a CUDA
    run's checkpoint on a machine without a GPU).

    The pointer names the newest; if it is missing, empty or names no checkpoint file, a
    warning says so and the checkpoint files are tried, newest first. If a file cannot be read
    (a truncated copy, a damaged disk: ``torch.load`` fails), a warning names it and the other
    checkpoints are tried, newest first (``checkpoint.keep`` > 1 keeps older ones for this).
    Each unreadable file is renamed with :data:`UNREADABLE_SUFFIX` (left in place, with a
    warning, where the file system refuses), and the pointer set to the one loaded. Temporary
    files that writes cut short left behind are removed first (:func:`remove_stale_temp_files`).
    Raises :class:`CheckpointError` naming every file tried when none can be read.
    """
    ckpt_dir = run_dir / "checkpoints"
    for directory in (run_dir, ckpt_dir):
        if directory.is_dir():
            remove_stale_temp_files(directory)
    pointed, why_not = _pointed_checkpoint(run_dir)
    files = _checkpoint_files(ckpt_dir)
    if pointed is None:
        logger.warning("%s; trying the checkpoints in %s, newest first", why_not, ckpt_dir)
        candidates = files
    else:
        candidates = [pointed, *(p for p in files if p != pointed)]
    failures = []
    for index, path in enumerate(candidates):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        # A damaged file fails in many ways (a truncated zip: RuntimeError; an empty file:
        # EOFError; other bytes: UnpicklingError, KeyError...): any failure to read it is one.
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".strip(": ")
            failures.append(f"{path.name} ({reason})")
            logger.warning("checkpoint %s is unreadable (%s); trying the next newest", path, reason)
            continue
        for unreadable in candidates[:index]:
            _set_aside(unreadable)
        if path != pointed:
            _point_to(run_dir, path)
            logger.warning("resuming from the checkpoint %s", path)
        return state
    if not candidates:
        raise CheckpointError(
            f"no checkpoint of {run_dir}: {why_not}, and {ckpt_dir} holds no {_CHECKPOINT_FILES} "
            "file."
        )
    raise CheckpointError(f"no checkpoint of {run_dir} can be read: {'; '.join(failures)}.")


def _set_aside(path: Path) -> None:
    """Renames the unreadable checkpoint ``path`` with :data:`UNREADABLE_SUFFIX`; where the file
    system refuses, a warning says so and the file stays (a later resume tries it again)."""
    if not path.exists():
        return
    try:
        path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
    except OSError as err:
        logger.warning(
            "could not set the unreadable checkpoint %s aside (%s); it stays where it is",
            path,
            err.strerror or err,
        )


def _checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """The checkpoint files in ``ckpt_dir``, newest first."""
    return sorted((p for p in ckpt_dir.glob(_CHECKPOINT_FILES) if p.is_file()), reverse=True)


def _pointed_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """The checkpoint file the pointer names; or None, and why not."""
    pointer = run_dir / CHECKPOINT_POINTER
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None, f"{pointer} is missing"
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{pointer} cannot be read ({err})"
    if not name:
        return None, f"{pointer} is empty"
    path = run_dir / "checkpoints" / name
    if path.name != name or not fnmatch.fnmatch(name, _CHECKPOINT_FILES) or not path.is_file():
        return None, f"{pointer} names {name!r}, which is no checkpoint file in {path.parent}"
    return path, ""


def _point_to(run_dir: Path, checkpoint: Path) -> None:
    """Names ``checkpoint`` in the run's pointer file, atomically."""
    atomic_write(run_dir / CHECKPOINT_POINTER, lambda f: f.write(checkpoint.name.encode()))
