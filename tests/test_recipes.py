"""Official recipes: every value against the official code's (fixture), resolution into TrainConfig, overrides,
batch scaling, the EMA policy, the staircase warmup, `mambaout recipes` and `train --recipe`."""

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import mambaout
from mambaout.cli import main
from mambaout.data.synthetic import write_dataset
from mambaout.engine import loop
from mambaout.engine.checkpointing import load_training_checkpoint
from mambaout.engine.config import ConfigError, read_config_file
from mambaout.engine.schedules import StaircaseWarmupCosine
from mambaout.recipes import VOCABULARY, get_recipe, list_recipes
from mambaout.registry import recipe_for
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import train

FIXTURE = yaml.safe_load((Path(__file__).parent / "fixtures" / "official_recipes.yaml").read_text())

# Where our recipe value is not the official code's, and why: each reason must be in the recipe's `differences`
# (what `mambaout recipes MODEL` and the README show). Keys: (official configuration or '*' for all, option).
KNOWN_DIFFERENCES = {
    ("vmamba*", "best_by"): "VMamba keeps every epoch's checkpoint and no best one",
    ("vmamba2_tiny", "release_weights"): "the README does not say whether the s1l8/s1l20 numbers are the EMA's",
    ("vmamba2_small", "release_weights"): "the README does not say whether the s1l8/s1l20 numbers are the EMA's",
    ("vmamba2_base", "release_weights"): "the README does not say whether the s1l8/s1l20 numbers are the EMA's",
    ("plainmamba*", "best_by"): "mmcls keeps no best checkpoint",
    ("plainmamba*", "remode"): "mmcls's RandomErasing mode 'rand'",
    ("plainmamba*", "aa"): "mmcls's rand_increasing_policies op set runs as timm's",
    ("plainmamba*", "color_jitter"): None,  # official: no ColorJitter (null); ours 0.0, the same transform
    ("local_*", "aa"): None,  # official: a description of the toolbox's op set; ours names that op set
    ("local_vmamba_tiny", "release_weights"): None,  # official: no weights released yet; ours: the model
}
OUR_EQUIVALENTS = {  # the official description -> the value that runs it here
    ("local_*", "aa"): "localmamba-rand-m9-mstd0.5",
    ("plainmamba*", "color_jitter"): 0.0,
    ("local_vmamba_tiny", "release_weights"): "model",
}


def _known(table: dict, config: str, key: str):
    for (pattern, option), value in table.items():
        if option == key and (pattern == config or (pattern.endswith("*") and config.startswith(pattern[:-1]))):
            return True, value
    return False, None


def _same(ours, theirs) -> bool:
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, float) or isinstance(theirs, float):
        return ours is not None and theirs is not None and math.isclose(ours, theirs, rel_tol=1e-9)
    return ours == theirs


@pytest.mark.parametrize("config", sorted(FIXTURE))
def test_every_recipe_value_is_the_official_codes_or_a_stated_difference(config):
    item, _ = recipe_for(config)
    assert item.name == ("local_vim_tiny" if config == "local_vim_tiny_middle_cls_token" else config)
    checked = 0
    for key, entry in FIXTURE[config].items():
        if key not in VOCABULARY:
            continue
        ours, theirs = item.values[key], entry["value"]
        known, reason = _known(KNOWN_DIFFERENCES, config, key)
        if known:
            assert not _same(ours, theirs), f"{config}.{key} is no longer a difference: drop it from the table"
            if reason is not None:
                assert any(reason in d for d in item.differences), f"{config}.{key}: the recipe does not say why"
            has_equivalent, equivalent = _known(OUR_EQUIVALENTS, config, key)
            if has_equivalent:
                assert ours == equivalent
        else:
            assert _same(ours, theirs), f"{config}.{key}: ours {ours!r}, official {theirs!r} ({entry['source']})"
        assert item.source_of(key), f"{config}.{key} has no source"
        checked += 1
    assert checked >= 40  # the fixture covers the whole vocabulary (momentum and our rule names aside)


def test_every_registered_model_trains_with_a_recipe_and_the_vocabulary_is_trainconfigs():
    for name in mambaout.list_models():
        item, fallback = recipe_for(name)
        assert item.name in list_recipes()
        spec = mambaout.get_model_spec(name)
        if "_test" in name or name.endswith("_rw") or name.endswith("_causal"):
            assert fallback is not None and fallback.why, name  # says which recipe it borrows, and why
        else:
            assert fallback is None and (item.name == name or name == "local_vim_tiny_middle_cls_token"), name
        assert spec.dense.source
    from_recipe = {f.name for f in TrainConfig.fields() if f.metadata.get("from_recipe")}
    assert from_recipe == set(VOCABULARY)
    for name in list_recipes():
        item = get_recipe(name)
        assert set(item.values) == set(VOCABULARY) == set(item.sources)
        assert all(item.sources.values())


def test_the_model_recipe_is_the_default_and_overrides_are_recorded():
    config = TrainConfig(model="vmamba_small")
    recipe = get_recipe("vmamba_small")
    assert (config.recipe, config.drop_path, config.model_ema_decay, config.clip_grad) == ("vmamba_small", 0.3,
                                                                                          0.9999, 5.0)
    assert config.recipe_report.own and not config.recipe_report.overrides
    assert all(_same(getattr(config, k), v) for k, v in recipe.values.items())
    other = TrainConfig(model="vmamba_small", recipe="mambaout_tiny", drop_path=0.3)
    assert (other.recipe, other.lr, other.global_batch_size, other.model_ema_decay) == ("mambaout_tiny", 4e-3, 4096,
                                                                                        None)
    assert other.recipe_report.overrides == {"drop_path": {"recipe": 0.2, "used": 0.3}}
    assert not other.recipe_report.own and "chosen with --recipe" in other.recipe_report.lines()[0]
    test_variant = TrainConfig(model="vim_test")
    assert test_variant.recipe == "vim_tiny" and "test variant" in test_variant.recipe_report.fallback_reason
    with pytest.raises(ConfigError, match=r"unknown recipe 'vmamba_smal'.*vmamba_small"):
        TrainConfig(model="mambaout_test", recipe="vmamba_smal")
    with pytest.raises(ConfigError, match="unknown model"):
        TrainConfig(model="mambaout_tiniest")
    with pytest.raises(ConfigError, match="shorter than the 20 warmup epochs"):
        TrainConfig(model="mambaout_test", epochs=5)
    with pytest.raises(ConfigError, match="--no-weight-decay must be one of mmcls, swin, timm"):
        TrainConfig(model="mambaout_test", no_weight_decay="all")


def test_the_lr_follows_the_global_batch_by_the_recipes_rule():
    # VMamba scales linearly, warmup and min lr too (main.py); Vim scales the lr only
    vmamba = TrainConfig(model="vmamba_test", batch_size=64)
    assert vmamba.resolved_lr(4) == pytest.approx(1e-3 * 256 / 1024)
    assert vmamba.resolved_min_lrs(4) == pytest.approx((1e-6 / 4, 1e-5 / 4))
    vim = TrainConfig(model="vim_test", batch_size=128)
    assert vim.resolved_lr(8) == pytest.approx(1e-3) and vim.batch_note(8) is None
    assert vim.resolved_lr(2) == pytest.approx(2.5e-4) and vim.resolved_min_lrs(2) == (1e-6, 1e-5)
    assert "--grad-accum-steps 4 reaches it" in vim.batch_note(2)
    # MambaOut's code never scales its lr: the note says how to reach the official batch instead
    femto = TrainConfig(model="mambaout_test", batch_size=128)
    assert femto.resolved_lr(1) == 4e-3 and "--grad-accum-steps 32 reaches it" in femto.batch_note(1)
    assert TrainConfig(model="mambaout_test", batch_size=128, lr_scale="sqrt").resolved_lr(1) == pytest.approx(
        4e-3 * math.sqrt(128 / 4096))
    # --lr alone is the lr of the actual batch; with --global-batch-size it is scaled from that batch
    alone = TrainConfig(model="vim_test", batch_size=8, lr=1e-3)
    assert alone.resolved_lr(1) == 1e-3 and alone.global_batch_size is None and alone.batch_note(1) is None
    assert TrainConfig(model="vim_test", batch_size=8, lr=1e-3, global_batch_size=16).resolved_lr(1) == 5e-4


def test_a_recipes_fp16_runs_as_bf16_or_fp32_on_a_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)
    assert (loop.training_precision("fp16", cpu), loop.training_precision(None, cpu)) == ("bf16", None)
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: False)
    assert loop.training_precision("fp16", cpu) is None and loop.training_precision("bf16", cpu) == "bf16"
    assert loop.training_precision("fp16", torch.device("cuda")) == "fp16"


def _toolbox_lr(n: int, *, lr: float, warmup_lr: float, min_lr: float, epochs: int, warmup: int, steps: int) -> float:
    """LocalMamba's GradualWarmupScheduler + CosineAnnealingLR after n updates, as its scheduler.py computes it."""
    if n < warmup * steps:
        return warmup_lr + (lr - warmup_lr) * (n // steps) / warmup
    k = max(n - warmup * steps - 1, 0)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * k / ((epochs - warmup) * steps))) / 2


def test_the_staircase_warmup_is_localmambas_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    options = dict(epochs=12, warmup=3, steps=5)
    scheduler = StaircaseWarmupCosine(optimizer, epochs=12, warmup_epochs=3, steps_per_epoch=5, lr_min=1e-6,
                                      warmup_lr_init=1e-7)
    for n in range(12 * 5):
        scheduler.step_update(n)
        expected = _toolbox_lr(n, lr=1e-3, warmup_lr=1e-7, min_lr=1e-6, **options)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9), n
    config = TrainConfig(model="local_vim_test")
    assert (config.warmup_staircase, config.warmup_prefix, config.sched_on_updates) == (True, True, True)
    with pytest.raises(ConfigError, match="--warmup-staircase needs"):
        TrainConfig(model="local_vim_test", sched_on_updates=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), train_per_class=4, val_per_class=2, size=32)


def test_a_recipe_that_releases_the_ema_picks_best_by_it_and_gives_it_as_the_model(shapes, tmp_path):
    # PlainMamba-L2's policy: EMA validated, it picks best.pth and is the released model
    options = dict(data_dir=str(shapes), output=str(tmp_path), experiment="run", model="plainmamba_test",
                   recipe="plainmamba_l2", img_size=32, batch_size=8, workers=0, epochs=3, warmup_epochs=0,
                   max_steps_per_epoch=2, lr=2e-3, model_ema_decay=0.5)
    config = TrainConfig(**options)
    assert (config.best_by, config.release_weights, config.model_ema_eval) == ("ema", "ema", True)
    result = train(config)
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert {"val_top1", "ema_val_top1"} <= set(rows[0])
    best_row = max(rows, key=lambda r: float(r["ema_val_top1"]))
    assert result.best_metric == float(best_row["ema_val_top1"]) and result.best_epoch == int(best_row["epoch"])
    best = load_training_checkpoint(tmp_path / "run" / "best.pth")
    assert best["release_weights"] == "model_ema" and best["epoch"] == result.best_epoch
    model = mambaout.create_model("plainmamba_test", checkpoint=tmp_path / "run" / "best.pth")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best["model_ema"][name]), name
    plain = mambaout.create_model("plainmamba_test", checkpoint=tmp_path / "run" / "best.pth", use_ema=False)
    assert any(not torch.equal(plain.state_dict()[k], v) for k, v in best["model_ema"].items())
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert args["recipe"] == "plainmamba_l2" and args["recipe_is_own"] is False
    assert set(args["overrides"]) == {"epochs", "warmup_epochs", "model_ema_decay"}


# the family test models, each at its own recipe's defaults; only what keeps the run tiny is set
FAMILY_MODELS = mambaout.list_models("*_test")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_each_familys_own_recipe_trains_at_its_defaults(shapes, tmp_path, name):
    config = TrainConfig(data_dir=str(shapes), output=str(tmp_path), model=name, img_size=32, batch_size=4,
                         workers=0, epochs=2, warmup_epochs=1, max_steps_per_epoch=2)
    assert set(config.recipe_report.overrides) == {"epochs", "warmup_epochs"}
    result = train(config)
    assert result.epochs_run == 2 + config.cooldown_epochs
    assert all(math.isfinite(v) for v in result.final_metrics.values())
    args = yaml.safe_load((result.output_dir / "args.yaml").read_text())
    assert args["recipe"] == recipe_for(name)[0].name and set(args["overrides"]) == {"epochs", "warmup_epochs"}


def test_recipes_command_table_json_and_yaml_that_train_reads_back(capsys, tmp_path):
    assert main(["recipes"]) == 0
    table = capsys.readouterr().out
    for name in mambaout.list_models():
        assert f"\n{name} " in table
    assert "* not the model's own" in table
    assert main(["recipes", "vmamba_small", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == "vmamba_small" and data["global_batch_size"] == 1024 and data["lr"] == 1e-3
    assert data["model_ema_decay"] == 0.9999 and data["aug_repeats"] == 0 and set(data["sources"]) == set(VOCABULARY)
    assert main(["recipes", "deit_tiny_causal", "--yaml"]) == 0
    text = capsys.readouterr().out
    assert "deit_tiny_causal trains with deit_tiny's recipe" in text and "aug_repeats: 3  # " in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    options = read_config_file(path, TrainConfig)
    config = TrainConfig(model="deit_tiny_causal", **options)
    assert config.recipe == "deit_tiny" and not config.recipe_report.overrides
    assert main(["recipes", "vmamba_smal"]) == 3
    assert "Closest: vmamba_small" in capsys.readouterr().err


def test_train_with_another_models_recipe_from_the_command_line(shapes, tmp_path, capsys):
    code = main(["train", str(shapes), "--model", "mambaout_test", "--recipe", "vmamba2_tiny", "--img-size", "32",
                 "-b", "4", "-j", "0", "--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "1",
                 "--no-model-ema-eval", "--output", str(tmp_path), "--experiment", "run"])
    assert code == 0
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert args["recipe"] == "vmamba2_tiny" and args["clip_grad"] == 5.0 and args["warmup_prefix"] is True
    assert set(args["overrides"]) == {"epochs", "warmup_epochs", "model_ema_eval"}
    assert args["lr_used"] == pytest.approx(1e-3 * 4 / 1024)


def _schedule(config: TrainConfig, steps_per_epoch: int):
    from mambaout.tasks.classification.task import ClassificationTask

    task = ClassificationTask(config)
    task.world_size = 1
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.resolved_lr(1))
    scheduler, epochs = task.schedule(optimizer, steps_per_epoch)
    return optimizer, scheduler, epochs


def test_epochs_count_a_prefix_warmup_in_and_cooldown_comes_after():
    # VMamba: 10 epochs in all, the first 2 a per-update warmup prefix, then the cosine to min_lr, no cooldown
    config = TrainConfig(model="vmamba_test", epochs=10, warmup_epochs=2, batch_size=1024)
    optimizer, scheduler, epochs = _schedule(config, steps_per_epoch=4)
    assert epochs == 10
    lrs = []
    for update in range(10 * 4 + 1):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6) and lrs[8] == pytest.approx(1e-3) and lrs[40] == pytest.approx(1e-5)
    assert all(a < b for a, b in itertools.pairwise(lrs[:9])) and all(a >= b for a, b in itertools.pairwise(lrs[8:]))
    # MambaOut: the warmup is the schedule's start (per epoch), and timm's 10 cooldown epochs run after the 300
    assert _schedule(TrainConfig(model="mambaout_test"), steps_per_epoch=4)[2] == 310


def test_clipping_by_value_bounds_every_gradient(shapes, tmp_path):
    start = mambaout.create_model("mambaout_test", num_classes=10)
    mambaout.save_checkpoint(start, tmp_path / "start.safetensors")
    # plain SGD at lr 1: one step moves each weight by its clipped gradient, so by at most the clip value
    config = TrainConfig(data_dir=str(shapes), output=str(tmp_path), experiment="run", model="mambaout_test",
                         initial_checkpoint=str(tmp_path / "start.safetensors"), img_size=32, batch_size=8, workers=0,
                         epochs=1, warmup_epochs=0, cooldown_epochs=0, max_steps_per_epoch=1, no_aug=True, mixup=0,
                         cutmix=0, drop_path=0, opt="momentum", momentum=0, weight_decay=0, lr=1.0, clip_grad=1e-3,
                         clip_mode="value", val_split="")
    train(config)
    after = load_training_checkpoint(tmp_path / "run" / "last.pth")["model"]
    moves = torch.stack([(after[k] - v).abs().max() for k, v in start.state_dict().items() if v.is_floating_point()])
    assert 0 < moves.max() <= 1e-3 + 1e-6  # float32 rounding of weights near 1
    with pytest.raises(ConfigError, match="--clip-mode must be one of"):
        TrainConfig(model="mambaout_test", clip_mode="l2")
