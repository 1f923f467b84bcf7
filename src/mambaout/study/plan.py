"""What a study trains: its settings, one `train` run per (model, seed), and the checks made before any training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.flops import model_flops
from ..data.folder import DatasetError, find_classes
from ..data.sizes import height_width
from ..engine.config import ConfigError, check_options, checked_size
from ..errors import MambaoutError
from ..recipes import Recipe, get_recipe
from ..registry import get_model_spec, recipe_for
from ..tasks.classification.config import TrainConfig
from .presets import Comparison, GeneratedData, get_preset

OWN = "own"
#: train options the study sets for each run itself (its own flags or the run's identity)
STUDY_SET = ("data_dir", "model", "recipe", "seed", "output", "experiment", "resume", "epochs", "img_size")


class StudyError(MambaoutError, ValueError):
    """A study that cannot run as asked (or stopped on the way), with what to do about it."""

    exit_code = 12


@dataclass
class StudyConfig:
    """A study: every model trained `seeds` times on `data_dir` with `recipe` ('own': each model its authors')."""

    data_dir: str | None
    models: list[str]
    recipe: str = OWN
    seeds: int = 1
    first_seed: int = 42
    epochs: int | None = None  # None: each recipe's; else warmup and cooldown shrink with it (unless set)
    img_size: int | list[int] = 224  # one number (a square) or [H, W]
    output: str = "output/study"
    resume: str | None = None  # 'auto': continue the study in `output`
    jobs: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # train options every run takes
    comparisons: tuple[Comparison, ...] | None = None  # None: every other model against the first
    preset: str | None = None
    bench_batch: int = 32
    bench_repeats: int = 5
    bench_precision: str | None = None  # None: fp32 on a CPU, bf16 on a GPU
    generated_data: GeneratedData | None = None  # written to <output>/shapes when no data_dir is given

    @classmethod
    def from_preset(cls, name: str | None, **given: Any) -> StudyConfig:
        """A study from a preset's models, recipe, seeds, epochs, size and options; what `given` sets wins (its
        `options` are added to the preset's)."""
        if name is None:
            return cls(**given)
        try:
            preset = get_preset(name)
        except KeyError as e:
            raise StudyError(str(e)) from None
        settings: dict[str, Any] = dict(
            models=preset.models, recipe=preset.recipe, seeds=preset.seeds, epochs=preset.epochs,
            img_size=preset.img_size, comparisons=preset.comparisons, preset=preset.name,
            generated_data=preset.generated_data,
        )
        options = {**preset.options, **given.pop("options", {})}
        if given.get("models"):  # models of the user's choice: the preset's pairs no longer apply
            settings["comparisons"] = None
        return cls(**settings | given, options=options)

    def __post_init__(self) -> None:
        self.models = list(dict.fromkeys(self.models))
        try:
            self.img_size = checked_size(self.img_size, "--img-size")
        except ConfigError as e:
            raise StudyError(str(e)) from None
        if self.comparisons is None:
            self.comparisons = (Comparison(self.models[0], tuple(self.models[1:])),) if len(self.models) > 1 else ()
        checks = [
            (bool(self.models), "give the models (--models) or a --preset"),
            (bool(self.data_dir) or self.generated_data is not None,
             "give the dataset folder (ImageNet's layout: DATA/train/<class>/, DATA/val/<class>/)"),
            (self.seeds >= 1, "--seeds must be at least 1"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.jobs >= 1, "--jobs must be at least 1"),
            (self.resume in (None, "auto"), "a study resumes with --resume auto (each run from its newest checkpoint)"),
            (self.bench_batch >= 1 and self.bench_repeats >= 1, "--bench-batch and --bench-repeats must be positive"),
        ]
        check_options(checks, StudyError)
        taken = sorted(set(self.options) & set(STUDY_SET))
        if taken:
            raise StudyError(f"the study sets {', '.join(taken)} for each run itself: use its own flags")

    @property
    def root(self) -> Path:
        return Path(self.output)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def plan(self) -> dict[str, Any]:
        """What decides the runs' results (a resumed study must have the same)."""
        keys = ("data_dir", "models", "recipe", "seeds", "first_seed", "epochs", "img_size", "options")
        return {key: _plain(getattr(self, key)) for key in keys} | {"data_dir": str(Path(self.data_dir).resolve())}


@dataclass(frozen=True)
class Run:
    """One `train` run of the study: its place in the order, its options, and the folder they give."""

    index: int
    model: str
    seed: int
    options: dict[str, Any]  # TrainConfig keyword arguments

    @property
    def name(self) -> str:
        return f"{self.model}-seed{self.seed}"

    @property
    def directory(self) -> Path:
        return Path(self.options["output"]) / self.name

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.options)


@dataclass(frozen=True)
class ModelFacts:
    """What the study measures of a model before training it: params and MACs at the study's input."""

    model: str
    family: str
    params: int
    macs: int


def study_recipe(config: StudyConfig, model: str) -> Recipe:
    return recipe_for(model)[0] if config.recipe == OWN else get_recipe(config.recipe)


def _shortened(recipe: Recipe, epochs: int, options: dict[str, Any]) -> dict[str, Any]:
    """A recipe's warmup and cooldown shrunk in proportion to a shorter (or grown with a longer) schedule."""
    ratio = epochs / recipe.values["epochs"]
    scaled = {}
    for key in ("warmup_epochs", "cooldown_epochs"):
        if key not in options:
            scaled[key] = min(epochs, round(recipe.values[key] * ratio))
    return scaled


def make_runs(config: StudyConfig) -> list[Run]:
    """Every (model, seed) run in training order (seed by seed, so that an early stop has every model once)."""
    runs = []
    for k in range(config.seeds):
        for model in config.models:
            options = dict(config.options)
            if config.epochs is not None:
                options.update(_shortened(study_recipe(config, model), config.epochs, options))
                options["epochs"] = config.epochs
            options.update(
                data_dir=str(config.data_dir), model=model, seed=config.first_seed + k, img_size=config.img_size,
                recipe=None if config.recipe == OWN else config.recipe, output=str(config.runs_dir),
                experiment=f"{model}-seed{config.first_seed + k}", resume="auto",
            )
            runs.append(Run(len(runs), model, config.first_seed + k, options))
    return runs


def check_study(config: StudyConfig, runs: list[Run]) -> tuple[list[str], dict[str, ModelFacts]]:
    """Everything that can be known wrong before training: names, options, data, input size. Returns the classes
    and each model's params and MACs at the study's input size."""
    for model in config.models:
        try:
            get_model_spec(model)
        except KeyError as e:
            raise StudyError(str(e)) from None
    if config.recipe != OWN:
        try:
            get_recipe(config.recipe)
        except KeyError as e:
            raise StudyError(f"--recipe: {e} (or 'own': each model its authors' recipe)") from None
    for run in runs:
        try:
            run.train_config()
        except ConfigError as e:
            raise StudyError(f"{run.model}: {e}") from None
    classes = _check_data(config.data_dir, runs[0].train_config())
    facts = {}
    for model in config.models:
        report = model_flops(model, size=height_width(config.img_size), num_classes=len(classes))
        facts[model] = ModelFacts(model, get_model_spec(model).family, report.params, report.macs)
    return classes, facts


def _check_data(data_dir: str, train_config: TrainConfig) -> list[str]:
    if not train_config.val_split:
        raise StudyError("a study compares validation accuracy: it needs a validation split (--val-split)")
    classes = find_classes(data_dir, train_config.train_split)
    if len(classes) < 2:
        raise DatasetError(f"{data_dir}/{train_config.train_split} holds {len(classes)} class folder: a "
                           "classification study needs at least two classes")
    val_classes = find_classes(data_dir, train_config.val_split)
    if set(val_classes) - set(classes):
        raise DatasetError(f"classes in {train_config.val_split}/ but not in {train_config.train_split}/: "
                           f"{', '.join(sorted(set(val_classes) - set(classes))[:5])}")
    return classes


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
