"""Our models through timm's registry and data pipeline, and through the Hugging Face Hub's cache (no network)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image
from timm.data import ImageDataset, create_loader, create_transform, resolve_data_config
from timm.models import PretrainedCfg

import mambaout
from mambaout.apps import push_to_hub as push_module
from mambaout.checkpoints import CheckpointError
from mambaout.cli import main
from mambaout.registry import UnknownModelError
from mambaout.tasks.classification.predict import eval_transform
from mambaout.tasks.classification.validate import validate
from mambaout.timm_models import TIMM_OWNED

pytestmark = pytest.mark.usefixtures("one_thread")

# one test variant per family, from the registry
FAMILY_TESTS = sorted({mambaout.get_model_spec(n).family: n for n in mambaout.list_models("*_test")}.values())


def test_every_family_has_a_test_variant_in_timm():
    families = {mambaout.get_model_spec(n).family for n in mambaout.list_models()}
    assert {mambaout.get_model_spec(n).family for n in FAMILY_TESTS} == families
    ours = set(timm.list_models(module="timm_models"))
    assert ours == set(mambaout.list_models()) - set(TIMM_OWNED)
    assert set(TIMM_OWNED) == {n for n in mambaout.list_models("mambaout_*") if n != "mambaout_test"}


@pytest.mark.parametrize("name", FAMILY_TESTS)
def test_timm_create_model_builds_what_create_model_builds(name):
    torch.manual_seed(3)
    theirs = timm.create_model(name, num_classes=5, drop_path_rate=0.1, in_chans=3).eval()
    torch.manual_seed(3)
    ours = mambaout.create_model(name, num_classes=5, drop_path_rate=0.1).eval()
    assert type(theirs) is type(ours) and theirs.num_classes == 5
    size = ours.pretrained_cfg["input_size"][1:]
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    assert theirs.pretrained_cfg["architecture"] == name
    torch.manual_seed(3)
    unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
    torch.manual_seed(3)
    expected = mambaout.create_model(name, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        torch.testing.assert_close(unpooled(x), expected(x), rtol=0, atol=0)
    assert isinstance(timm.models.get_pretrained_cfg(name), PretrainedCfg)

    features = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        maps = features(x)
    info = features.feature_info
    shapes = [(c, size[0] // r, size[1] // r) for c, r in zip(info.channels(), info.reduction(), strict=True)]
    assert [m.shape[1:] for m in maps] == shapes
    backbone = mambaout.create_backbone(name, norm_outputs=False).eval()
    if not backbone.plain:  # hierarchical: the stage maps a dense backbone takes, unnormalized
        backbone.body.load_state_dict(features.model.state_dict(), strict=False)
        with torch.no_grad():
            expected = backbone(x)
        assert len(maps) == len(expected) == 4
        for got, want in zip(maps, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_timm_names_stay_timms():
    assert type(timm.create_model("mambaout_femto")).__module__ == "timm.models.mambaout"
    assert "vmamba_tiny" in timm.list_models("vmamba*")
    assert "vim_tiny" in timm.list_models(pretrained=True)
    assert timm.models.get_pretrained_cfg("vim_tiny").hf_hub_id == "hustvl/Vim-tiny-midclstok"
    with pytest.raises(UnknownModelError, match="no pretrained tag 'in22k'"):
        timm.create_model("vmamba_test.in22k")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """val/ of 3 classes, 6 noise images each, of several sizes (so that resize and crop matter)."""
    root = tmp_path_factory.mktemp("shapes")
    generator = torch.Generator().manual_seed(0)
    for c in range(3):
        (root / "val" / f"class{c}").mkdir(parents=True)
        for i in range(6):
            height, width = 50 + 7 * i, 90 - 5 * i
            pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / "val" / f"class{c}" / f"{i}.png")
    return root


def test_timms_data_pipeline_gives_mambaout_validates_top1(shapes, tmp_path):
    weights = tmp_path / "vmamba.safetensors"
    names = ["class0", "class1", "class2"]
    mambaout.save_checkpoint(mambaout.create_model("vmamba_test", num_classes=3), weights, names)
    model = timm.create_model("vmamba_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    assert model.pretrained_cfg["label_names"] == names
    config = resolve_data_config({}, model=model)
    dataset = ImageDataset(str(shapes / "val"), transform=create_transform(**config))
    loader = create_loader(dataset, input_size=config["input_size"], batch_size=5, use_prefetcher=False,
                           interpolation=config["interpolation"], mean=config["mean"], std=config["std"],
                           crop_pct=config["crop_pct"], crop_mode=config["crop_mode"], num_workers=0)
    correct, logits = 0, []
    with torch.no_grad():
        for images, targets in loader:
            out = model(images)
            logits.append(out)
            correct += int((out.argmax(1) == targets).sum())
    ours = validate(shapes, "vmamba_test", checkpoint=weights, batch_size=4, workers=0, device="cpu", progress=False)
    assert ours.images == len(dataset) == 18
    assert ours.top1 == pytest.approx(100 * correct / len(dataset))
    # the same preprocessing image by image: timm's transform and ours give the same logits
    transform = eval_transform(model)
    path, _ = dataset.reader.samples[7]
    with torch.no_grad():
        direct = model(transform(Image.open(path).convert("RGB"))[None])
    torch.testing.assert_close(direct[0], torch.cat(logits)[7], rtol=1e-5, atol=1e-5)


class LocalHub:
    """Stands in for the Hub: what `upload_folder` receives lands in a folder, one commit per upload."""

    def __init__(self, root: Path) -> None:
        self.root, self.commits = root, 0

    def create_repo(self, repo_id, private=False, exist_ok=False):
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
        self.commits += 1
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return type("CommitInfo", (), {"commit_url": f"local://{repo_id}/commit/{self.commits}"})()


def hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder` as huggingface_hub caches a downloaded snapshot: blobs named by SHA-256, a snapshot, refs/main."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for file in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder as `mambaout train` leaves it: best.pth, args.yaml and summary.csv (two epochs)."""
    root = tmp_path_factory.mktemp("run")
    for split, count in (("train", 4), ("val", 2)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30))):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), tuple(v + 5 * i for v in colour)).save(folder / f"{i}.png")
    code = main(["train", str(root / "data"), "--model", "plainmamba_test", "--epochs", "2", "-b", "4",
                 "--workers", "0", "--output", str(root), "--experiment", "run", "--warmup-epochs", "0",
                 "--amp", "fp32", "--aug-repeats", "0", "--mixup", "0", "--cutmix", "0",
                 "--model-ema-decay", "0"])
    assert code == 0
    return root / "run"


def test_pushed_run_loads_back_bit_identical_by_hub_name_offline(trained_run, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(push_module, "HfApi", lambda **kwargs: hub)
    assert main(["push-to-hub", str(trained_run), "me/plainmamba-colours"]) == 0
    pushed = tmp_path / "hub" / "me" / "plainmamba-colours"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((pushed / "config.json").read_text())
    assert config["architecture"] == "plainmamba_test" and config["num_classes"] == 2
    assert config["label_names"] == ["c0", "c1"]
    card = (pushed / "README.md").read_text()
    args = yaml.safe_load((trained_run / "args.yaml").read_text())
    summary = (trained_run / "summary.csv").read_text().splitlines()
    best = mambaout.load_checkpoint(trained_run / "best.pth")
    assert f"{args['recipe']} (another model's" in card  # plainmamba_test trains with PlainMamba-L1's recipe
    assert "library_name: timm" in card and "Validation" in card and "top1:" in card
    assert "epochs: 2" in card and len(summary) == 3

    local = mambaout.create_model(f"local-dir:{pushed}")  # timm's local-dir: source, in-process
    for key, value in best.state_dict().items():
        assert torch.equal(local.state_dict()[key], value), key

    cache = tmp_path / "hf-cache"
    hub_cache(cache, "me/plainmamba-colours", pushed)
    torch.save(best.state_dict(), tmp_path / "expected.pth")
    script = textwrap.dedent(f"""
        import json, sys, timm, torch
        import mambaout
        from mambaout.checkpoints import CheckpointError, PretrainedUnavailableError, fetch_pretrained
        expected = torch.load({str(tmp_path / 'expected.pth')!r}, weights_only=True)
        ours = mambaout.create_model("hf-hub:me/plainmamba-colours")
        theirs = timm.create_model("hf-hub:me/plainmamba-colours", pretrained=True)
        result = {{
            "ours": all(torch.equal(ours.state_dict()[k], v) for k, v in expected.items()),
            "timm": all(torch.equal(theirs.state_dict()[k], v) for k, v in expected.items()),
            "labels": theirs.pretrained_cfg["label_names"],
            "type": type(theirs).__name__,
        }}
        cfg = {{"hf_hub_id": "me/plainmamba-colours", "hf_hub_filename": "model.safetensors"}}
        result["release"] = str(fetch_pretrained("plainmamba_test", cfg))
        try:
            mambaout.create_model("hf-hub:me/not-cached")
        except PretrainedUnavailableError as e:
            result["offline"] = str(e)
        blob = fetch_pretrained("plainmamba_test", cfg).resolve()
        data = bytearray(blob.read_bytes()); data[-1] ^= 1; blob.write_bytes(bytes(data))
        try:
            fetch_pretrained("plainmamba_test", cfg)
        except CheckpointError as e:
            result["damaged"] = str(e)
        print(json.dumps(result))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] and result["timm"] and result["type"] == "PlainMamba"
    assert result["labels"] == ["c0", "c1"]
    assert result["release"].startswith(str(cache))
    assert "not in the Hugging Face cache" in result["offline"] and "me/not-cached/config.json" in result["offline"]
    assert "damaged" in result["damaged"]


def test_push_refuses_a_feature_extractor_and_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a feature extractor"):
        push_module.save_for_hub(mambaout.create_model("vim_test", features_only=True), tmp_path / "out")
    assert main(["push-to-hub", str(tmp_path), "me/x", "--local-dir", str(tmp_path / "out")]) == 4
