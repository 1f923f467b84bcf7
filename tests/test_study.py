"""`mambaout study`: the smoke preset end to end, resume after SIGKILL, parallel and torchrun runs, recipes per run,
and the checks made before any training."""

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli_flags, console_script
from mambaout.cli import main
from mambaout.data.folder import DatasetError
from mambaout.data.synthetic import write_dataset
from mambaout.engine.checkpointing import CheckpointKeeper
from mambaout.errors import InputSizeError
from mambaout.recipes import get_recipe, plain
from mambaout.registry import get_model_spec, list_models, recipe_for
from mambaout.study import PRESETS, StudyConfig, StudyError, get_preset, run_study
from mambaout.study.report import TIMING
from mambaout.tasks.classification.validate import validate

PNG = b"\x89PNG\r\n\x1a\n"
# a study of two test models that trains in seconds: no augmentation, one lr, a few steps per epoch
FAST = dict(batch_size=8, workers=0, lr=1e-3, warmup_epochs=0, cooldown_epochs=0, no_aug=True, smoothing=0.0,
            drop_path=0.0, aug_repeats=0, model_ema_decay=0.0, best_by="model", release_weights="model",
            amp="fp32", checkpoint_hist=1)
BENCH = ["--bench-batch", "2", "--bench-repeats", "1"]



def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), train_per_class=2, val_per_class=1, size=32)


def test_the_smoke_preset_end_to_end_with_two_tiny_models_and_two_seeds(tmp_path, capsys):
    out = tmp_path / "study"
    # no DATA: the preset writes its generated shapes dataset; its pairs give way to the models asked for
    code = main(["study", "--preset", "smoke", "--models", "mambaout_test", "vim_test", "--epochs", "2",
                 "--max-steps-per-epoch", "6", "--output", str(out), *BENCH])
    assert code == 0
    for name in ("study.csv", "study.json", "study.md", "study.yaml"):
        assert (out / name).is_file(), name
    for name in ("top1_vs_macs.png", "top1_vs_speed.png", "validation_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000, name
    assert len(list((out / "shapes" / "train").rglob("*.png"))) == 10 * 150

    rows = _rows(out / "study.csv")
    runs = [r for r in rows if r["seed"] != "mean"]
    assert [(r["model"], r["seed"]) for r in runs] == [("mambaout_test", "42"), ("vim_test", "42"),
                                                        ("mambaout_test", "43"), ("vim_test", "43")]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{r['model']}-seed{r['seed']}" for r in runs)
    for row in runs:  # each row is its run folder's last epoch, of an ordinary train run
        run = Path(row["run_dir"])
        args = yaml.safe_load((run / "args.yaml").read_text())
        assert (args["model"], str(args["seed"]), args["img_size"]) == (row["model"], row["seed"], 32)
        last = _rows(run / "summary.csv")[-1]
        assert float(row["top1"]) == float(last["val_top1"]) and row["epochs"] == "2"
        assert float(row["images_per_s"]) > 0 and float(row["gmacs"]) > 0
    # the table's top-1 is what `validate` gives the checkpoint the run leaves (same images, same preprocessing)
    first = Path(runs[0]["run_dir"])
    checked = validate(str(out / "shapes"), "mambaout_test", checkpoint=first / "last.pth", input_size=(32, 32),
                       workers=0, device="cpu")
    assert checked.top1 == pytest.approx(float(runs[0]["top1"]), abs=1e-6)

    means = {r["model"]: r for r in rows if r["seed"] == "mean"}
    assert set(means) == {"mambaout_test", "vim_test"}
    for model, mean in means.items():
        seeds = [float(r["top1"]) for r in runs if r["model"] == model]
        assert float(mean["top1"]) == pytest.approx(sum(seeds) / 2) and mean["seeds"] == "2"
        assert float(mean["top1_std"]) == pytest.approx(abs(seeds[0] - seeds[1]) / 2**0.5)
    report = json.loads((out / "study.json").read_text())
    assert len(report["runs"]) == 4 and [c["model"] for c in report["comparisons"]] == ["vim_test"]
    text = (out / "study.md").read_text()
    assert text in capsys.readouterr().out and "| mambaout_test |" in text and "Δ top-1" in text


def test_a_study_killed_in_its_second_run_resumes_to_the_table_of_an_uninterrupted_one(shapes, tmp_path):
    options = dict(FAST, epochs=3, deterministic=True)
    command = [console_script(), "study", str(shapes), "--models", "mambaout_test", "vim_test", "--img-size", "32",
               *cli_flags(options), *BENCH]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # uninterrupted, and with both runs at once (--jobs 2): each run's result does not depend on its neighbours
    whole = subprocess.run([*command, "--jobs", "2", "--output", str(tmp_path / "whole")], capture_output=True,
                           text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--output", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    second = killed / "runs" / "vim_test-seed42" / "args.yaml"
    deadline = time.monotonic() + 300
    while not second.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "study.csv").exists(), "the kill came after the study ended"
    first = killed / "runs" / "mambaout_test-seed42"
    first_files = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}

    again = subprocess.run([*command, "--output", str(killed)], capture_output=True, text=True, env=env)
    assert again.returncode != 0 and "--resume auto" in again.stderr  # a study folder is never reused silently
    resumed = subprocess.run([*command, "--output", str(killed), "--resume", "auto"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 of 2 runs finished earlier" in resumed.stderr
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()} == first_files  # not retrained

    def table(folder):
        return [{k: v for k, v in row.items() if k not in (*TIMING, "run_dir")} for row in _rows(folder / "study.csv")]

    assert table(killed) == table(tmp_path / "whole")


def _quick_study(shapes, out, **changes) -> StudyConfig:
    options = dict(FAST, max_steps_per_epoch=1, **changes.pop("options", {}))
    return StudyConfig(data_dir=str(shapes), models=["mambaout_test", "vim_test"], epochs=1, img_size=32,
                       output=str(out), bench_batch=2, bench_repeats=1, options=options, **changes)


def _args(out: Path) -> dict[str, dict]:
    return {p.name: yaml.safe_load((p / "args.yaml").read_text()) for p in sorted((out / "runs").iterdir())}


IDENTITY = ("model", "experiment", "recipe_is_own", "recipe_fallback", "overrides")


def test_recipe_name_gives_every_run_the_same_options_and_own_gives_each_its_own(shapes, tmp_path):
    run_study(_quick_study(shapes, tmp_path / "one", recipe="vim_tiny"))
    shared = _args(tmp_path / "one")
    assert {args["recipe"] for args in shared.values()} == {"vim_tiny"}
    assert not shared["mambaout_test-seed42"]["recipe_is_own"]
    # only the identity of the run differs under one recipe (the seed too, but both runs have seed 42 here)
    first, second = ({k: v for k, v in args.items() if k not in IDENTITY} for args in shared.values())
    assert first == second

    run_study(_quick_study(shapes, tmp_path / "own"))
    own = _args(tmp_path / "own")
    assert own["mambaout_test-seed42"]["recipe"] == "mambaout_femto" and own["vim_test-seed42"]["recipe"] == "vim_tiny"
    study_set = set(FAST) | {"max_steps_per_epoch", "epochs", "img_size", "global_batch_size"}  # lr alone: absolute
    for args in own.values():  # wherever the study sets nothing, each run has its own recipe's value
        recipe = get_recipe(args["recipe"]).values
        unset = [key for key in recipe if key not in study_set]
        assert {k: args[k] for k in unset} == {k: plain(recipe[k]) for k in unset}
    differing = [k for k in get_recipe("vim_tiny").values if k not in study_set
                 and own["mambaout_test-seed42"][k] != own["vim_test-seed42"][k]]
    assert differing, "the two own recipes should differ somewhere the study leaves alone"


def test_a_shorter_study_shrinks_each_recipe_warmup_in_proportion(shapes, tmp_path):
    config = StudyConfig(data_dir=str(shapes), models=["mambaout_femto", "vim_tiny", "local_vim_tiny"], epochs=30,
                         img_size=32, output=str(tmp_path))
    from mambaout.study.plan import make_runs

    warmups = {run.model: run.train_config().warmup_epochs for run in make_runs(config)}
    expected = {m: round(recipe_for(m)[0].values["warmup_epochs"] * 30 / recipe_for(m)[0].values["epochs"])
                for m in warmups}
    assert warmups == expected and warmups["mambaout_femto"] == 2  # 20 of 300 epochs: 2 of 30
    set_by_user = StudyConfig(data_dir=str(shapes), models=["mambaout_femto"], epochs=30, img_size=32,
                              output=str(tmp_path), options={"warmup_epochs": 3})
    assert make_runs(set_by_user)[0].train_config().warmup_epochs == 3


def test_a_full_disk_mid_study_stops_clearly_keeps_finished_runs_and_resumes(shapes, tmp_path, monkeypatch):
    config = _quick_study(shapes, tmp_path)
    save = CheckpointKeeper.save

    def disk_full_in_the_second_run(self, state, epoch, is_best):
        if "vim_test" in str(self.directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "last.pth"))
        return save(self, state, epoch, is_best)

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointKeeper, "save", disk_full_in_the_second_run)
        with pytest.raises(StudyError, match="No space left on device") as failure:
            run_study(config)
    message = str(failure.value)
    assert "vim_test-seed42" in message and "1 finished runs" in message and "--resume auto" in message
    first = tmp_path / "runs" / "mambaout_test-seed42"
    assert (first / "study_run.json").is_file() and (first / "last.pth").is_file()
    assert not (tmp_path / "study.csv").exists()
    result = run_study(_quick_study(shapes, tmp_path, resume="auto"))
    assert [r["status"] for r in result.runs] == ["ok", "ok"]


def test_bad_input_fails_before_any_training(shapes, tmp_path):
    def fails(error, match, **changes):
        with pytest.raises(error, match=match):
            run_study(StudyConfig(**{**dict(data_dir=str(shapes), models=["mambaout_test"], img_size=32,
                                            output=str(tmp_path / "s")), **changes}))
        assert not (tmp_path / "s" / "runs").exists()

    fails(StudyError, "Closest: mambaout_femto", models=["mambaout_femtoo"])
    fails(StudyError, "--recipe.*Closest: vim_tiny", recipe="vim_tiy")
    fails(InputSizeError, "vim_test cannot take", models=["mambaout_test", "vim_test"], img_size=40)
    one_class = tmp_path / "one"
    for split in ("train", "val"):
        (one_class / split / "cat").mkdir(parents=True)
        shutil.copy(next((shapes / split / "circle").iterdir()), one_class / split / "cat" / "0.png")
    fails(DatasetError, "1 class folder", data_dir=str(one_class))
    fails(StudyError, "sets epochs", options={"epochs": 2})
    with pytest.raises(StudyError, match="--models"):
        StudyConfig(data_dir=str(shapes), models=[])


def test_a_resumed_study_must_have_the_same_settings(shapes, tmp_path):
    run_study(_quick_study(shapes, tmp_path))
    with pytest.raises(StudyError, match="epochs differ"):
        run_study(StudyConfig(data_dir=str(shapes), models=["mambaout_test", "vim_test"], epochs=2, img_size=32,
                              output=str(tmp_path), resume="auto", options=dict(FAST, max_steps_per_epoch=1)))


def test_presets_name_registered_models_and_pair_each_reference_with_its_rivals():
    for preset in PRESETS.values():
        assert preset.models and all(get_model_spec(m) for m in preset.models)
    hypothesis1 = get_preset("hypothesis1")
    assert all(c.reference.startswith("mambaout_") for c in hypothesis1.comparisons)
    rivals = {m for c in hypothesis1.comparisons for m in c.others}
    assert {get_model_spec(m).family for m in rivals} == {"vmamba", "vim", "local_vim", "local_vmamba", "plainmamba"}
    causal = get_preset("causal")
    assert [(c.reference, c.others) for c in causal.comparisons] == [
        (f"deit_{s}", (f"deit_{s}_causal",)) for s in ("tiny", "small", "base")]
    assert set(causal.models) == {m for m in list_models("deit_*") if "test" not in m}
    with pytest.raises(KeyError, match="Closest: causal"):
        get_preset("casual")


def test_torchrun_runs_each_study_run_on_all_processes(shapes, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "mambaout.cli", "study", str(shapes), "--models", "mambaout_test", "--seeds", "2", "--epochs", "1",
               "--img-size", "32", "--output", str(tmp_path), *cli_flags(dict(FAST, batch_size=4)), *BENCH]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert {name: args["world_size"] for name, args in _args(tmp_path).items()} == {
        "mambaout_test-seed42": 2, "mambaout_test-seed43": 2}
    assert len(_rows(tmp_path / "study.csv")) == 3  # two runs and their mean, written once
