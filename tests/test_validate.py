"""evaluate() against hand-computed metrics, validate() on a model whose predictions are known, and the CLI."""

import json
import math
from itertools import pairwise

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch import nn

import mambaout
from mambaout.cli import main
from mambaout.data.folder import DatasetError, Skipped
from mambaout.engine.device import DeviceError
from mambaout.tasks.classification.evaluate import evaluate
from mambaout.tasks.classification.predict import eval_transform
from mambaout.tasks.classification.validate import validate

# ---- evaluate() on logits given directly (the model is the identity) ----

# 7 classes; each row's ranking is clear. (logits, target, in top-1, in top-5)
ROWS = [
    ([9, 1, 2, 3, 4, 5, 6], 0, True, True),
    ([9, 1, 2, 3, 4, 5, 6], 3, False, True),  # rank 5: 9, 6, 5, 4, 3
    ([9, 1, 2, 3, 4, 5, 6], 2, False, False),  # rank 6
    ([0, 8, 0, 0, 0, 0, 0], 1, True, True),
    ([1, 2, 3, 4, 5, 6, 7], 0, False, False),
]


def _batches(split_at=(2, 4)):
    """ROWS as batches of (logits, targets, skipped), with a batch whose every file was skipped in the middle."""
    logits = torch.tensor([r[0] for r in ROWS], dtype=torch.float32)
    targets = torch.tensor([r[1] for r in ROWS])
    bounds = [0, *split_at, len(ROWS)]
    batches = [(logits[a:b], targets[a:b], [Skipped(f"bad{a}.jpg", "truncated")]) for a, b in pairwise(bounds)]
    batches.insert(1, (torch.empty(0), torch.empty(0, dtype=torch.long), [Skipped("x.png", "not an image")] * 2))
    return batches


def _expected_loss():
    return sum(math.log(sum(math.exp(v) for v in r[0])) - r[0][r[1]] for r in ROWS) / len(ROWS)


def test_evaluate_matches_hand_computed_metrics():
    model = nn.Identity().train()
    result = evaluate(model, _batches(), "cpu", progress=False)
    assert result.top1 == 100 * 2 / 5 and result.top5 == 100 * 3 / 5
    assert result.loss == pytest.approx(_expected_loss(), rel=1e-6)
    assert result.images == 5 and result.skipped == 3 + 2
    assert result.images_per_second == pytest.approx(5 / result.seconds)
    assert model.training  # the caller's mode is restored


def test_evaluate_with_a_loss_function_and_fewer_than_five_classes():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 0.5], [5.0, 0.0, 1.0]])
    targets = torch.tensor([0, 2, 1])
    batches = [(logits[:1], targets[:1], []), (logits[1:], targets[1:], [])]
    # loss_fn returns a batch mean of the first logit: its weighted mean over images is known
    result = evaluate(nn.Identity(), batches, "cpu", loss_fn=lambda x, t: x[:, 0].mean(), progress=False)
    assert result.top1 == pytest.approx(100 / 3) and result.top5 == 100.0  # top-k with k = 3
    assert result.loss == pytest.approx((3.0 + 0.0 + 5.0) / 3)
    assert result.skipped == 0


def test_evaluate_under_autocast_keeps_the_ranking():
    model = nn.Linear(7, 7, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(7))
    result = evaluate(model, _batches(), "cpu", amp_dtype=torch.bfloat16, progress=False)
    assert result.top1 == 40.0 and result.top5 == 60.0  # small integers: exact in bfloat16
    assert result.loss == pytest.approx(_expected_loss(), rel=1e-2)


def _distributed_rank(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = _batches(split_at=(1, 2, 3, 4))[rank::world]  # disjoint shares, no padding
        result = evaluate(nn.Identity(), mine, "cpu", progress=False)
        (out_dir / f"{rank}.json").write_text(json.dumps(vars(result)))
    finally:
        dist.destroy_process_group()


def test_evaluate_sums_counts_over_distributed_ranks(tmp_path):
    mp.start_processes(_distributed_rank, args=(2, tmp_path / "rdv", tmp_path), nprocs=2, start_method="fork")
    for rank in range(2):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["top1"] == 40.0 and result["top5"] == 60.0 and result["images"] == 5
        assert result["skipped"] == 5 + 2  # one in each of the 5 batches of logits, 2 in the empty batch
        assert result["loss"] == pytest.approx(_expected_loss(), rel=1e-6)


# ---- validate() with a model that tells colours apart ----

CLASSES = ["red", "green", "blue", "cyan", "magenta", "yellow"]  # the checkpoint's order, not sorted
BIAS = [0.0, 0.5, 1.0, 3.0, 2.0, 1.5]  # the ranking of the classes an image's colour does not pick
RGB = {"red": (230, 20, 10), "green": (15, 220, 30), "blue": (20, 10, 240)}


def _colour_model():
    """mambaout_test set by hand: the image's dominant channel (R, G, B) wins by ~45 logits, then BIAS ranks the rest.

    Blocks add nothing (fc2 = 0); the stem and downsampling convs pass R, G, B through their centre taps; LayerNorms
    keep the strongest channel on top; the head turns it into one large logit.
    """
    model = mambaout.create_model("mambaout_test", num_classes=len(CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
        for conv in (model.stem.conv1, model.stem.conv2, *(s.downsample.conv for s in model.stages[1:])):
            for c in range(3):
                conv.weight[c, c, 1, 1] = 1.0
        model.head.pre_logits.fc.weight[:3, :3] = 10 * torch.eye(3)
        model.head.pre_logits.fc.bias[:3] = -5.0
        model.head.fc.weight[:3, :3] = torch.eye(3)
        model.head.fc.bias.copy_(torch.tensor(BIAS))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "colours.safetensors"
    mambaout.save_checkpoint(_colour_model(), path, class_names=CLASSES)
    return path


# (folder = target, colour drawn). Predicted ranking for a red image: red, cyan, magenta, yellow, blue | green;
# for a green one: green, cyan, magenta, yellow, blue | red.
IMAGES = [
    ("red", "red"),  # top-1
    ("red", "red"),  # top-1
    ("red", "green"),  # red is last: miss
    ("green", "green"),  # top-1
    ("green", "red"),  # green is last: miss
    ("blue", "blue"),  # top-1
    ("blue", "red"),  # blue 5th: top-5
    ("yellow", "green"),  # yellow 4th: top-5
]
TOP1, TOP5 = 100 * 4 / 8, 100 * 6 / 8


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """val/ with the IMAGES (8 readable) and 3 unreadable files; no cyan or magenta folder (val may lack classes)."""
    root = tmp_path_factory.mktemp("colours")
    for i, (folder, colour) in enumerate(IMAGES):
        (root / "val" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30), RGB[colour]).save(root / "val" / folder / f"{i}.png")
    (root / "val" / "red" / "notes.jpg").write_text("not an image")
    (root / "val" / "blue" / "empty.png").touch()
    data = (root / "val" / "red" / "0.png").read_bytes()
    (root / "val" / "green" / "cut.png").write_bytes(data[: len(data) // 2])
    return root


def _oracle_loss(model, root):
    """Mean cross-entropy of the model, run image by image on the readable files."""
    model.eval()
    transform = eval_transform(model)
    losses = []
    for i, (folder, _) in enumerate(IMAGES):
        x = transform(Image.open(root / "val" / folder / f"{i}.png").convert("RGB"))[None]
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x), torch.tensor([CLASSES.index(folder)])).item())
    return sum(losses) / len(losses)


def test_validate_reports_the_known_accuracy_and_counts_unreadable_files(checkpoint, colours, caplog):
    result = validate(colours, "mambaout_test", checkpoint=checkpoint, batch_size=3, workers=0, device="cpu")
    assert result.top1 == TOP1 and result.top5 == TOP5
    assert result.images == 8 and result.skipped == 3
    model = mambaout.create_model("mambaout_test", checkpoint=checkpoint)
    assert result.loss == pytest.approx(_oracle_loss(model, colours), rel=1e-4)
    for name in ("notes.jpg", "empty.png", "cut.png"):
        assert name in caplog.text


def test_validate_refuses_a_folder_that_is_not_a_checkpoint_class(checkpoint, tmp_path):
    (tmp_path / "val" / "purple").mkdir(parents=True)
    Image.new("RGB", (8, 8), RGB["red"]).save(tmp_path / "val" / "purple" / "0.png")
    with pytest.raises(DatasetError, match="not in the checkpoint's class names: purple"):
        validate(tmp_path, "mambaout_test", checkpoint=checkpoint, workers=0, device="cpu")


def test_without_class_names_folders_must_fit_the_head(tmp_path):
    path = tmp_path / "two.safetensors"
    mambaout.save_checkpoint(mambaout.create_model("mambaout_test", num_classes=2), path)  # no class names stored
    for name in ("a", "b", "c"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), RGB["red"]).save(tmp_path / "val" / name / "0.png")
    with pytest.raises(DatasetError, match=r"3 class folders in .* but the model has 2 outputs and no class names"):
        validate(tmp_path, "mambaout_test", checkpoint=path, workers=0, device="cpu")


def test_validate_refuses_a_device_that_is_not_there(colours):
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        validate(colours, "mambaout_test", device="gpu")


# ---- the command ----


def test_cli_prints_the_numbers(checkpoint, colours, capsys):
    args = ["validate", str(colours), "--model", "mambaout_test", "--checkpoint", str(checkpoint), "--workers", "0"]
    assert main([*args, "--device", "cpu", "-b", "4"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {TOP1:.3f}  top-5 {TOP5:.3f}  loss " in out and "images 8  skipped 3  images/s " in out
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["top1"], report["top5"], report["images"], report["skipped"]) == (TOP1, TOP5, 8, 3)


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [  # exit status: 3 an unknown name, 5 bad data
        (["--model", "mambaout_tesst"], "unknown model 'mambaout_tesst'", 3),
        (["--model", "mambaout_test", "--split", "valid"], "no 'valid' split in", 5),
    ],
)
def test_cli_bad_input_is_a_one_line_error(colours, capsys, args, message, status):
    assert main(["validate", str(colours), *args, "--workers", "0"]) == status
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err
