"""`mambaout study`: the paper's experiment on any dataset. Many ordinary `train` runs (models x seeds, each
model's own recipe or one shared recipe), params, MACs and images/s measured side by side, and a report of the
results beside the published ImageNet numbers."""

from .plan import OWN, StudyConfig, StudyError
from .presets import PRESETS, Comparison, Preset, get_preset
from .report import StudyResult
from .runner import run_study

__all__ = ["OWN", "PRESETS", "Comparison", "Preset", "StudyConfig", "StudyError", "StudyResult", "get_preset",
           "run_study"]
