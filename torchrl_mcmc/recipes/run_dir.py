"""Where a run lives and what it starts from: its configuration checked before anything exists,
its directory made (or, for ``resume=<run dir>``, found with its checkpoint)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torchrl.envs import EnvBase

from torchrl_mcmc.recipes.checkpoint import (
    CHECKPOINT_POINTER,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    process_running,
)
from torchrl_mcmc.recipes.config_rules import (
    ConfigError,
    inspect_task,
    leaves,
    memory_problems,
    show_value,
    validate_config,
)
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.factories import make_env
from torchrl_mcmc.recipes.logs import setup_file_logging
from torchrl_mcmc.recipes.methods import METHODS, Method, method_fit_problem
from torchrl_mcmc.recipes.resume import (
    ResumedConfig,
    checkpoint_mismatches,
    load_run_config,
    record_resume,
    requested_keys,
    resume_config,
)

#: How a recipe builds its method: ``method_cls(cfg, env, device)``.
MethodFactory = Callable[[DictConfig, EnvBase, torch.device], Method]

logger = logging.getLogger(__name__)

#: The file in a run directory that names the process training it: ``<pid> <host>``.
RUN_LOCK = "run.lock"


@dataclass
class RunPlan:
    """A checked configuration: what :func:`plan_run` returns."""

    #: The configuration the run uses (for a resume: the run's own, see
    #: :func:`~torchrl_mcmc.recipes.resume.resume_config`).
    cfg: DictConfig
    #: The run directory to continue (``resume=``); ``None`` for a new run.
    resume_dir: Path | None = None
    #: For a resume: what changed from the run's saved configuration, and what was filled in.
    resumed: ResumedConfig | None = None


def plan_run(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> RunPlan:
    """Everything about a run that the user's input decides, checked before anything exists.

    Every key and value of ``cfg``
    (:func:`~torchrl_mcmc.recipes.config_rules.validate_config`: a key the recipe lacks is
    one), then what they make of this machine: a task the methods can train on
    (:func:`~torchrl_mcmc.recipes.config_rules.inspect_task`), sizes that fit in its memory
    (:func:`~torchrl_mcmc.recipes.config_rules.memory_problems`), and a run directory that can
    be made (under ``run_root``, or where ``hydra.run.dir`` says). For ``resume=<run dir>``, the
    run itself instead: its directory (written to), its checkpoint, and the configuration it
    continues with, its own ``config.yaml`` (:func:`~torchrl_mcmc.recipes.resume.load_run_config`)
    changed only where the command line may change it
    (:func:`~torchrl_mcmc.recipes.resume.resume_config`), then checked the same way. Raises
    :class:`~torchrl_mcmc.recipes.config_rules.ConfigError`.

    Args:
        cfg: the configuration as composed (without Hydra's own ``hydra`` node).
        hydra_cfg: Hydra's ``hydra`` node, which tells what the command line set and the
            recipe's configuration name (its keys are the known ones). Without it (a direct
            call), the keys of every recipe are known, every key of ``cfg`` counts as set, and
            ``cfg`` fills in what the run's configuration lacks.
    """
    defaults = None
    if hydra_cfg is not None:
        from hydra import compose

        defaults = compose(hydra_cfg.job.config_name)
    validate_config(cfg, defaults)
    if not cfg.resume:
        _check_task_and_memory(cfg)
        key, path = _new_run_dir(cfg, hydra_cfg)
        if (problem := _unwritable(path)) is not None:
            raise ConfigError(
                f"{key}={show_value(OmegaConf.select(cfg, key, default=str(path)))}: {problem}; "
                "must be a folder this process can create, or write in"
            )
        if (problem := _holds_a_run(path)) is not None:
            raise ConfigError(
                f"{key}={show_value(OmegaConf.select(cfg, key, default=str(path)))}: {problem}"
            )
        return RunPlan(cfg)
    shown = f"resume={cfg.resume!r}"
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise ConfigError(f"{shown}: no run there ({saved_path} is missing).")
    if not has_checkpoint(run_dir):
        raise ConfigError(f"{shown}: the run has no checkpoint yet.")
    if hydra_cfg is not None:
        key, elsewhere = _new_run_dir(cfg, hydra_cfg)
        if key == "hydra.run.dir" and elsewhere.expanduser().resolve() != run_dir:
            raise ConfigError(
                f"hydra.run.dir={show_value(str(elsewhere))} beside {shown}: a resumed run "
                f"goes on in its own directory ({run_dir}); drop hydra.run.dir, or set it to "
                "that directory"
            )
    if defaults is not None:
        keys = requested_keys(cfg, hydra_cfg, defaults)
    else:
        defaults, keys = cfg, set(leaves(cfg))
    try:
        saved = load_run_config(saved_path)
    except ConfigError as err:
        raise ConfigError(f"{shown}: {err}") from None
    try:
        resumed = resume_config(saved, cfg, defaults, keys)
        validate_config(resumed.cfg)
        _check_task_and_memory(resumed.cfg)
    except ConfigError as err:
        raise ConfigError(f"{shown}: {saved_path}: {err}") from None
    for folder, what in (
        (run_dir, "the run directory"),
        (run_dir / "checkpoints", "its checkpoints"),
    ):
        if (problem := _unwritable(folder)) is not None:
            raise ConfigError(f"{shown}: {what} cannot be written: {problem}.")
    resumed.cfg.resume = str(run_dir)
    return RunPlan(resumed.cfg, run_dir, resumed)


def _check_task_and_memory(cfg: DictConfig) -> None:
    """Raises a :class:`ConfigError` for a task the methods cannot train on, or sizes that do
    not fit in memory; ``cfg``'s values are checked already."""
    problems = memory_problems(cfg, inspect_task(cfg))
    if problems:
        raise ConfigError.listing(problems)


def _new_run_dir(cfg: DictConfig, hydra_cfg: DictConfig | None) -> tuple[str, Path]:
    """Where a new run's directory is made, and the key that says so: ``run_root`` (in which a
    direct call makes it, and Hydra unless told otherwise), or ``hydra.run.dir``."""
    if hydra_cfg is None:
        return "run_root", Path(cfg.run_root)
    if not OmegaConf.is_missing(hydra_cfg.runtime, "output_dir"):
        path = Path(hydra_cfg.runtime.output_dir)  # inside a job: Hydra has made it
    else:
        path = Path(hydra_cfg.run.dir)  # before a run starts (Preflight)
    overridden = any(o.partition("=")[0] == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    return ("hydra.run.dir" if overridden else "run_root"), path


def _unwritable(path: Path) -> str | None:
    """Why no run directory can be made at ``path`` (nor written in, if it exists); ``None``
    if one can. The nearest folder that exists gets an empty folder made and removed at once:
    what permissions say is not what the file system does (a read-only mount, ``/proc``, the
    superuser)."""
    existing = path.expanduser().absolute()
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".write-test-", dir=existing)
    except OSError as err:
        return f"no folder can be made in {existing} ({err.strerror or err})"
    os.rmdir(probe)
    return None


def _holds_a_run(path: Path) -> str | None:
    """Why a new run cannot start in ``path``: another run's ``config.yaml`` or checkpoints
    are there (a new run would mix its files with theirs); ``None`` if none are."""
    if not any(_exists(path / name) for name in ("config.yaml", CHECKPOINT_POINTER, "checkpoints")):
        return None
    if has_checkpoint(path):
        return (
            f"{path} holds a run already; continue it with resume={path}, or start the new "
            "one in another folder"
        )
    return (
        f"{path} holds a run already (one that stopped before its first checkpoint); remove "
        "that folder, or start the new run in another one"
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a parent that cannot be searched: as good as absent
        return False


class Preflight(Callback):
    """Checks a run's configuration before Hydra creates its run directory (``common.yaml``
    registers it under ``hydra.callbacks``).

    Hydra creates the output directory, parents and all, before the recipe runs, and which of
    those folders were there before is unknowable afterwards; so :func:`plan_run` runs here
    first, and a bad configuration exits with status 2 leaving nothing on disk. A resume is
    pointed at its own run directory, so no new one is made for it either. (Multirun jobs skip
    this; :func:`open_run` checks them and removes the job's directory.)
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            plan = plan_run(task_cfg, config.hydra)
        except ConfigError as err:
            logger.error("configuration error: %s", err)
            sys.exit(ExitCode.BAD_INPUT)
        if plan.resume_dir is not None:
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(plan.resume_dir)


@dataclass
class OpenRun:
    """A run ready to train: what :func:`open_run` returns."""

    #: The configuration it trains with.
    cfg: DictConfig
    #: Its directory (``config.yaml``, ``train.log``, ``checkpoints/``, ``logs/``...).
    path: Path
    #: For a resume: what changed from the run's saved configuration; ``None`` for a new run.
    resumed: ResumedConfig | None = None
    #: For a resume: the checkpoint it continues from.
    state: dict[str, Any] | None = None


def open_run(cfg: DictConfig, method_cls: MethodFactory | None = None) -> OpenRun:
    """Plans the run (:func:`plan_run`), then makes its directory, or finds it for a resume.

    The directory is Hydra's output directory in a Hydra app; in a direct call,
    ``<run_root>/<method>/<env>/seed<N>-<time>``, the layout ``common.yaml`` gives Hydra. A new
    run gets its resolved ``config.yaml``; a resume loads its newest intact checkpoint, checks
    that it fits the networks of the run's configuration, and records what it changed
    (:func:`~torchrl_mcmc.recipes.resume.record_resume`). From here on the package's logs go to
    ``train.log`` too.

    Args:
        cfg: the configuration as composed.
        method_cls: the method the run trains, which a resume's checkpoint must fit; by
            default, the recipe Hydra's configuration name names (without either, a
            checkpoint is not checked before it is loaded).

    Raises:
        ConfigError: a bad value or ``resume=``, or a checkpoint that does not fit (a directory
            this process created for the run is removed first).
        CheckpointError: a resume whose checkpoints are all unreadable.
    """
    fresh_dir = _hydra_output_dir()
    try:
        _check_method_fits(cfg, method_cls)
        plan = plan_run(cfg, _hydra_config())
    except ConfigError:
        _remove_if_fresh(fresh_dir)
        raise
    cfg = plan.cfg
    if plan.resume_dir is not None:
        run_dir = plan.resume_dir
        if fresh_dir is not None and fresh_dir != run_dir:
            _remove_if_fresh(fresh_dir)  # a multirun job's (Preflight redirects a single run's)
    elif fresh_dir is not None:
        run_dir = fresh_dir
    else:
        run_dir = _new_stamped_dir(
            Path(cfg.run_root).resolve() / cfg.method / cfg.env.name, cfg.seed
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir)
    try:
        setup_file_logging(run_dir)
        logger.info("run directory: %s", run_dir)
        if plan.resumed is None:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
            return OpenRun(cfg, run_dir)
        state = load_checkpoint(run_dir)
        if method_cls is None:
            method_cls = _recipe_method()
        if method_cls is not None:
            _check_checkpoint_fits(cfg, state, run_dir, method_cls)
        record_resume(run_dir, plan.resumed)
    except BaseException:
        release_run_dir(run_dir)
        raise
    return OpenRun(cfg, run_dir, plan.resumed, state)


def claim_run_dir(run_dir: Path) -> None:
    """Marks ``run_dir`` as trained by this process (:data:`RUN_LOCK`, made exclusively).

    A lock that another running process of this machine holds refuses the run: two processes
    writing one run's checkpoints and logs would mix them. One left by a process that has
    ended (killed with ``-9``), or by an earlier run of this process, is taken over. One from
    another machine cannot be checked from here: the message says to remove it if that
    process has ended.

    Raises:
        ConfigError: the run is being trained by another process, or the lock cannot be
            written.
    """
    lock = run_dir / RUN_LOCK
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            with open(lock, "x") as file:
                file.write(me + "\n")
            return
        except FileExistsError:
            pass
        except OSError as err:
            raise ConfigError(f"{lock} cannot be written ({err.strerror or err}).") from None
        holder = _lock_holder(lock)
        if holder is not None:
            pid, host = holder
            if host != socket.gethostname():
                raise ConfigError(
                    f"{run_dir} is being trained by process {pid} on {host} ({lock} says so): "
                    f"stop that process first; if it has ended (its machine went down), remove "
                    f"{lock} and start this one again."
                )
            if process_running(pid):
                raise ConfigError(
                    f"{run_dir} is being trained by process {pid} of this machine: stop it "
                    "first (SIGTERM checkpoints it), or wait for it to end."
                )
            if pid != os.getpid():
                logger.info("%s was left by process %d, which has ended: taken over", lock, pid)
        lock.unlink(missing_ok=True)


def release_run_dir(run_dir: Path) -> None:
    """Removes ``run_dir``'s :data:`RUN_LOCK` if this process holds it."""
    lock = run_dir / RUN_LOCK
    if _lock_holder(lock) == (os.getpid(), socket.gethostname()):
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> tuple[int, str] | None:
    """The process (id, host) that :data:`RUN_LOCK` names; ``None`` for a lock that is
    missing, unreadable or names none (a write cut short: as good as none)."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _new_stamped_dir(parent: Path, seed: int) -> Path:
    """Makes ``parent/seed<seed>-<time>``, or with a ``-2``, ``-3``... suffix where a run
    started in the same second has it already, and returns it."""
    parent.mkdir(parents=True, exist_ok=True)
    name, suffix = f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}", 1
    while True:
        run_dir = parent / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            suffix += 1


def _check_method_fits(cfg: DictConfig, method_cls: MethodFactory | None) -> None:
    """Raises a :class:`ConfigError` when ``cfg`` is another recipe's than ``method_cls``'s
    (:func:`~torchrl_mcmc.recipes.methods.method_fit_problem`)."""
    problem = method_fit_problem(cfg, method_cls)
    if problem is not None:
        recipe = next((n for n, m in METHODS.items() if m.sections == method_cls.sections), None)
        fix = f"; compose_config({recipe!r}, [...]) makes one" if recipe is not None else ""
        raise ConfigError(problem + fix)


def _check_checkpoint_fits(
    cfg: DictConfig, state: Any, run_dir: Path, method_cls: MethodFactory
) -> None:
    """Raises a :class:`ConfigError` naming the checkpoint and what differs when ``state``,
    the checkpoint loaded, does not fit the method ``cfg`` builds (on the CPU, from a copy of
    the RNG state: shapes only matter)."""
    env = make_env(cfg)
    try:
        with torch.random.fork_rng(devices=[]):
            built = method_cls(cfg, env, torch.device("cpu")).state_dict()
    finally:
        env.close()
    saved = state.get("method") if isinstance(state, dict) else None
    problems = checkpoint_mismatches(saved, built)
    if problems:
        sizes = ", ".join(
            f"{k}={show_value(OmegaConf.select(cfg, k))}" for k in ("env.name", "network.hidden")
        )
        raise ConfigError(
            f"resume={str(run_dir)!r}: the checkpoint {latest_checkpoint(run_dir)} does not fit "
            f"the networks the run's config.yaml builds ({sizes}, ...): {'; '.join(problems)}. "
            "Its config.yaml was changed or the checkpoint is another run's: put back the "
            "run's own, or start a new run."
        )


def _recipe_method() -> MethodFactory | None:
    """The method of the recipe the running Hydra app composed, if any."""
    hydra_cfg = _hydra_config()
    return None if hydra_cfg is None else METHODS.get(hydra_cfg.job.config_name)


def _hydra_config() -> DictConfig | None:
    """The running Hydra job's own configuration (``hydra.*``), if any."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _hydra_output_dir() -> Path | None:
    hydra_cfg = _hydra_config()
    return None if hydra_cfg is None else Path(hydra_cfg.runtime.output_dir)


def _remove_if_fresh(path: Path | None) -> None:
    """Removes a run directory this process created but never wrote a checkpoint into."""
    if path is None or not path.exists():
        return
    if (path / CHECKPOINT_POINTER).exists():
        return
    shutil.rmtree(path, ignore_errors=True)
