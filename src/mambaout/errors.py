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
