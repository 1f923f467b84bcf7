"""Errors that more than one layer raises (each module keeps its own otherwise)."""


class InputSizeError(ValueError):
    """An input size a model cannot take."""


def check_input_size(height: int, width: int, batch: int = 1) -> None:
    if height < 1 or width < 1 or batch < 1:
        raise InputSizeError(f"input size and batch must be positive, got {height}x{width}, batch {batch}")


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept as it was."""
