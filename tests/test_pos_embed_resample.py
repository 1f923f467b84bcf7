"""Position tables resampled when a checkpoint is loaded into a token model on another patch grid (another stride:
Vim-Ti -> Vim-Ti+, or another input size), and Vim+ fine-tuning from a stride-16 checkpoint with the training engine.

The oracle is written here with F.interpolate: bicubic, align_corners=False, no antialias (what the official
fine-tuning code of every family uses: hustvl/Vim and facebookresearch/deit main.py --finetune, hunto/LocalMamba
load_pretrained, PlainMamba's mmcls resize_pos_embed), the class-token row kept where the model puts it.
"""

import logging
import re

import pytest
import torch
import torch.nn.functional as F

from mambaout import create_model, save_checkpoint
from mambaout.checkpoints import CheckpointError, CheckpointMismatchError
from mambaout.data.synthetic import write_dataset
from mambaout.engine.checkpointing import load_training_checkpoint
from mambaout.tasks.classification import task as train_module
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import train

MID = "mid"  # the class row sits at index H*W // 2 (Vim, LocalVim's middle-class-token variant)


def oracle(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int], cls: str | int | None) -> torch.Tensor:
    """`table` (..., [1 +] H*W, C): the patch rows resized on their grid, the class row (at `cls`) kept."""
    channels = table.shape[-1]
    if cls is not None:
        index = old[0] * old[1] // 2 if cls == MID else cls
        cls_row = table[..., index : index + 1, :]
        table = torch.cat((table[..., :index, :], table[..., index + 1 :, :]), dim=-2)
    grid = table.reshape(-1, *old, channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=False)
    out = grid.permute(0, 2, 3, 1).reshape(*table.shape[:-2], new[0] * new[1], channels)
    if cls is not None:
        index = new[0] * new[1] // 2 if cls == MID else cls
        out = torch.cat((out[..., :index, :], cls_row, out[..., index:, :]), dim=-2)
    return out


def official_vim_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> hustvl/Vim's names (layers.I.*, norm_f.*), as in its release files under 'model'."""
    return {re.sub(r"^norm\.", "norm_f.", re.sub(r"^blocks\.", "layers.", k)): v for k, v in state_dict.items()}


def write(model: torch.nn.Module, path, layout: str = "ours"):
    if layout == "ours":
        save_checkpoint(model, path)
    else:
        torch.save({"model": official_vim_layout(model.state_dict()), "epoch": 299}, path)
    return path


def assert_rest_loaded(loaded: torch.nn.Module, source: dict[str, torch.Tensor], tables: set[str]) -> None:
    """Every tensor but the position tables is the checkpoint's."""
    for key, value in loaded.state_dict().items():
        if key not in tables:
            assert torch.equal(value, source[key]), key


# ---------------------------------------------------------------------------------------------------------------------
# Vim-Ti (stride 16, 14x14) -> Vim-Ti+ (stride 8, 27x27), the real models


@pytest.fixture(scope="module")
def vim_tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("vim_tiny")
    folder = tmp_path_factory.mktemp("vim_tiny")
    files = {"ours": write(model, folder / "vim_tiny.safetensors"),
             "official": write(model, folder / "vim_t_midclstok_76p1acc.pth", "official")}
    return model.state_dict(), files


@pytest.mark.parametrize("layout", ["ours", "official"])
def test_a_vim_tiny_checkpoint_loads_into_vim_tiny_plus(vim_tiny, layout, caplog):
    source, files = vim_tiny
    with caplog.at_level(logging.INFO, logger="mambaout"):
        plus = create_model("vim_tiny_plus", checkpoint=files[layout])
    assert plus.grid_size == (27, 27) and plus.pos_embed.shape == (1, 730, 192)
    expected = oracle(source["pos_embed"], (14, 14), (27, 27), MID)
    torch.testing.assert_close(plus.pos_embed.data, expected, atol=1e-6, rtol=0)
    # the middle class row moves from 196 // 2 to 729 // 2, unchanged
    assert torch.equal(plus.pos_embed[:, 364], source["pos_embed"][:, 98])
    assert_rest_loaded(plus, source, {"pos_embed"})
    lines = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(lines) == 1 and "pos_embed 14x14 -> 27x27" in lines[0]


def test_vim_tiny_plus_runs_after_loading_at_its_own_input_size(vim_tiny):
    plus = create_model("vim_tiny_plus", checkpoint=vim_tiny[1]["official"]).eval()
    with torch.no_grad():
        out = plus(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------------
# test variants: another stride, another input size

# name, overrides giving another grid, the grid they give, the tables and where their class row sits
CASES = {
    "vim_stride8": ("vim_test", dict(patch_stride=8), 64, (7, 7), {"pos_embed": MID}),
    "vim_96": ("vim_test", dict(img_size=96), 96, (6, 6), {"pos_embed": MID}),
    "deit_96": ("deit_test", dict(img_size=96), 96, (6, 6), {"pos_embed": 0}),
    "plainmamba_96": ("plainmamba_test", dict(img_size=96), 96, (6, 6), {"pos_embed": None}),
    "local_vim_96": ("local_vim_test", dict(img_size=96), 96, (6, 6),
                     {"pos_embed": None, "rope.freqs_cos": None, "rope.freqs_sin": None}),
    "local_vim_mid_cls_96": ("local_vim_mid_cls_test", dict(img_size=96), 96, (6, 6), {"pos_embed": MID}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_checkpoint_loads_into_the_model_on_another_grid_and_runs(case, tmp_path, caplog):
    name, overrides, size, grid, tables = CASES[case]
    source = create_model(name)
    path = write(source, tmp_path / f"{name}.safetensors")
    with caplog.at_level(logging.INFO, logger="mambaout"):
        model = create_model(name, checkpoint=path, **overrides)
    assert tuple(model.grid_size) == grid
    theirs, ours = source.state_dict(), model.state_dict()
    for key, cls in tables.items():
        torch.testing.assert_close(ours[key], oracle(theirs[key], (4, 4), grid, cls), atol=1e-6, rtol=0)
    assert_rest_loaded(model, theirs, set(tables))
    (line,) = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert all(f"{key} 4x4 -> {grid[0]}x{grid[1]}" in line for key in tables)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["ours", "official"])
def test_the_stride8_test_variant_reads_both_vim_layouts(layout, tmp_path):
    source = create_model("vim_test")
    path = write(source, tmp_path / ("v.safetensors" if layout == "ours" else "v.pth"), layout)
    model = create_model("vim_test", checkpoint=path, patch_stride=8)
    expected = oracle(source.pos_embed.data, (4, 4), (7, 7), MID)
    torch.testing.assert_close(model.pos_embed.data, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name", ["vim_test", "deit_test", "plainmamba_test", "local_vim_test", "local_vim_mid_cls_test"]
)
def test_resampling_to_the_same_grid_is_the_identity(name, tmp_path, caplog):
    model = create_model(name)
    state_dict = model.state_dict()
    out, resampled = model.resample_checkpoint(state_dict)
    assert resampled == {}
    assert out.keys() == state_dict.keys() and all(out[k] is state_dict[k] for k in state_dict)
    with caplog.at_level(logging.INFO, logger="mambaout"):
        loaded = create_model(name, checkpoint=write(model, tmp_path / "same.safetensors"))
    assert not [r for r in caplog.records if "resampled" in r.getMessage()]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


# ---------------------------------------------------------------------------------------------------------------------
# what resampling does not fix still fails, naming the keys


def test_a_checkpoint_that_does_not_fit_otherwise_still_names_the_keys(tmp_path):
    source = create_model("vim_test").state_dict()
    del source["norm.weight"]
    source["bogus.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"model": source}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        create_model("vim_test", checkpoint=path, patch_stride=8)
    message = str(error.value)
    assert "missing keys: norm.weight" in message and "unexpected keys: bogus.weight" in message
    assert "pos_embed" not in message  # that one was resampled to the 7x7 grid


def test_another_width_is_a_shape_mismatch_not_a_resampling(tmp_path):
    path = write(create_model("vim_test", embed_dim=48), tmp_path / "wide.pth", "official")
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed: checkpoint \(1, 17, 48\) vs model \(1, 50, 32\)"):
        create_model("vim_test", checkpoint=path, patch_stride=8)


def test_a_grid_that_is_not_square_is_left_to_the_strict_check(tmp_path):
    path = write(create_model("deit_test", img_size=(64, 96)), tmp_path / "wide.safetensors")  # 4x6 patches
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed: checkpoint \(1, 25, 32\) vs model \(1, 17, 32\)"):
        create_model("deit_test", checkpoint=path)


def test_a_checkpoint_of_another_model_of_the_family_that_does_not_fit_names_both(tmp_path):
    path = write(create_model("vim_test"), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointMismatchError, match="saved from vim_test, not vim_tiny") as error:
        create_model("vim_tiny", checkpoint=path)
    assert "shape mismatches" in str(error.value)


def test_a_checkpoint_of_another_family_is_still_refused_by_name(tmp_path):
    path = write(create_model("deit_test"), tmp_path / "deit.safetensors")
    with pytest.raises(CheckpointError, match="saved from deit_test, not vim_test"):
        create_model("vim_test", checkpoint=path)


# ---------------------------------------------------------------------------------------------------------------------
# Vim-Ti+ fine-tuning with the engine, from a Vim-Ti checkpoint (the official release layout)


def test_vim_tiny_plus_fine_tunes_from_the_stride16_checkpoint(vim_tiny, tmp_path, monkeypatch):
    source, files = vim_tiny
    data = write_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, size=32)
    started = {}

    def create_and_record(*args, **kwargs):
        model = create_model(*args, **kwargs)
        started["pos_embed"] = model.pos_embed.detach().clone()
        started["checkpoint"] = kwargs.get("checkpoint")
        return model

    monkeypatch.setattr(train_module, "create_model", create_and_record)
    config = TrainConfig(
        model="vim_tiny_plus",
        initial_checkpoint=str(files["official"]),
        data_dir=str(data),
        output=str(tmp_path),
        experiment="ft",
        # the run's size only; everything else left None is Vim-Ti+'s official fine-tuning recipe
        epochs=1, max_steps_per_epoch=2, img_size=32, batch_size=2, workers=0, warmup_epochs=0, aug_repeats=0,
        no_aug=True, mixup=0.0, cutmix=0.0, model_ema_decay=0.0,
    )
    assert config.recipe == "vim_tiny_plus" and config.lr == 1e-5 and config.weight_decay == 1e-8
    result = train(config)
    assert started["checkpoint"] == str(files["official"])
    expected = oracle(source["pos_embed"], (14, 14), (27, 27), MID)
    torch.testing.assert_close(started["pos_embed"], expected, atol=1e-6, rtol=0)
    assert result.epochs_run == 1
    trained = load_training_checkpoint(tmp_path / "ft" / "last.pth")["model"]
    assert trained["pos_embed"].shape == (1, 730, 192)
