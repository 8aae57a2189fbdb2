"""Atomic checkpoints of a run directory, and the newest intact one back.

A run directory holds ``checkpoints/frames_<N>.pt`` files and :data:`CHECKPOINT_POINTER`, a
text file naming the newest. Every file here is written through :func:`atomic_write`, so a
reader (or a resume after ``kill -9``) sees either the previous version or the new one, never a
half-written file.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: The file in a run directory that names its newest checkpoint.
CHECKPOINT_POINTER = "latest_checkpoint.txt"

#: Suffix given to a checkpoint file found unreadable, so that rotation never keeps it in place
#: of an intact one (and it stays there to be looked at).
UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Replaces ``path`` with what ``write`` writes to a binary file: temp file, fsync, rename.

    Args:
        path: the file to write.
        write: called with the open temporary file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Writes ``state`` atomically: temp file, fsync, rename, then the pointer, same way.

    A reader (or a resume after ``kill -9``) sees either the previous checkpoint or the new
    one, never a half-written file.

    Args:
        run_dir: the run directory.
        state: what to save; ``state["frames"]`` names the file.
        keep: how many checkpoints to keep, the newest; older ones are deleted.

    Returns:
        The checkpoint's path.
    """
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"frames_{state['frames']:012d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    _point_to(run_dir, path)
    for old in sorted(ckpt_dir.glob("frames_*.pt"))[:-keep]:
        old.unlink()
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest intact checkpoint of ``run_dir`` (``torch.load(weights_only=True)``).

    The pointer names the newest; if that file cannot be read (a truncated copy, a damaged
    disk: ``torch.load`` fails), a warning names it and the other checkpoints are tried, newest
    first (``checkpoint.keep`` > 1 keeps older ones for this). Each unreadable file is renamed with
    :data:`UNREADABLE_SUFFIX` and the pointer set to the one loaded. Raises
    :class:`CheckpointError` naming every file tried when none can be read.
    """
    ckpt_dir = run_dir / "checkpoints"
    newest = ckpt_dir / (run_dir / CHECKPOINT_POINTER).read_text().strip()
    others = sorted((p for p in ckpt_dir.glob("frames_*.pt") if p != newest), reverse=True)
    candidates, failures = [newest, *others], []
    for index, path in enumerate(candidates):
        try:
            state = torch.load(path, weights_only=True)
        # A damaged file fails in many ways (a truncated zip: RuntimeError; an empty file:
        # EOFError; other bytes: UnpicklingError, KeyError...): any failure to read it is one.
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".strip(": ")
            failures.append(f"{path.name} ({reason})")
            logger.warning("checkpoint %s is unreadable (%s); trying the next newest", path, reason)
            continue
        if failures:
            for unreadable in candidates[:index]:
                if unreadable.exists():
                    unreadable.rename(unreadable.with_name(unreadable.name + UNREADABLE_SUFFIX))
            _point_to(run_dir, path)
            logger.warning("resuming from the older checkpoint %s", path)
        return state
    raise CheckpointError(
        f"no checkpoint of {run_dir} can be read: {'; '.join(failures)}. The run cannot "
        "continue; start a new one."
    )


def _point_to(run_dir: Path, checkpoint: Path) -> None:
    """Names ``checkpoint`` in the run's pointer file, atomically."""
    atomic_write(run_dir / CHECKPOINT_POINTER, lambda f: f.write(checkpoint.name.encode()))
