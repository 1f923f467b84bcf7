"""Repeated augmentation (DeiT's RASampler, timm's RepeatAugSampler): the epoch each process draws, where the
repeats of an image go, the order as a function of the epoch, a torchrun run, exact resume, the recipe defaults."""

import csv
import itertools
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.utils.data import DistributedSampler

from conftest import cli_flags
from mambaout.cli import main
from mambaout.data.synthetic import write_dataset
from mambaout.engine import distributed
from mambaout.engine.checkpointing import load_training_checkpoint
from mambaout.engine.config import ConfigError
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import ClassificationTask, train
from test_train import QUICK, _Killed

REPEATS = 3  # the DeiT and Vim recipes' aug_repeats
LARGE, SMALL = 600, 100  # datasets on both sides of DeiT's 256-image rounding
EPOCHS = (0, 1, 5)


def deit_epoch_length(length: int, world_size: int) -> int:
    """Indices one process draws per epoch: DeiT's RASampler, and timm's ceil for datasets under 256 images."""
    if length >= 256:
        return length // 256 * 256 // world_size  # DeiT: int(math.floor(len // 256 * 256 / replicas))
    return math.ceil(length / world_size)


def repeated_stream(length: int, repeats: int, epoch: int) -> list[int]:
    """DeiT's stream: a permutation seeded by the epoch alone, each index repeated `repeats` times in a row."""
    generator = torch.Generator()
    generator.manual_seed(epoch)
    return [index for index in torch.randperm(length, generator=generator).tolist() for _ in range(repeats)]


class _Items:
    """A dataset of `length` items (the sampler reads only its length)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sampler_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One process of a 2-process gloo group: the indices the sampler ClassificationTask builds yields per epoch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    env = distributed.setup("cpu")
    try:
        assert torch.distributed.is_initialized() and (env.rank, env.world_size) == (rank, world_size)
        task = ClassificationTask(TrainConfig(model="vim_test"))  # aug_repeats from Vim-Ti's recipe
        drawn, lengths = {}, {}
        for length in (LARGE, SMALL):
            sampler = task.train_sampler(_Items(length), env)
            lengths[length] = len(sampler)
            for epoch in EPOCHS:
                sampler.set_epoch(epoch)
                drawn[length, epoch] = list(sampler)
        # the order is a function of the epoch alone: a fresh sampler, epochs in another order, other global RNG
        torch.manual_seed(1000 + rank)
        again = ClassificationTask(TrainConfig(model="vim_test", seed=7)).train_sampler(_Items(LARGE), env)
        redrawn = {}
        for epoch in reversed(EPOCHS):
            again.set_epoch(epoch)
            redrawn[epoch] = list(again)
        gathered = distributed.all_gather_object(
            {"type": type(sampler).__name__, "len": lengths, "drawn": drawn, "redrawn": redrawn}
        )
        if env.is_main:
            torch.save(gathered, out)
    finally:
        distributed.teardown()


def test_two_processes_draw_deits_repeated_epoch(tmp_path):
    world = 2
    out = tmp_path / "drawn.pt"
    # forked, not spawned: the processes start with torch and mambaout imported (seconds saved); they set one
    # thread first, as DataLoader workers do
    mp.start_processes(_sampler_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True,
                       start_method="fork")
    ranks = torch.load(out)
    assert [r["type"] for r in ranks] == ["RepeatAugSampler"] * world

    for length in (LARGE, SMALL):
        per_rank = deit_epoch_length(length, world)
        assert per_rank == {LARGE: 256, SMALL: 50}[length]  # 600 // 256 * 256 / 2 and ceil(100 / 2)
        total = per_rank * world
        for epoch in EPOCHS:
            drawn = [r["drawn"][length, epoch] for r in ranks]
            assert [r["len"][length] for r in ranks] == [per_rank] * world  # len(sampler)
            assert [len(d) for d in drawn] == [per_rank] * world
            # exactly DeiT's dealing: the first `total` entries of the repeated stream, round-robin over the ranks
            stream = repeated_stream(length, REPEATS, epoch)[:total]
            for rank in range(world):
                assert drawn[rank] == stream[rank::world], (length, epoch, rank)
            # so each drawn image appears REPEATS times over the ranks, but for the last one the cut-off truncates
            counts = Counter(index for d in drawn for index in d)
            full, rest = divmod(total, REPEATS)
            assert sorted(counts.values(), reverse=True) == [REPEATS] * full + ([rest] if rest else [])
            assert len(counts) == math.ceil(total / REPEATS)  # about 1/REPEATS of the distinct images per epoch
            # with 2 processes and 3 repeats, every image repeated 3 times is on both ranks (2 copies on one)
            for index, count in counts.items():
                on = [d.count(index) for d in drawn]
                if count == REPEATS:
                    assert sorted(on) == [1, 2], (index, on)
        # the order is the epoch's alone (not the seed's, the global RNG's, or how many epochs came before) ...
        for rank in range(world):
            for epoch in EPOCHS:
                if length == LARGE:
                    assert ranks[rank]["redrawn"][epoch] == ranks[rank]["drawn"][length, epoch]
        # ... and differs between epochs
        for a, b in itertools.pairwise(EPOCHS):
            assert ranks[0]["drawn"][length, a] != ranks[0]["drawn"][length, b]
    # the two regimes of the example: 600 images -> 171 distinct, 100 images -> 34 distinct, in an epoch
    assert len(set(ranks[0]["drawn"][LARGE, 0] + ranks[1]["drawn"][LARGE, 0])) == 171
    assert len(set(ranks[0]["drawn"][SMALL, 0] + ranks[1]["drawn"][SMALL, 0])) == 34


def test_with_at_least_as_many_processes_as_repeats_the_repeats_are_on_different_processes():
    world = 4  # the sampler needs only (rank, world_size) from the engine's env, no process group
    task = ClassificationTask(TrainConfig(model="deit_test"))
    drawn = []
    for rank in range(world):
        sampler = task.train_sampler(_Items(LARGE), distributed.Distributed(rank=rank, world_size=world))
        sampler.set_epoch(3)
        drawn.append(list(sampler))
    assert [len(d) for d in drawn] == [deit_epoch_length(LARGE, world)] * world == [128] * world
    stream = repeated_stream(LARGE, REPEATS, 3)[: 128 * world]
    assert drawn == [stream[rank::world] for rank in range(world)]
    for d in drawn:
        assert len(set(d)) == len(d)  # no image twice on one process
    counts = Counter(index for d in drawn for index in d)
    assert sorted(Counter(counts.values()).items()) == [(2, 1), (3, 170)]  # 512 = 170 x 3 + 2


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    # 300 training images: DeiT's epoch is 256 of them (300 // 256 * 256), the default sampler's all 300
    return write_dataset(tmp_path_factory.mktemp("images"), train_per_class=30, val_per_class=1, size=32)


def test_torchrun_two_processes_train_deits_epoch(images, tmp_path):
    world, batch = 2, 16
    options = dict(QUICK, batch_size=batch, aug_repeats=REPEATS, epochs=2, experiment="run", val_batch_size=5)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), "-m",
               "mambaout.cli", "train", str(images), *cli_flags(options), "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["aug_repeats"] == REPEATS and args["world_size"] == world
    assert args["overrides"]["aug_repeats"] == {"recipe": 0, "used": REPEATS}
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    per_rank = deit_epoch_length(300, world)
    assert per_rank == 128 and per_rank % batch == 0  # 8 full batches per process, none dropped
    for row in rows:
        # the engine's units: images over all processes in the epoch (rate x seconds); the default sampler gives 288
        seen = float(row["train_images_per_second"]) * float(row["seconds"])
        assert seen == pytest.approx(per_rank * world) and per_rank * world == 256
        assert math.isfinite(float(row["train_loss"])) and "val_top1" in row


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(images, tmp_path, monkeypatch):
    # augmentation and mixup on: each of an image's repeats is augmented differently, from the restored RNG states
    options = dict(QUICK, no_aug=False, smoothing=0.1, aug_repeats=REPEATS, epochs=3, max_steps_per_epoch=2,
                   deterministic=True, experiment="run", val_split="")
    train(TrainConfig(data_dir=str(images), output=str(tmp_path / "whole"), **options))

    prepare, calls = ClassificationTask.prepare, []

    def killed_in_epoch_1(self, batch):  # the second step of epoch 1, after checkpoint 0
        calls.append(1)
        if len(calls) == 2 + 2:
            raise _Killed
        return prepare(self, batch)

    config = dict(data_dir=str(images), output=str(tmp_path / "killed"), **options)
    with monkeypatch.context() as patch:
        patch.setattr(ClassificationTask, "prepare", killed_in_epoch_1)
        with pytest.raises(_Killed):
            train(TrainConfig(**config))
    assert load_training_checkpoint(tmp_path / "killed" / "run" / "last.pth")["epoch"] == 0
    result = train(TrainConfig(resume="auto", **config))
    assert result.epochs_run == 2 and len(calls) == 4

    whole = load_training_checkpoint(tmp_path / "whole" / "run" / "last.pth")
    again = load_training_checkpoint(tmp_path / "killed" / "run" / "last.pth")
    assert whole["epoch"] == again["epoch"] == 2 and whole["args"]["aug_repeats"] == REPEATS
    for key in ("model", "model_ema"):
        if whole[key] is None:
            assert again[key] is None
            continue
        assert whole[key].keys() == again[key].keys()
        for name, tensor in whole[key].items():
            assert torch.equal(tensor, again[key][name]), f"{key}.{name} differs after resume"
    summary = list(csv.DictReader((tmp_path / "killed" / "run" / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in summary] == [0, 1, 2]


def test_the_recipe_sets_aug_repeats_and_a_negative_value_is_a_config_error(tmp_path, capsys):
    for model in ("deit_test", "vim_test"):
        config = TrainConfig(model=model)
        assert config.aug_repeats == 3 and "aug_repeats" not in config.recipe_report.overrides, model
    assert TrainConfig(model="mambaout_test").aug_repeats == 0
    off = TrainConfig(model="vim_test", aug_repeats=0)
    assert off.recipe_report.overrides["aug_repeats"] == {"recipe": 3, "used": 0}
    sampler = ClassificationTask(off).train_sampler(_Items(LARGE), distributed.Distributed())
    assert type(sampler) is DistributedSampler and len(sampler) == LARGE  # off: every image once
    femto = ClassificationTask(TrainConfig(model="mambaout_test"))
    assert type(femto.train_sampler(_Items(10), distributed.Distributed())) is DistributedSampler

    with pytest.raises(ConfigError, match="--aug-repeats must be 0 or more"):
        TrainConfig(model="vim_test", aug_repeats=-1)
    data = tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    assert main(["train", str(data), "--model", "mambaout_test", "--aug-repeats", "-1", "--output",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--aug-repeats must be 0 or more" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
