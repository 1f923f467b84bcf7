"""segment-train on the one engine with generated ADE20K-layout data: the loss falls, exact resume after SIGKILL,
2-process torchrun equals 1 process, bad files listed; segment-eval and segment on the result."""

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ONE_THREAD, cli_flags, console_script
from mambaout.cli import main
from mambaout.data.synthetic_segmentation import CLASS_NAMES, write_segmentation_dataset
from mambaout.engine.checkpointing import load_training_checkpoint
from mambaout.engine.config import ConfigError
from mambaout.tasks.segmentation.task import PolyWarmupScheduler, SegmentationConfig, train_segmenter

# the recipe at toy sizes: 64x48 images, 48-pixel crops, narrow heads, mambaout_test
QUICK = dict(
    backbone="mambaout_test",
    img_scale=[64, 48],
    crop_size=48,
    channels=16,
    aux_channels=8,
    batch_size=4,
    workers=0,
    lr=5e-3,
    warmup_iters=2,
    drop_path=0.0,
    log_interval=1,
)

# one thread per process (conftest's one_thread; the subprocesses get ONE_THREAD's environment)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_segmentation_dataset(tmp_path_factory.mktemp("seg"), train_images=16, val_images=4, size=(64, 48))


def _summary(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").read_text().splitlines()))


def test_recipe_defaults_are_the_papers():
    config = SegmentationConfig(data_dir="x")
    assert (config.lr_base, config.weight_decay, config.iterations, config.warmup_iters) == (1e-4, 0.01, 160_000, 1500)
    assert config.base_batch_size == 16 and config.resolved_lr(1) == 1e-4  # batch 16 on one process
    assert (config.crop_size, list(config.img_scale), list(config.ratio_range)) == (512, [2048, 512], [0.5, 2.0])
    assert (config.cat_max_ratio, config.flip_prob, config.eval_stride, config.aux_weight) == (0.75, 0.5, 341, 0.4)
    assert config.resolved_drop_path() == 0.3 and config.eval_metric == "mIoU"


def test_poly_schedule_with_warmup_is_mmcvs():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = PolyWarmupScheduler(optimizer, t_total=160_000, warmup_t=1500, warmup_ratio=1e-6)
    lrs = {}
    for t in (0, 750, 1500, 80_000, 160_000):
        scheduler.step_update(t)
        lrs[t] = optimizer.param_groups[0]["lr"]
    poly = {t: 1e-4 * (1 - t / 160_000) for t in lrs}
    assert lrs[0] == pytest.approx(poly[0] * 1e-6)
    assert lrs[750] == pytest.approx(poly[750] * (1 - 0.5 * (1 - 1e-6)))
    assert lrs[1500] == pytest.approx(poly[1500]) and lrs[80_000] == pytest.approx(5e-5) and lrs[160_000] == 0.0


def test_a_short_run_lowers_the_loss_then_segment_eval_and_segment_work(data, tmp_path, capsys):
    result = train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path), experiment="run",
                                                iterations=60, iters_per_epoch=20, **QUICK))
    out = tmp_path / "run"
    rows = _summary(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and result.epochs_run == 3
    assert float(rows[-1]["train_loss"]) < 0.9 * float(rows[0]["train_loss"])
    assert 0 < result.best_metric <= 1 and {"val_mIoU", "val_mAcc", "val_aAcc"} <= set(rows[0])
    assert {"last.pth", "best.pth", "args.yaml"} <= {p.name for p in out.iterdir()}
    assert float(rows[1]["lr"]) > float(rows[2]["lr"])  # poly decay over iterations

    checkpoint = str(out / "last.pth")
    reports = {}
    for mode in ("whole", "slide"):
        assert main(["segment-eval", str(data), "--checkpoint", checkpoint, "--mode", mode, "--workers", "0",
                     "--json"]) == 0
        reports[mode] = json.loads(capsys.readouterr().out)
    assert reports["whole"]["mIoU"] == pytest.approx(float(rows[-1]["val_mIoU"]))  # the engine evaluates the same way
    assert reports["whole"]["images"] == 4 and set(reports["slide"]["class_iou"]) == set(CLASS_NAMES)
    assert main(["segment-eval", str(data), "--checkpoint", checkpoint, "--multi-scale", "--flip", "--workers",
                 "0"]) == 0
    assert "mIoU" in capsys.readouterr().out

    image = next((data / "images" / "validation").iterdir())
    assert main(["segment", str(image), "--checkpoint", checkpoint, "--output", str(tmp_path / "pred")]) == 0
    labels = Image.open(tmp_path / "pred" / f"{image.stem}_labels.png")
    overlay = Image.open(tmp_path / "pred" / f"{image.stem}_overlay.png")
    assert labels.mode == "P" and labels.size == overlay.size == Image.open(image).size
    assert np.asarray(labels).max() < len(CLASS_NAMES)


def test_sigkill_then_resume_auto_ends_with_the_uninterrupted_weights(data, tmp_path):
    # CPU kernels are deterministic: the uninterrupted run can run in this process, one thread as the subprocesses
    options = dict(QUICK, iterations=12, iters_per_epoch=3, experiment="run")
    train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path / "whole"), **options))
    command = [console_script(), "segment-train", str(data), *cli_flags(options)]

    killed_out = tmp_path / "killed"
    process = subprocess.Popen([*command, "--output", str(killed_out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ONE_THREAD)
    first = killed_out / "run" / "last.pth"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in the following blocks of iterations
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([*command, "--output", str(killed_out), "--resume", "auto"], capture_output=True,
                             text=True, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = load_training_checkpoint(tmp_path / "whole" / "run" / "last.pth")
    again = load_training_checkpoint(killed_out / "run" / "last.pth")
    assert again["epoch"] == whole["epoch"] == 3
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, again["model"][name]), f"{name} differs after resume"
    assert [int(r["epoch"]) for r in _summary(killed_out / "run")] == [0, 1, 2, 3]


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path):
    # augmentation and dropout draw from each process's own random stream: off, so both runs see the same pixels.
    # SGD, not AdamW: Adam turns the rounding noise of gradients that are zero in exact arithmetic (a bias before a
    # 1x1 conv and BatchNorm) into full-size steps, which would compare noise, not DDP
    options = dict(QUICK, iterations=6, iters_per_epoch=3, experiment="run", ratio_range=[1, 1], flip_prob=0.0,
                   photometric=False, dropout=0.0, crop_size=64, opt="sgd", lr=2e-3)
    train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path / "one"), **dict(options, batch_size=4)))
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "mambaout.cli", "segment-train", str(data), *cli_flags(dict(options, batch_size=2))]
    done = subprocess.run([*two, "--output", str(tmp_path / "two")], capture_output=True, text=True,
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_training_checkpoint(tmp_path / "one" / "run" / "last.pth")
    b = load_training_checkpoint(tmp_path / "two" / "run" / "last.pth")
    assert b["args"]["batch_size"] == 2 and len(b["rng"]) == 2
    for name, tensor in a["model"].items():  # BatchNorm statistics too: the heads normalize over the global batch
        statistics = name.endswith(("running_mean", "running_var"))  # averages of features: rounding accumulates
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3 if statistics else 1e-4,
                                   atol=1e-4 if statistics else 2e-5, msg=name)
    for ra, rb in zip(_summary(tmp_path / "one" / "run"), _summary(tmp_path / "two" / "run"), strict=True):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-4)
        # the areas are summed over the ranks; rounding may flip the argmax of a pixel or two (1e-4 of mIoU each)
        assert float(ra["val_mIoU"]) == pytest.approx(float(rb["val_mIoU"]), abs=1e-3)


def test_bad_files_are_skipped_and_listed(tmp_path):
    data = write_segmentation_dataset(tmp_path / "data", train_images=8, val_images=2, size=(64, 48))
    train_images, train_labels = data / "images" / "training", data / "annotations" / "training"
    (train_images / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    Image.new("L", (64, 48)).save(train_labels / "corrupt.png")
    Image.new("RGB", (64, 48)).save(train_images / "unlabelled.jpg")
    Image.new("RGB", (64, 48)).save(train_images / "mismatch.jpg")
    Image.new("L", (32, 48)).save(train_labels / "mismatch.png")
    Image.new("RGB", (64, 48)).save(train_images / "outside.jpg")
    Image.new("L", (64, 48), color=40).save(train_labels / "outside.png")
    train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path), experiment="run", iterations=6,
                                       iters_per_epoch=6, **QUICK))
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    names = {Path(path).name: reason for path, reason in listed.items()}
    assert set(names) == {"corrupt.jpg", "unlabelled.jpg", "mismatch.jpg", "outside.png"}
    assert "not an image" in names["corrupt.jpg"] and "no label map" in names["unlabelled.jpg"]
    assert "32x48" in names["mismatch.jpg"] and "label values 39" in names["outside.png"]


def test_crops_and_strides_take_h_w_and_a_square_stays_one_number():
    config = SegmentationConfig(data_dir="x", crop_size=[48, 64])
    assert (config.crop_size, config.eval_stride) == ([48, 64], [32, 42])  # mmseg's crop_size (H, W), stride 2/3
    assert SegmentationConfig(data_dir="x", crop_size=[48, 48], eval_stride=[32]).eval_stride == 32
    with pytest.raises(ConfigError, match="--eval-stride"):
        SegmentationConfig(data_dir="x", crop_size=[48, 64], eval_stride=[50, 40])
    with pytest.raises(ConfigError, match="--crop-size"):
        SegmentationConfig(data_dir="x", crop_size=[48, 64, 80])


def test_a_rectangular_crop_trains_and_slides_with_its_own_windows(data, tmp_path, capsys):
    options = dict(QUICK, crop_size=[40, 48], iterations=3, iters_per_epoch=3)
    assert main(["segment-train", str(data), *cli_flags(options), "--output", str(tmp_path)]) == 0
    out = tmp_path / "upernet-mambaout_test-40x48"
    meta = load_training_checkpoint(out / "last.pth")["segmenter"]
    assert (meta["crop_size"], meta["stride"]) == ([40, 48], [26, 32])
    capsys.readouterr()
    assert main(["segment-eval", str(data), "--checkpoint", str(out / "last.pth"), "--mode", "slide", "--workers",
                 "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4


def test_bad_options_and_data_fail_clearly(data, tmp_path, capsys):
    assert main(["segment-train", str(tmp_path / "missing"), "--backbone", "mambaout_test"]) == 5
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--eval-mode"):
        SegmentationConfig(data_dir=str(data), eval_mode="tiles")
    assert main(["segment-eval", str(data), "--checkpoint", str(tmp_path / "none.pth")]) == 4
    assert "error:" in capsys.readouterr().err
