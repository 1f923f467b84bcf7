"""detect-train on the one engine with generated COCO-format data: the loss falls and detect-eval reproduces the
engine's validation AP; exact resume after SIGKILL; 2-process torchrun matches 1 process; detect draws pictures."""

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ONE_THREAD, cli_flags, console_script
from mambaout.cli import main
from mambaout.data.synthetic_coco import write_coco_dataset
from mambaout.engine.checkpointing import load_training_checkpoint
from mambaout.tasks.detection.task import DetectionConfig, train_detector

# the recipe at toy sizes: 64x48 images, narrow heads, few RoIs, mambaout_test
QUICK = dict(
    backbone="mambaout_test",
    img_scale=[64, 48],
    fpn_channels=16,
    box_head_dim=32,
    mask_head_channels=16,
    rpn_post_nms_train=32,
    rpn_post_nms_test=16,
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=32,
    detections_per_image=10,
    batch_size=4,
    workers=0,
    lr=2e-3,
    warmup_iters=2,
    drop_path=0.0,
    log_interval=1,
)



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), train_images=16, val_images=4, size=(64, 48))


def _summary(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").read_text().splitlines()))


def test_a_short_run_lowers_the_loss_then_detect_eval_and_detect_work(data, tmp_path, capsys):
    result = train_detector(DetectionConfig(data_dir=str(data), output=str(tmp_path), experiment="run", epochs=3,
                                            lr_steps=[2], **QUICK))
    out = tmp_path / "run"
    rows = _summary(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and result.epochs_run == 3
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert {"val_bbox_mAP", "val_segm_mAP", "val_bbox_mAP_75", "val_segm_mAP_l", "train_mask"} <= set(rows[0])
    assert float(rows[1]["lr"]) == pytest.approx(0.1 * float(rows[0]["lr"]))  # lr of the first step of epoch 2
    assert {"last.pth", "best.pth", "args.yaml"} <= {p.name for p in out.iterdir()}

    checkpoint = str(out / "last.pth")
    assert main(["detect-eval", str(data), "--checkpoint", checkpoint, "--workers", "0", "--output",
                 str(tmp_path / "eval"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and report["skipped"] == []
    for key in ("bbox_mAP", "segm_mAP", "bbox_mAP_50"):  # the engine evaluates the same way
        assert report[key] == pytest.approx(float(rows[-1][f"val_{key}"]), abs=1e-9)
    detections = json.loads((tmp_path / "eval" / "results.bbox.json").read_text())
    masks = json.loads((tmp_path / "eval" / "results.segm.json").read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    assert len(masks) == len(detections) and set(masks[0]["segmentation"]) == {"size", "counts"}
    assert main(["detect-eval", str(data), "--checkpoint", checkpoint, "--workers", "0"]) == 0
    assert "AP50" in capsys.readouterr().out

    image = data / "val" / "val_000001.jpg"
    assert main(["detect", str(image), str(tmp_path / "missing.jpg"), "--checkpoint", checkpoint, "--output",
                 str(tmp_path / "drawn"), "--score-threshold", "0", "--json"]) == 1
    captured = capsys.readouterr()
    (listed,) = json.loads(captured.out)
    assert "missing.jpg" in captured.err
    assert 0 < len(listed["detections"]) <= 10
    assert {d["label"] for d in listed["detections"]} <= {"disk", "box", "triangle", "star"}
    drawn = Image.open(listed["drawn"])
    assert drawn.size == Image.open(image).size and drawn.mode == "RGB"


def test_sigkill_then_resume_auto_ends_with_the_uninterrupted_weights(data, tmp_path):
    options = dict(QUICK, epochs=4, lr_steps=[3], deterministic=True, experiment="run", val_split="",
                   max_steps_per_epoch=2)
    command = [console_script(), "detect-train", str(data), *cli_flags(options)]
    subprocess.run([*command, "--output", str(tmp_path / "whole")], check=True, capture_output=True, env=ONE_THREAD)

    killed_out = tmp_path / "killed"
    process = subprocess.Popen([*command, "--output", str(killed_out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ONE_THREAD)
    first = killed_out / "run" / "last.pth"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 2.0))  # somewhere in the following epochs
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


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path):
    # no flips, no drop path; every anchor and proposal is sampled (batch sizes per image above their counts), so the
    # sampled sets do not depend on each process's random stream. What still differs: torchvision averages each loss
    # over the RoIs of the process's batch, and DDP averages the processes, so images with more RoIs weigh a little
    # differently. SGD, not AdamW: Adam would blow rounding noise in near-zero gradients up to full-size steps.
    options = dict(QUICK, epochs=1, deterministic=True, experiment="run", hflip=0.0, opt="sgd",
                   lr=0.02, warmup_iters=0, rpn_batch_size_per_image=4096, box_batch_size_per_image=512,
                   max_steps_per_epoch=2)
    one = [console_script(), "detect-train", str(data), *cli_flags(dict(options, batch_size=4))]
    subprocess.run([*one, "--output", str(tmp_path / "one")], check=True, capture_output=True, env=ONE_THREAD)
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "mambaout.cli", "detect-train", str(data), *cli_flags(dict(options, batch_size=2))]
    done = subprocess.run([*two, "--output", str(tmp_path / "two")], capture_output=True, text=True, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_training_checkpoint(tmp_path / "one" / "run" / "last.pth")
    b = load_training_checkpoint(tmp_path / "two" / "run" / "last.pth")
    assert b["args"]["batch_size"] == 2 and len(b["rng"]) == 2
    from mambaout.tasks.detection.model import create_detector

    torch.manual_seed(42)  # the engine seeds rank 0 with the seed before building the model
    start = {k: v for k, v in create_detector("mambaout_test", 4, **_architecture()).state_dict().items()}
    moved = sum((a["model"][k].float() - start[k].float()).norm() ** 2 for k in start) ** 0.5
    apart = sum((a["model"][k].float() - b["model"][k].float()).norm() ** 2 for k in start) ** 0.5
    assert moved > 0 and apart < 0.1 * moved, (apart, moved)  # without gradient averaging they drift as far apart
    (ra,), (rb,) = _summary(tmp_path / "one" / "run"), _summary(tmp_path / "two" / "run")
    assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=0.05)
    # validation gathered both processes' detections: one process evaluating the same weights finds the same AP
    from mambaout.tasks.detection.task import evaluate_checkpoint

    alone = evaluate_checkpoint(data, tmp_path / "two" / "run" / "last.pth", workers=0).evaluation
    assert alone.images == 4
    for key in ("bbox_mAP", "segm_mAP", "bbox_mAP_50", "segm_mAP_50"):
        assert alone.metrics[key] == pytest.approx(float(rb[f"val_{key}"]), abs=1e-9), key


def _architecture() -> dict:
    return dict(fpn_channels=QUICK["fpn_channels"], box_head_dim=QUICK["box_head_dim"],
                mask_head_channels=QUICK["mask_head_channels"])


def test_unreadable_training_images_are_listed_in_the_run(data, tmp_path):
    root = write_coco_dataset(tmp_path / "data", train_images=6, val_images=1, size=(64, 48), crowd_every=0)
    (root / "train" / "train_000002.jpg").write_bytes(b"broken")
    train_detector(DetectionConfig(data_dir=str(root), output=str(tmp_path), experiment="run", epochs=1,
                                   val_split="", **dict(QUICK, batch_size=2)))
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in listed] == ["train_000002.jpg"]
    assert "not an image" in listed[0]
