"""`make quickstart`: generate the shapes dataset, train a small MambaOut on it, validate, predict, report.

Everything runs on the CPU in a few minutes with nothing to download. Training goes through the same code as
`mambaout train` (the options come from configs/quickstart.yaml), so this is also a check that the real data path,
checkpoints and logs work on this machine. Run it again and it resumes where it stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.synthetic import write_dataset
from ..engine.config import read_config_file
from ..tasks.classification.config import TrainConfig
from ..tasks.classification.evaluate import EvalResult

CONFIG = "quickstart.yaml"


@dataclass(frozen=True)
class QuickstartReport:
    data_dir: Path
    run_dir: Path
    checkpoint: Path
    validation: EvalResult
    train_images_per_second: float
    predictions: list[tuple[str, str, str, float]]  # image, true class, predicted class, probability

    def format(self) -> str:
        hits = sum(truth == guess for _, truth, guess, _ in self.predictions)
        v = self.validation
        lines = [
            "",
            "quickstart report",
            f"  data        {self.data_dir}  (generated: 10 classes of drawn shapes and textures)",
            f"  validation  top-1 {v.top1:.1f}%  top-5 {v.top5:.1f}%  loss {v.loss:.3f}  on {v.images} images "
            f"(chance: 10%)",
            f"  speed       training {self.train_images_per_second:.1f} images/s, validation "
            f"{v.images_per_second:.1f} images/s",
            f"  held-out    {hits} of {len(self.predictions)} predicted correctly:",
        ]
        for image, truth, guess, probability in self.predictions:
            mark = "ok " if truth == guess else "MISS"
            lines.append(f"    {mark} {Path(image).name:<24} {truth:<10} -> {guess} ({probability:.0%})")
        lines += [
            f"  checkpoint  {self.checkpoint}",
            f"  logs        {self.run_dir}/summary.csv, curves.png, tensorboard/ (tensorboard --logdir {self.run_dir})",
            f"  next        mambaout predict mambaout_femto IMAGE --checkpoint {self.checkpoint}",
        ]
        return "\n".join(lines)


def quickstart_options(**changes: Any) -> dict[str, Any]:
    """The packaged quickstart recipe, with `changes` applied (tests shorten it)."""
    with resources.as_file(resources.files("mambaout.configs") / CONFIG) as path:
        options = read_config_file(path, TrainConfig)
    options.update(changes)
    return options


def run_quickstart(
    out: str | Path,
    train_per_class: int = 300,
    val_per_class: int = 50,
    test_per_class: int = 1,
    size: int = 32,
    **changes: Any,
) -> QuickstartReport:
    from ..factory import create_model
    from ..tasks.classification.predict import predict_files
    from ..tasks.classification.task import train
    from ..tasks.classification.validate import validate

    out = Path(out)
    data = out / "shapes"
    if not (data / "train").is_dir():
        print(f"generating the shapes dataset in {data} ...", flush=True)
        write_dataset(data, train_per_class, val_per_class, size=size, test_per_class=test_per_class)
    options = quickstart_options(data_dir=str(data), output=str(out / "runs"), experiment="quickstart",
                                 img_size=size, resume="auto", **changes)
    print(f"\n$ mambaout train {data} -c {CONFIG} --output {out / 'runs'} --experiment quickstart --resume auto")
    result = train(TrainConfig(**options))
    checkpoint = result.output_dir / "best.pth"

    print(f"\n$ mambaout validate {data} --model {options['model']} --checkpoint {checkpoint}")
    validation = validate(data, options["model"], checkpoint=checkpoint, batch_size=64, workers=0,
                          input_size=(size, size))
    print(validation.format())

    images = sorted((data / "test").glob("*/*.png"))
    images = random.Random(0).sample(images, min(5, len(images)))
    model = create_model(options["model"], checkpoint=checkpoint)
    predicted, _ = predict_files(model, images, topk=1, input_size=(size, size))
    predictions = [(p.path, Path(p.path).parent.name, p.top[0].label, p.top[0].probability) for p in predicted]
    return QuickstartReport(data, result.output_dir, checkpoint, validation, result.train_rate,
                            predictions)
