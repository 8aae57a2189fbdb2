"""A run's logs: ``train.log`` in its directory, its metrics logger, console lines above the
progress bar, and the CSV metric rows a resumed run writes again."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from torchrl.record.loggers import Logger, get_logger
from torchrl.record.loggers.csv import CSVLogger

from torchrl_mcmc.recipes.checkpoint import atomic_write

if TYPE_CHECKING:
    from tqdm import tqdm

    from torchrl_mcmc.recipes.run_dir import OpenRun

logger = logging.getLogger(__name__)


#: The name of the handler that writes a run's ``train.log``.
_RUN_LOG_HANDLER = "torchrl_mcmc.train_log"


class _RunLogHandler(logging.FileHandler):
    """``train.log``'s handler. A write the file system refuses (a full disk) is said once on
    stderr, in one line, and the file gets no more lines: the run itself goes on, and the
    checkpoint it cannot write ends it with the message that says how to go on."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.set_name(_RUN_LOG_HANDLER)
        self.refused = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.refused:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        self.refused = True
        sys.stderr.write(
            f"torchrl_mcmc: {self.baseFilename} cannot be written ({err}); it gets no more "
            "log lines, the console still does\n"
        )


def setup_file_logging(run_dir: Path) -> None:
    """Sends the package's log records (INFO and above) to ``run_dir/train.log`` too, and
    there only: the file of an earlier run in this process gets no more lines."""
    end_file_logging()
    handler = _RunLogHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The library's and the recipes' loggers both live under "torchrl_mcmc".
    package_logger = logging.getLogger("torchrl_mcmc")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)


def end_file_logging() -> None:
    """Closes ``train.log``'s handler (:func:`setup_file_logging`), if one is open."""
    package_logger = logging.getLogger("torchrl_mcmc")
    for handler in [h for h in package_logger.handlers if h.get_name() == _RUN_LOG_HANDLER]:
        package_logger.removeHandler(handler)
        handler.close()


def make_metrics_logger(cfg: DictConfig, run: OpenRun, frames: int) -> Logger | None:
    """The run's TorchRL logger (``cfg.logger``) under ``<run dir>/logs``.

    A resume's goes on from its saved state, unless the resume changed the logger settings (a
    new logger then), and a CSV logger's rows past ``frames``, the checkpoint the run resumes
    from, are dropped (:func:`drop_logged_rows_after`).
    """
    logger_state = None
    if run.resumed is not None and not any(k.startswith("logger.") for k in run.resumed.changed):
        logger_state = run.state["logger"]
    metrics_logger = get_logger(
        cfg.logger.backend,
        logger_name=str(run.path / "logs"),
        experiment_name=cfg.logger.exp_name,
        state_dict=logger_state,
        **(
            {"wandb_kwargs": {"project": cfg.logger.project}}
            if cfg.logger.backend == "wandb"
            else {}
        ),
    )
    if run.state is not None and isinstance(metrics_logger, CSVLogger):
        # The run logged past its checkpoint before it stopped; it logs those steps again now.
        drop_logged_rows_after(Path(metrics_logger.experiment.log_dir) / "scalars", frames)
    return metrics_logger


def drop_logged_rows_after(scalars_dir: Path, step: int) -> None:
    """Removes from a CSV logger's scalar files (``<name>.csv``, rows ``step,value``) every row
    past ``step``, the checkpoint a run resumes from, and a last row cut short by a kill; each
    file is rewritten atomically. The resumed run logs those steps again: without this they
    would appear twice."""
    for path in sorted(scalars_dir.rglob("*.csv")):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and not _logged_after(line, step)]
        if len(kept) < len(lines):
            atomic_write(path, lambda f, rows=kept: f.write("".join(rows).encode()))
            logger.info(
                "resume: %s: dropped %d rows logged after frame %d",
                path.relative_to(scalars_dir),
                len(lines) - len(kept),
                step,
            )


def _logged_after(line: str, step: int) -> bool:
    try:
        return int(line.split(",", 1)[0]) > step
    except ValueError:
        return False  # not a row the logger wrote: left alone


@contextlib.contextmanager
def console_logs_above(bar: tqdm) -> Iterator[None]:
    """While ``bar`` shows, console log lines (ours through the root logger, and TorchRL's own
    coloured handler, which does not propagate) are written above it with ``tqdm.write``
    instead of into its line. Loggers without a console handler are left as they are."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    if bar.disable:
        yield
        return
    loggers = [
        log
        for log in (logging.getLogger(), logging.getLogger("torchrl"))
        if any(
            isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
            for h in log.handlers
        )
    ]
    with logging_redirect_tqdm(loggers=loggers, tqdm_class=type(bar)):
        yield
