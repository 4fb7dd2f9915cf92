"""What the terminal shows: short stage lines and one progress bar per long phase, unless ``verbose=true``.

:func:`configure` runs once per process, before the first stage. Quiet (the default) it silences what
third-party libraries print that says nothing about this run: Python warnings (deita reports through
logging; a library's FutureWarning about a deprecated argument is often attributed to the deita line that
called it), DeepSpeed's "Setting accelerator to CPU" notice, the per-load and per-save bars of
transformers ("Loading weights", "Writing model shards"), the per-map bars of ``datasets``, and the
training loop's printed log dicts (the training bar shows the loss instead, :func:`training_progress`).
``verbose=true`` leaves all of them as the libraries print them.
Log lines keep their meaning and level; they lose the date and logger name in quiet mode.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISY_LOGGERS = ("sentence_transformers", "wandb", "datasets", "httpx", "filelock", "urllib3", "accelerate",
                 "torch.distributed")
"""Libraries whose INFO lines describe their internals; quiet mode shows their warnings and errors only."""

QUIET_LIBRARY_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
"""Quiet mode's settings for transformers, datasets and huggingface_hub (errors only, no per-load, per-save or
per-map bars), as the environment each reads when first imported: a run that never uses them (a select stage
without a model) does not import them to set them (~0.6 s of each such process's start)."""


class _DropDeepSpeedNotices(logging.Filter):
    """DeepSpeed's accelerator auto-detection notice (a WARNING on every CPU import) is not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "accelerator" not in record.getMessage().lower() or record.levelno >= logging.ERROR


def configure(verbose: bool, trains: bool = False) -> None:
    """Set up the console for a run (see the module doc); ``verbose`` keeps every library's own output.
    ``trains``: a training stage will run (its W&B integration prints a notice when first imported)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if verbose:
        return
    warnings.filterwarnings("ignore")  # deita itself warns through logging, which stays on
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # processes this one starts (accelerate re-launch)
    logging.getLogger("DeepSpeed").addFilter(_DropDeepSpeedNotices())  # before deepspeed's first import
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    short_log_lines(verbose)
    os.environ.update(QUIET_LIBRARY_ENV)
    _quiet_imported_libraries()
    if trains and os.environ.get("WANDB_MODE") == "offline":  # it prints "[INFO] Running in WANDB offline mode"
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            import transformers.integrations.integration_utils  # noqa: F401


def _quiet_imported_libraries() -> None:
    """:data:`QUIET_LIBRARY_ENV`'s settings, made by call for a library imported before :func:`configure`
    (it read its environment then)."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()


def short_log_lines(verbose: bool) -> None:
    """``HH:MM:SS message`` (WARNING/ERROR keep their level) on the console handlers Hydra installed, on the
    main rank; a launched job's other ranks log to their ``logs/rank<N>.log`` only (:mod:`deita.logs`), so N
    ranks do not print each line N times. ``verbose`` keeps Hydra's full format (date, logger name, level)
    and every rank's console."""
    if verbose:
        return
    other_rank = int(os.environ.get("RANK", 0)) > 0

    class Short(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            return f"{self.formatTime(record, '%H:%M:%S')} {prefix}{record.getMessage()}"

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(Short())
            if other_rank:
                handler.setLevel(logging.CRITICAL + 1)


BAR_METRICS = ("loss", "rewards/accuracies", "rewards/margins")
"""Logged metrics a training bar shows as its postfix in quiet mode."""


def training_progress(trainer, stage: str, verbose: bool) -> None:
    """Give ``trainer`` one bar named after ``stage`` with the last loss on it, instead of printed log dicts
    (quiet mode only; ``verbose`` keeps transformers' own progress output)."""
    if verbose:
        return
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        """transformers' ProgressCallback with the stage name on the bar and the loss as its postfix."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, desc=stage, dynamic_ncols=True)
            self.current_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: f"{v:.4g}" for k, v in (logs or {}).items() if k in BAR_METRICS and isinstance(v, (int, float))}
            if self.training_bar is not None and shown:
                self.training_bar.set_postfix(shown, refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StageProgress())
