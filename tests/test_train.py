"""Training: outputs, exact resume after SIGKILL, torchrun DDP, corrupt files, divergence, config files."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import cli_flags, console_script
from mambaout.checkpoints import CheckpointError
from mambaout.cli import main
from mambaout.data.synthetic import write_dataset
from mambaout.engine.checkpointing import CheckpointKeeper, find_resume_checkpoint, load_training_checkpoint
from mambaout.engine.config import ConfigError, read_config_file
from mambaout.errors import TrainingDivergedError
from mambaout.tasks.classification import task as train_module
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import train

# a tiny run: mambaout_test at 32 px, no augmentation unless a test asks for it
QUICK = dict(
    model="mambaout_test",
    img_size=32,
    batch_size=8,
    workers=0,
    warmup_epochs=0,
    cooldown_epochs=0,
    lr=1e-3,
    no_aug=True,
    smoothing=0.0,
    drop_path=0.0,
    log_interval=1,
)



@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), train_per_class=4, val_per_class=2, size=32)


def test_a_short_run_lowers_the_loss_and_writes_every_output(shapes, tmp_path):
    result = train(TrainConfig(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=6, **QUICK))
    out = tmp_path / "run"
    assert result.output_dir == out
    for name in ("args.yaml", "summary.csv", "curves.png", "last.pth", "best.pth", "checkpoint-5.pth"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.05
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["model"] == "mambaout_test" and args["lr_used"] == pytest.approx(1e-3)
    # the checkpoint is a training state and also a weights file that create_model and predict read
    state = load_training_checkpoint(out / "last.pth")
    assert state["epoch"] == 5 and state["class_names"] == sorted(os.listdir(shapes / "train"))
    assert {"optimizer", "scheduler", "rng", "args", "best"} <= set(state)
    best = state["best"]
    assert best["metric"] == max(float(r["val_top1"]) for r in rows)
    from mambaout import create_model

    model = create_model("mambaout_test", checkpoint=out / "best.pth")
    assert model.pretrained_cfg["label_names"] == state["class_names"]


def test_history_is_bounded(shapes, tmp_path):
    train(TrainConfig(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=4, checkpoint_hist=2,
                      max_steps_per_epoch=1, **QUICK))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*.pth")) == ["checkpoint-2.pth",
                                                                                    "checkpoint-3.pth"]


def test_sigkill_at_a_random_step_then_resume_ends_with_the_uninterrupted_weights(shapes, tmp_path):
    # the official augmentation (RandAugment, mixup/cutmix, random erasing, drop path) and EMA stay on: their random
    # states must be restored too
    options = dict({k: v for k, v in QUICK.items() if k != "no_aug"}, smoothing=0.1, drop_path=0.1, model_ema_decay=0.9)
    options.update(epochs=6, max_steps_per_epoch=4, deterministic=True, experiment="run")
    command = [console_script(), "train", str(shapes), *cli_flags(options)]
    subprocess.run([*command, "--output", str(tmp_path / "whole")], check=True, capture_output=True)

    killed_out = tmp_path / "killed"
    process = subprocess.Popen([*command, "--output", str(killed_out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = killed_out / "run" / "last.pth"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in the following epochs: mid-step, mid-checkpoint, ...
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([*command, "--output", str(killed_out), "--resume", "auto"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    whole = load_training_checkpoint(tmp_path / "whole" / "run" / "last.pth")
    again = load_training_checkpoint(killed_out / "run" / "last.pth")
    assert again["epoch"] == whole["epoch"] == 5
    for key in ("model", "model_ema"):
        assert whole[key].keys() == again[key].keys()
        for name, tensor in whole[key].items():
            assert torch.equal(tensor, again[key][name]), f"{key}.{name} differs after resume"
    summary = list(csv.DictReader((killed_out / "run" / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in summary] == list(range(6))


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `except Exception` clauses."""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_next_to_the_checkpoint_write_loses_no_summary_row(shapes, tmp_path, monkeypatch, when):
    config = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=3, max_steps_per_epoch=1,
                  **QUICK)
    save = CheckpointKeeper.save

    def killed_at_epoch_1(self, state, epoch, is_best):
        if epoch == 1 and when == "before":
            raise _Killed
        path = save(self, state, epoch, is_best)
        if epoch == 1:
            raise _Killed
        return path

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointKeeper, "save", killed_at_epoch_1)
        with pytest.raises(_Killed):
            train(TrainConfig(**config))
    train(TrainConfig(resume="auto", **config))
    summary = list(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in summary] == [0, 1, 2]


def test_resume_auto_never_picks_a_damaged_checkpoint(shapes, tmp_path):
    train(TrainConfig(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=3, max_steps_per_epoch=1,
                      **QUICK))
    out = tmp_path / "run"
    last = out / "last.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as if cut off mid-write (not atomic)
    (out / "checkpoint-9.pth").write_bytes(b"")  # an empty file that looks newest
    (out / ".last.pth.abc.tmp").write_bytes(b"partial")  # an interrupted atomic write
    with pytest.raises(CheckpointError):
        load_training_checkpoint(last)
    path, state = find_resume_checkpoint(out)
    assert path.name == "checkpoint-2.pth" and state["epoch"] == 2


def test_an_existing_run_is_not_overwritten_and_resume_auto_starts_fresh_in_an_empty_folder(shapes, tmp_path):
    config = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=1, max_steps_per_epoch=1)
    result = train(TrainConfig(**config, resume="auto", **QUICK))
    assert result.epochs_run == 1
    with pytest.raises(ConfigError, match="--resume auto"):
        train(TrainConfig(**config, **QUICK))
    again = train(TrainConfig(**config, resume="auto", **QUICK))  # everything done: nothing left to run
    assert again.epochs_run == 0


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(shapes, tmp_path):
    options = dict(QUICK, epochs=2, deterministic=True, experiment="run", val_batch_size=3)
    one = [console_script(), "train", str(shapes), *cli_flags(dict(options, batch_size=8))]
    subprocess.run([*one, "--output", str(tmp_path / "one")], check=True, capture_output=True)
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "mambaout.cli", "train", str(shapes), *cli_flags(dict(options, batch_size=4))]
    done = subprocess.run([*two, "--output", str(tmp_path / "two")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_training_checkpoint(tmp_path / "one" / "run" / "last.pth")
    b = load_training_checkpoint(tmp_path / "two" / "run" / "last.pth")
    assert b["args"]["batch_size"] == 4 and len(b["rng"]) == 2
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=2e-5, msg=name)
    rows_a = list(csv.DictReader((tmp_path / "one" / "run" / "summary.csv").read_text().splitlines()))
    rows_b = list(csv.DictReader((tmp_path / "two" / "run" / "summary.csv").read_text().splitlines()))
    for ra, rb in zip(rows_a, rows_b, strict=True):  # every validation image counted once across the two ranks
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-4)
        assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=1e-3)


def test_corrupt_files_are_skipped_and_listed(tmp_path):
    data = write_dataset(tmp_path / "data", train_per_class=4, val_per_class=2, size=32)
    classes = sorted(os.listdir(data / "train"))
    planted = {
        data / "train" / classes[0] / "text.jpg": b"this is not an image",
        data / "train" / classes[1] / "empty.png": b"",
        data / "val" / classes[2] / "text.png": b"GIF89a nonsense",
    }
    good = next((data / "train" / classes[2]).glob("*.png")).read_bytes()
    planted[data / "train" / classes[2] / "truncated.png"] = good[: len(good) // 2]
    for path, content in planted.items():
        path.write_bytes(content)
    result = train(TrainConfig(data_dir=str(data), output=str(tmp_path), experiment="run", epochs=1, **QUICK))
    listed = (tmp_path / "run" / "skipped.txt").read_text()
    for path in planted:
        if "train" in path.parts:
            assert str(path) in listed
    assert result.final_metrics["val_skipped"] == 1  # the val file, excluded from the accuracy
    row = next(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert int(row["train_skipped"]) == 3 and int(row["val_skipped"]) == 1


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(shapes, tmp_path, monkeypatch):
    config = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", max_steps_per_epoch=1, **QUICK)
    train(TrainConfig(epochs=1, **config))
    last = tmp_path / "run" / "last.pth"
    before = last.read_bytes()

    def nan_loss(config, mixup):
        return lambda logits, targets: logits.sum() * float("nan")

    monkeypatch.setattr(train_module, "_train_loss", nan_loss)
    with pytest.raises(TrainingDivergedError, match="nan at epoch 1"):
        train(TrainConfig(epochs=2, resume="auto", **config))
    assert last.read_bytes() == before


def test_config_file_sets_defaults_and_flags_win(shapes, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**QUICK, "epochs": 1, "max-steps-per-epoch": 1, "lr": 1e-3}))
    assert read_config_file(config, TrainConfig)["max_steps_per_epoch"] == 1
    code = main(["train", str(shapes), "-c", str(config), "--lr", "5e-4", "--output", str(tmp_path),
                 "--experiment", "run"])
    assert code == 0
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert args["lr"] == 5e-4 and args["epochs"] == 1 and args["model"] == "mambaout_test"

    config.write_text("lr: 1e-3\nlearning_rate: 2\n")
    assert main(["train", str(shapes), "-c", str(config)]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("augment", [False, True])
def test_img_size_h_w_trains_at_that_shape_and_names_the_run_with_it(shapes, tmp_path, monkeypatch, augment):
    seen: list[tuple[int, ...]] = []
    loss = train_module.ClassificationTask.loss

    def recording(self, model, batch):
        seen.append(tuple(batch.inputs.shape))
        return loss(self, model, batch)

    monkeypatch.setattr(train_module.ClassificationTask, "loss", recording)
    options = dict({k: v for k, v in QUICK.items() if k != "no_aug" or not augment}, img_size=[32, 48], epochs=1,
                   max_steps_per_epoch=2)
    assert main(["train", str(shapes), *cli_flags(options), "--output", str(tmp_path)]) == 0
    out = tmp_path / "mambaout_test-32x48"
    assert yaml.safe_load((out / "args.yaml").read_text())["img_size"] == [32, 48]
    assert seen and all(shape[1:] == (3, 32, 48) for shape in seen)
    with pytest.raises(ConfigError, match="--img-size"):
        TrainConfig(img_size=[32, 48, 64])


def test_bad_options_fail_clearly(shapes, tmp_path, capsys):
    assert main(["train", str(shapes), "--model", "mambaout_tiniest", "--output", str(tmp_path)]) == 2
    assert "mambaout_tiny" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nowhere"), "--model", "mambaout_test", "--output", str(tmp_path)]) == 5
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="even"):
        train(TrainConfig(data_dir=str(shapes), output=str(tmp_path), **dict(QUICK, no_aug=False, batch_size=7)))
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="fp8")
