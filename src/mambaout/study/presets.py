"""The paper's two experiments as data: which models a study sets against which, and how it trains them.

`hypothesis1` is Table 1 of the MambaOut paper read by size: each MambaOut against the visual Mambas of about
its parameters and MACs. `causal` is Figure 3(b): each DeiT against its twin with causal attention. `smoke` runs
the whole study on the generated shapes dataset in minutes on a CPU (a check of the pipeline, not a result).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._lookup import lookup
from ..errors import MambaoutError


@dataclass(frozen=True)
class Comparison:
    """One reference model and the models the study sets against it (differences are reported against it)."""

    reference: str
    others: tuple[str, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return (self.reference, *self.others)


@dataclass(frozen=True)
class GeneratedData:
    """The shapes dataset a preset writes when no DATA is given (`data.synthetic.write_dataset`)."""

    train_per_class: int
    val_per_class: int
    size: int


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    comparisons: tuple[Comparison, ...]
    recipe: str = "own"
    seeds: int = 1
    epochs: int | None = None  # None: each recipe's own
    img_size: int = 224
    options: dict[str, Any] = field(default_factory=dict)  # train options every run takes
    generated_data: GeneratedData | None = None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(name for c in self.comparisons for name in c.models))


class UnknownPresetError(MambaoutError, KeyError):

    exit_code = 3
    def __str__(self) -> str:
        return str(self.args[0])


# Table 1 of the paper, by size: (MambaOut, the visual Mambas of about its params and MACs).
_TINY_MAMBAS = ("vim_tiny", "local_vim_tiny", "plainmamba_l1")
HYPOTHESIS1_GROUPS: dict[str, tuple[Comparison, ...]] = {
    "femto": (Comparison("mambaout_femto", _TINY_MAMBAS), Comparison("mambaout_kobe", _TINY_MAMBAS)),
    "tiny": (Comparison("mambaout_tiny", ("vmamba_tiny", "vmamba2_tiny", "local_vmamba_tiny", "vim_small",
                                          "local_vim_small", "plainmamba_l2")),),
    "small": (Comparison("mambaout_small", ("vmamba_small", "vmamba2_small_s2l5", "local_vmamba_small",
                                            "plainmamba_l3")),),
    "base": (Comparison("mambaout_base", ("vmamba_base", "vmamba2_base_s2l5", "vim_base")),),
}
CAUSAL_GROUPS: dict[str, tuple[Comparison, ...]] = {
    size: (Comparison(f"deit_{size}", (f"deit_{size}_causal",)),) for size in ("tiny", "small", "base")
}

# What a few-minute CPU run needs that an ImageNet recipe does not: no warmup (there are only 4 epochs), no heavy
# augmentation or EMA on 1,500 images of 32x32, one small lr for every model (quickstart's). It checks the pipeline
# and shows the report; the comparison itself is what the other presets run.
SMOKE_OPTIONS: dict[str, Any] = dict(
    batch_size=32, workers=0, lr=5e-4, warmup_epochs=0, cooldown_epochs=0, sched_on_updates=True, aa="none",
    scale=[0.6, 1.0], reprob=0.0, mixup=0.0, cutmix=0.0, aug_repeats=0, drop_path=0.0, smoothing=0.1,
    model_ema_decay=0.0, best_by="model", release_weights="model", amp="fp32", checkpoint_hist=1,
)


def _presets() -> dict[str, Preset]:
    presets = {
        "hypothesis1": Preset(
            "hypothesis1", "MambaOut against the visual Mambas of its size (the paper's Table 1, Hypothesis 1)",
            tuple(c for group in HYPOTHESIS1_GROUPS.values() for c in group),
        ),
        "causal": Preset(
            "causal", "each DeiT against its causal-attention twin (the paper's Figure 3(b))",
            tuple(c for group in CAUSAL_GROUPS.values() for c in group),
        ),
        "smoke": Preset(
            "smoke", "the whole study in minutes on a CPU: both experiments' smallest pairs on generated shapes",
            (Comparison("mambaout_femto", ("vim_tiny",)), Comparison("deit_tiny", ("deit_tiny_causal",))),
            seeds=2, epochs=4, img_size=32, options=SMOKE_OPTIONS,
            generated_data=GeneratedData(train_per_class=150, val_per_class=20, size=32),
        ),
    }
    for size, group in HYPOTHESIS1_GROUPS.items():
        presets[f"hypothesis1-{size}"] = Preset(
            f"hypothesis1-{size}", f"MambaOut-{size.capitalize()} against the visual Mambas of its size", group
        )
    for size, group in CAUSAL_GROUPS.items():
        presets[f"causal-{size}"] = Preset(f"causal-{size}", f"DeiT-{size.capitalize()} against its causal twin",
                                           group)
    return presets


PRESETS = _presets()


def get_preset(name: str) -> Preset:
    return lookup(PRESETS, name, "study preset", "mambaout study --help", UnknownPresetError)
