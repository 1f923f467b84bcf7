"""`MambaoutError`, the base of everything the package raises on purpose, and the errors more than one layer raises
(each module keeps its own otherwise, as a subclass of `MambaoutError`).

Each kind has a stable exit status on the command line (`mambaout ...`), so scripts and schedulers can tell them
apart; the message is printed without a traceback (`--debug` shows it):

    2   bad options or configuration (ConfigError, UsageError)
    3   an unknown name: model, recipe, study preset (UnknownModelError, UnknownRecipeError, UnknownPresetError)
    4   a checkpoint that cannot be read, does not fit, or is not available (CheckpointError and its subclasses)
    5   bad data: a dataset folder that cannot be used, an unreadable image (DatasetError, ImageReadError)
    6   an input size a model cannot take (InputSizeError)
    7   a device that is not there (DeviceError)
    8   training diverged: a NaN or infinite loss (TrainingDivergedError)
    9   a data-loading worker died (DataLoaderWorkerError)
    10  an output that cannot be written: full disk, read-only or unwritable folder (CheckpointWriteError)
    11  export or ONNX Runtime failed (ExportError, OnnxModelError)
    12  a command's own failure: benchmark, ERF, demo, study (BenchmarkError, ERFError, DemoError, StudyError)
    128 + N   stopped by signal N (SIGTERM: 143, SIGUSR1: 138) after writing a checkpoint (TrainingInterrupted)
"""


class MambaoutError(Exception):
    """Base of the errors mambaout raises on purpose; `exit_code` is the command line's exit status for it."""

    exit_code: int = 2


class InputSizeError(MambaoutError, ValueError):
    """An input size a model cannot take."""

    exit_code = 6


def check_input_size(height: int, width: int, batch: int = 1) -> None:
    if height < 1 or width < 1 or batch < 1:
        raise InputSizeError(f"input size and batch must be positive, got {height}x{width}, batch {batch}")


def check_patch_multiple(height: int, width: int, patch_size: int) -> None:
    if height % patch_size or width % patch_size:
        raise InputSizeError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"use a multiple of {patch_size} in both dimensions"
        )


class TrainingDivergedError(MambaoutError, RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept as it was."""

    exit_code = 8


class TrainingInterrupted(MambaoutError, RuntimeError):
    """SIGTERM or SIGUSR1 stopped a run after its current step and a checkpoint; `exit_code` is the shell's
    convention for a process ended by that signal (128 + its number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class DataLoaderWorkerError(MambaoutError, RuntimeError):
    """A data-loading worker process died (the out-of-memory killer, a crash in a decoder)."""

    exit_code = 9
