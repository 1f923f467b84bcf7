"""What long runs meet: unusable samples at batch 2 (full batches in every task), SIGTERM mid-epoch then an exact
resume (classification, segmentation, 2 processes), damaged checkpoints, full disks and unwritable folders, a
data-loading worker that dies."""

import errno
import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import PILToTensor

from conftest import ONE_THREAD, cli_flags
from mambaout.checkpoints import CheckpointError
from mambaout.cli import main
from mambaout.data.folder import DatasetError, FolderDataset
from mambaout.data.synthetic import write_dataset
from mambaout.data.synthetic_coco import write_coco_dataset
from mambaout.data.synthetic_segmentation import write_segmentation_dataset
from mambaout.data.training_stream import EpochStream, SampleKey, TrainingSamples
from mambaout.engine import checkpointing
from mambaout.engine.checkpointing import CheckpointWriteError, find_resume_checkpoint, load_training_checkpoint
from mambaout.errors import DataLoaderWorkerError, TrainingInterrupted
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import ClassificationTask, train
from mambaout.tasks.detection.task import DetectionConfig, DetectionTask, train_detector
from mambaout.tasks.segmentation.task import SegmentationConfig, SegmentationTask, train_segmenter
from test_train import QUICK

SEGMENTATION = dict(backbone="mambaout_test", img_scale=[64, 48], crop_size=64, channels=16, aux_channels=8,
                    batch_size=2, workers=0, lr=5e-3, warmup_iters=2, drop_path=0.0, log_interval=1, seed=1)
DETECTION = dict(backbone="mambaout_test", img_scale=[64, 48], fpn_channels=16, box_head_dim=32,
                 mask_head_channels=16, rpn_post_nms_train=32, rpn_post_nms_test=16, rpn_batch_size_per_image=64,
                 box_batch_size_per_image=32, detections_per_image=10, batch_size=2, workers=0, lr=2e-3,
                 warmup_iters=2, drop_path=0.0, log_interval=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), train_per_class=4, val_per_class=1, size=32)


def _record_batch_sizes(monkeypatch, task_class) -> list[int]:
    sizes: list[int] = []
    loss = task_class.loss

    def recording(self, model, batch):
        sizes.append(batch.size)
        return loss(self, model, batch)

    monkeypatch.setattr(task_class, "loss", recording)
    return sizes


def _listed(run: Path) -> dict[str, str]:
    lines = (run / "skipped.txt").read_text().splitlines()
    return {Path(path).name: reason for path, reason in (line.split("\t") for line in lines)}


# ---- full batches


def test_segmentation_at_batch_2_with_a_corrupt_image_and_a_mismatched_label_keeps_every_batch_full(
    tmp_path, monkeypatch
):
    # the command: UperNet's pooling BatchNorm fails on a batch of one image
    data = write_segmentation_dataset(tmp_path / "ADE", train_images=6, val_images=2, size=(64, 48))
    images, labels = data / "images" / "training", data / "annotations" / "training"
    (images / "corrupt.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (64, 48)).save(labels / "corrupt.png")
    Image.new("RGB", (64, 48)).save(images / "mismatch.jpg")
    Image.new("L", (32, 48)).save(labels / "mismatch.png")
    sizes = _record_batch_sizes(monkeypatch, SegmentationTask)
    assert main(["segment-train", str(data), "--output", str(tmp_path / "out"), "--experiment", "run",
                 "--iterations", "20", "--iters-per-epoch", "10", *cli_flags(SEGMENTATION)]) == 0
    assert sizes == [2] * 20
    listed = _listed(tmp_path / "out" / "run")
    assert "not an image" in listed["corrupt.jpg"] and "32x48" in listed["mismatch.jpg"]


def test_detection_at_batch_2_with_a_corrupt_image_keeps_every_batch_full(tmp_path, monkeypatch):
    root = write_coco_dataset(tmp_path / "coco", train_images=6, val_images=1, size=(64, 48), crowd_every=0)
    (root / "train" / "train_000002.jpg").write_bytes(b"broken")
    sizes = _record_batch_sizes(monkeypatch, DetectionTask)
    train_detector(DetectionConfig(data_dir=str(root), output=str(tmp_path), experiment="run", epochs=2,
                                   val_split="", **DETECTION))
    assert sizes == [2] * 6  # 6 images: 3 steps of 2 per epoch, the broken one replaced each time it is drawn
    assert list(_listed(tmp_path / "run")) == ["train_000002.jpg"]


def test_classification_keeps_every_batch_full_and_a_too_small_dataset_fails_before_training(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, size=32)
    classes = sorted(os.listdir(data / "train"))
    bad = {data / "train" / classes[0] / "text.jpg": b"not an image", data / "train" / classes[3] / "cut.png":
           (data / "train" / classes[3] / os.listdir(data / "train" / classes[3])[0]).read_bytes()[:60]}
    for path, content in bad.items():
        path.write_bytes(content)
    sizes = _record_batch_sizes(monkeypatch, ClassificationTask)
    options = dict(QUICK, no_aug=False, batch_size=4, epochs=3)  # the default augmentation, on 22 images
    train(TrainConfig(data_dir=str(data), output=str(tmp_path), experiment="run", **options))
    assert sizes == [4] * 15
    assert set(_listed(tmp_path / "run")) == {"text.jpg", "cut.png"}
    with pytest.raises(DatasetError, match="fewer than one batch of 64"):
        train(TrainConfig(data_dir=str(data), output=str(tmp_path), experiment="big", **dict(options, batch_size=64)))
    assert not (tmp_path / "big" / "last.pth").exists()


def test_a_replacement_is_drawn_from_the_seed_and_position_alone(tmp_path):
    data = write_dataset(tmp_path / "data", train_per_class=3, val_per_class=1, size=16)
    broken = data / "train" / sorted(os.listdir(data / "train"))[0] / "broken.png"
    broken.write_bytes(b"broken")
    dataset = FolderDataset(data, "train", transform=PILToTensor(), progress=False)
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path == str(broken))
    samples = TrainingSamples(dataset, seed=3)
    # one bad sample at every position of an epoch: its stand-in depends on (seed, epoch, position) only
    first = [samples[SampleKey(1, position, index)] for position in range(40)]
    again = [samples[SampleKey(1, position, index)] for position in reversed(range(40))][::-1]
    assert all(a.failed[0].path == str(broken) and a.item[1] == b.item[1] for a, b in zip(first, again))
    assert torch.equal(first[5].item[0], again[5].item[0])
    assert len({tuple(r.item[0].flatten()[:64].tolist()) for r in first}) > 10  # different stand-ins, not one
    stream = EpochStream(range(10))
    stream.set_epoch(2, start=6)
    assert [(k.epoch, k.position, k.index) for k in stream] == [(2, p, p) for p in range(6, 10)] and len(stream) == 4


# ---- SIGTERM mid-epoch, exact resume


def _stop_at(monkeypatch, task_class, step: int, signum=signal.SIGTERM) -> None:
    """Send this process `signum` during the forward pass of optimizer step `step` (0, 1, ...) of this run."""
    loss, calls = task_class.loss, []

    def signalling(self, model, batch):
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        calls.append(1)
        return loss(self, model, batch)

    monkeypatch.setattr(task_class, "loss", signalling)


def _assert_same_weights(a: Path, b: Path, keys=("model",)) -> None:
    whole, again = load_training_checkpoint(a), load_training_checkpoint(b)
    assert whole["epoch"] == again["epoch"] and again["step_in_epoch"] == 0
    for key in keys:
        assert whole[key].keys() == again[key].keys()
        for name, tensor in whole[key].items():
            assert torch.equal(tensor, again[key][name]), f"{key}.{name} differs after resume"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_mid_epoch_checkpoints_and_resume_auto_ends_with_the_uninterrupted_weights(
    shapes, tmp_path, monkeypatch, capsys, signum
):
    # the default augmentation, mixup/cutmix, drop path and EMA on: every random state must continue exactly
    options = dict({k: v for k, v in QUICK.items() if k != "no_aug"}, smoothing=0.1, drop_path=0.1,
                   model_ema_decay=0.9, epochs=3, batch_size=4, deterministic=True, checkpoint_interval=3,
                   experiment="run")
    train(TrainConfig(data_dir=str(shapes), output=str(tmp_path / "whole"), **options))
    stop_step = random.Random(signum).randrange(1, 29)
    with monkeypatch.context() as patch:
        _stop_at(patch, ClassificationTask, stop_step, signum)
        code = main(["train", str(shapes), "--output", str(tmp_path / "stopped"), *cli_flags(options)])
    assert code == 128 + signum
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume auto" in err
    state = load_training_checkpoint(tmp_path / "stopped" / "run" / "last.pth")
    assert (state["epoch"] + 1) * 10 + state["step_in_epoch"] == stop_step + 1  # 10 steps per epoch
    # the rest with data-loading workers: each sample's augmentation does not depend on who reads it
    train(TrainConfig(data_dir=str(shapes), output=str(tmp_path / "stopped"), resume="auto",
                      **dict(options, workers=2)))
    _assert_same_weights(tmp_path / "whole" / "run" / "last.pth", tmp_path / "stopped" / "run" / "last.pth",
                         ("model", "model_ema"))


def test_segmentation_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    data = write_segmentation_dataset(tmp_path / "ADE", train_images=6, val_images=2, size=(64, 48))
    options = dict(SEGMENTATION, iterations=9, iters_per_epoch=3, checkpoint_interval=2, experiment="run")
    train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path / "whole"), **options))
    with monkeypatch.context() as patch:
        _stop_at(patch, SegmentationTask, random.Random(7).randrange(1, 8))
        with pytest.raises(TrainingInterrupted):
            train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path / "stopped"), **options))
    train_segmenter(SegmentationConfig(data_dir=str(data), output=str(tmp_path / "stopped"), resume="auto",
                                       **options))
    _assert_same_weights(tmp_path / "whole" / "run" / "last.pth", tmp_path / "stopped" / "run" / "last.pth")


def test_torchrun_two_processes_stopped_by_sigterm_resume_to_the_uninterrupted_weights(shapes, tmp_path):
    options = dict(QUICK, epochs=3, batch_size=2, deterministic=True, checkpoint_interval=2, experiment="run")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "mambaout.cli", "train", str(shapes), *cli_flags(options)]
    whole = subprocess.run([*command, "--output", str(tmp_path / "whole")], capture_output=True, text=True,
                           env=ONE_THREAD)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stop_line = f"epoch 1 step {random.Random(2).randrange(1, 10)}/10:"
    process = subprocess.Popen([*command, "--output", str(tmp_path / "stopped")], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, env=ONE_THREAD)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if stop_line in line:
            process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
            break
    seen += process.stderr.readlines()
    assert process.wait(timeout=120) != 0, "".join(seen)[-3000:]
    assert any("stopped by SIGTERM" in line for line in seen), "".join(seen)[-3000:]
    state = load_training_checkpoint(tmp_path / "stopped" / "run" / "last.pth")
    assert state["step_in_epoch"] > 0 and len(state["epoch_progress"]) == 2
    resumed = subprocess.run([*command, "--output", str(tmp_path / "stopped"), "--resume", "auto"],
                             capture_output=True, text=True, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(tmp_path / "whole" / "run" / "last.pth", tmp_path / "stopped" / "run" / "last.pth")


# ---- damaged checkpoints


def _flip_a_byte_of_the_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:  # the data starts after the local header, its name and its extra field
            f.seek(entry.header_offset + 26)
            name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
    content = bytearray(path.read_bytes())
    content[offset] ^= 0x10
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damage", ["truncated", "empty", "one byte flipped"])
def test_a_damaged_newest_checkpoint_is_skipped_by_resume_and_refused_by_predict(
    shapes, tmp_path, damage, caplog, capsys
):
    train(TrainConfig(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=2, max_steps_per_epoch=1,
                      **QUICK))
    last = tmp_path / "run" / "last.pth"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size * 2 // 3])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        _flip_a_byte_of_the_largest_tensor(last)
    with pytest.raises(CheckpointError, match="damaged" if damage == "one byte flipped" else "."):
        load_training_checkpoint(last)
    with caplog.at_level("WARNING", logger="mambaout"):
        path, state = find_resume_checkpoint(tmp_path / "run")
    assert path.name == "checkpoint-1.pth" and state["epoch"] == 1
    assert any("skipping" in r.message and str(last) in r.message for r in caplog.records)
    image = next((shapes / "val").rglob("*.png"))
    assert main(["predict", "mambaout_test", str(image), "--checkpoint", str(last)]) == 4
    assert str(last) in capsys.readouterr().err


# ---- full disks, unwritable folders


def test_a_full_disk_at_a_checkpoint_stops_clearly_and_leaves_the_earlier_ones(shapes, tmp_path, monkeypatch,
                                                                              capsys):
    config = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", max_steps_per_epoch=1, **QUICK)
    train(TrainConfig(epochs=1, **config))
    save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)  # part of the file made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpointing.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as raised:
        train(TrainConfig(epochs=3, resume="auto", **config))
    message = str(raised.value)
    assert str(tmp_path / "run") in message and "MiB" in message and "--resume auto" in message
    assert raised.value.errno == errno.ENOSPC  # what a study checks to stop with its own message
    assert main(["train", str(shapes), "--epochs", "3", "--resume", "auto", "--output", str(tmp_path),
                 *cli_flags({k: v for k, v in config.items() if k not in ("data_dir", "output")})]) == 10
    assert "No space left" in capsys.readouterr().err
    monkeypatch.setattr(checkpointing.torch, "save", save)
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))
    assert load_training_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 0
    assert load_training_checkpoint(tmp_path / "run" / "checkpoint-0.pth")["epoch"] == 0


def test_an_output_folder_that_cannot_be_written_fails_before_the_first_step(shapes, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    sizes = _record_batch_sizes(monkeypatch, ClassificationTask)
    with pytest.raises(CheckpointWriteError, match="not writable"):
        train(TrainConfig(data_dir=str(shapes), output=str(tmp_path / "a_file"), experiment="run", epochs=1,
                          **QUICK))
    assert sizes == []


# ---- a data-loading worker that dies


def _child_processes() -> set[str]:
    return {pid for path in Path(f"/proc/{os.getpid()}/task").glob("*/children") for pid in path.read_text().split()}


def test_a_data_loading_worker_killed_names_the_cause_and_the_run_resumes(shapes, tmp_path, monkeypatch):
    config = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", epochs=2, checkpoint_interval=2,
                  **dict(QUICK, batch_size=4))
    read, reads = FolderDataset.__getitem__, []

    def killed_on_the_24th_read(self, index):  # as the OOM killer would, in a worker of the first epoch
        reads.append(index)
        if torch.utils.data.get_worker_info() is not None and len(reads) == 24:
            os.kill(os.getpid(), signal.SIGKILL)
        return read(self, index)

    children_before = _child_processes()
    with monkeypatch.context() as patch:
        patch.setattr(FolderDataset, "__getitem__", killed_on_the_24th_read)
        with pytest.raises(DataLoaderWorkerError, match="--workers") as raised:
            train(TrainConfig(**dict(config, workers=1)))
    assert "killed by signal" in str(raised.value) or "exited unexpectedly" in str(raised.value)
    # the workers were shut down and reaped: a dead one left registered with torch's SIGCHLD handler would raise
    # its error again when any later child process ends
    assert _child_processes() <= children_before
    state = load_training_checkpoint(tmp_path / "run" / "last.pth")
    assert state["epoch"] == -1 and state["step_in_epoch"] in (2, 4)  # written after step 2 or 4 of epoch 0
    result = train(TrainConfig(**dict(config, resume="auto")))
    assert result.epochs_run == 2 and load_training_checkpoint(tmp_path / "run" / "last.pth")["epoch"] == 1
