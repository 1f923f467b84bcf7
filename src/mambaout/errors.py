"""Errors that more than one layer raises (each module keeps its own otherwise)."""


class InputSizeError(ValueError):
    """An input size a model cannot take."""


def check_input_size(height: int, width: int, batch: int = 1) -> None:
    if height < 1 or width < 1 or batch < 1:
        raise InputSizeError(f"input size and batch must be positive, got {height}x{width}, batch {batch}")


def check_patch_multiple(height: int, width: int, patch_size: int) -> None:
    if height % patch_size or width % patch_size:
        raise InputSizeError(
            f"input size {height}x{width} is not divisible by the patch size {patch_size}; "
            f"use a multiple of {patch_size} in both dimensions"
        )


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept as it was."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGUSR1 stopped a run after its current step and a checkpoint; `exit_code` is the shell's
    convention for a process ended by that signal (128 + its number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class DataLoaderWorkerError(RuntimeError):
    """A data-loading worker process died (the out-of-memory killer, a crash in a decoder)."""
