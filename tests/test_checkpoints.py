"""Checkpoint handling: wrappers, the official MambaOut layout, strict loading, safe reading, save/load, downloads.

Everything is made in tmp_path from the tiny `mambaout_test` model (64x64 inputs); `mambaout_femto` only where
the official release layout is needed. Nothing here touches the network: downloads use file:// URLs, and the
"offline" case the loopback address on a closed port.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import logging
import os
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mambaout import create_model, load_checkpoint, save_checkpoint
from mambaout.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    PretrainedUnavailableError,
    Weights,
    cache_dir,
    check_fits,
    fetch_pretrained,
    load_weights,
    read_checkpoint,
    read_metadata,
    unwrap,
)
from mambaout.checkpoints.layouts import convert_mambaout
from mambaout.registry import get_model_spec

TEST = "mambaout_test"
CLASSIFIER = "head.fc"
OFFLINE_URL = "http://127.0.0.1:9/x.pth"  # loopback, closed port: refused at once
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def scrambled(name: str = TEST, seed: int = 1, **kwargs) -> torch.nn.Module:
    """A model whose every tensor (norm weights and biases included) is distinct, so a mixed-up key shows."""
    model = create_model(name, **kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=gen))
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X)


def clone_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save(obj, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source():
    """(state_dict, logits) of a scrambled mambaout_test with 1000 classes; never modified."""
    model = scrambled(seed=1)
    return clone_sd(model), logits(model)


@pytest.fixture(scope="module")
def other():
    """A second, different set of weights for the same architecture (the EMA copy, the model loaded into)."""
    model = scrambled(seed=2)
    return clone_sd(model), logits(model)


def test_scrambled_models_differ(source, other):
    # Sanity for every logits comparison below: two weight sets give different outputs.
    assert not torch.allclose(source[1], other[1])


# --- 1. wrappers -------------------------------------------------------------------------------------------


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


WRAPPERS = {
    "plain.pth": lambda sd: sd,
    "model.pth": lambda sd: {"model": sd, "epoch": 300, "optimizer": {"lr": 0.1}},
    "state_dict.pt": lambda sd: {"state_dict": sd},
    "module.bin": lambda sd: {"module": sd},
    "ddp_prefix.pth": lambda sd: _prefixed(sd, "module."),
    "compile_prefix.pt": lambda sd: _prefixed(sd, "_orig_mod."),
    "both_prefixes_in_model.ckpt": lambda sd: {"model": _prefixed(sd, "module._orig_mod.")},
    "plain.safetensors": lambda sd: sd,
    "ddp_prefix.safetensors": lambda sd: _prefixed(sd, "module."),
    "compile_prefix.safetensors": lambda sd: _prefixed(sd, "_orig_mod."),
}


@pytest.mark.parametrize("file_name", list(WRAPPERS))
def test_wrapped_checkpoints_load_exactly(tmp_path, source, file_name):
    sd, expected = source
    path = save(WRAPPERS[file_name](sd), tmp_path / file_name)
    model = create_model(TEST, checkpoint=path)
    assert torch.equal(logits(model), expected)
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize(("weights_key", "ema_key"), [("model", "model_ema"), ("state_dict", "state_dict_ema")])
def test_ema_copy_only_on_request(tmp_path, source, other, weights_key, ema_key):
    path = save({weights_key: source[0], ema_key: other[0]}, tmp_path / "train.pth")
    assert torch.equal(logits(create_model(TEST, checkpoint=path)), source[1])
    assert torch.equal(logits(create_model(TEST, checkpoint=path, use_ema=True)), other[1])


def test_use_ema_without_ema_falls_back_to_weights(tmp_path, source):
    path = save({"model": source[0]}, tmp_path / "no_ema.pth")
    assert torch.equal(logits(create_model(TEST, checkpoint=path, use_ema=True)), source[1])


def test_unwrap_strips_prefixes_and_drops_non_tensors(source):
    sd = source[0]
    obj = {"model": {**_prefixed(sd, "_orig_mod.module."), "step": 7}, "model_ema": _prefixed(sd, "x.")}
    out = unwrap(obj)
    assert list(out) == list(sd)
    assert all(out[k] is sd[k] for k in sd)


def test_checkpoint_without_tensors_is_refused(tmp_path):
    path = save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "empty_dict.pth")
    with pytest.raises(CheckpointError, match="no tensors found"):
        create_model(TEST, checkpoint=path)


# --- 2. official MambaOut layout ---------------------------------------------------------------------------


def official_key(key: str) -> str:
    """Our (timm) key -> the name yuweihao/MambaOut's release files use."""
    if key.startswith("stem."):
        return "downsample_layers.0." + key[len("stem.") :]
    if m := re.fullmatch(r"stages\.(\d+)\.downsample\.(.+)", key):
        return f"downsample_layers.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        return f"stages.{m[1]}.{m[2]}.{m[3]}"
    for ours, theirs in (
        ("head.pre_logits.fc.", "head.fc1."),
        ("head.pre_logits.norm.", "head.norm."),
        ("head.norm.", "norm."),
        ("head.fc.", "head.fc2."),
    ):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise AssertionError(f"no official name for {key}")


@pytest.fixture(scope="module")
def femto():
    model = scrambled("mambaout_femto", seed=3)
    sd = clone_sd(model)
    official = {official_key(k): v for k, v in sd.items()}
    assert len(official) == len(sd)  # the renaming is one-to-one
    assert not any(k.startswith("stem.") or ".blocks." in k or "pre_logits" in k for k in official)
    return sd, official, logits(model)


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "in_model_key"])
def test_official_mambaout_layout_loads_exactly(tmp_path, femto, wrap):
    sd, official, expected = femto
    path = save({"model": official} if wrap else official, tmp_path / "mambaout_femto.pth")
    model = create_model("mambaout_femto", checkpoint=path)
    assert torch.equal(logits(model), expected)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_official_layout_conversion_is_exact(femto):
    sd, official, _ = femto
    converted = convert_mambaout(official)
    assert converted.keys() == sd.keys()
    assert all(converted[k] is official[official_key(k)] for k in sd)


def test_our_layout_passes_through_unchanged(femto):
    # head.norm exists in both layouts with different meanings: our files must not be renamed.
    sd = femto[0]
    assert convert_mambaout(sd) == sd


# --- 3. mismatches ------------------------------------------------------------------------------------------

MISSING = "stages.2.blocks.1.fc1.weight"
UNEXPECTED = "stages.2.blocks.7.fc1.weight"
RESHAPED = "stem.conv1.weight"


def broken(sd, missing=False, unexpected=False, reshaped=False):
    bad = dict(sd)
    if missing:
        del bad[MISSING]
    if unexpected:
        bad[UNEXPECTED] = torch.zeros(4, 4)
    if reshaped:
        shape = sd[RESHAPED].shape
        bad[RESHAPED] = torch.zeros(shape[0] + 1, *shape[1:])
    return bad


def assert_names_problems(message, sd, missing=False, unexpected=False, reshaped=False):
    assert (MISSING in message) == missing
    assert ("missing keys" in message) == missing
    assert (UNEXPECTED in message) == unexpected
    assert ("unexpected keys" in message) == unexpected
    assert ("shape mismatch" in message) == reshaped
    if reshaped:
        shape = tuple(sd[RESHAPED].shape)
        bigger = (shape[0] + 1, *shape[1:])
        assert re.search(rf"{re.escape(RESHAPED)}\b.*{re.escape(str(bigger))}.*{re.escape(str(shape))}", message)


def test_mismatch_names_everything_and_loads_nothing(source, other):
    sd = source[0]
    model = create_model(TEST).eval()
    model.load_state_dict(other[0])
    before = clone_sd(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, Weights(broken(sd, True, True, True), "bad.pth"), CLASSIFIER)
    assert_names_problems(str(info.value), sd, True, True, True)
    assert "bad.pth" in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # not one tensor was copied in
    assert not torch.equal(after["stages.0.blocks.0.fc1.weight"], sd["stages.0.blocks.0.fc1.weight"])
    assert torch.equal(logits(model), other[1])


@pytest.mark.parametrize(
    "problems",
    [dict(missing=True), dict(unexpected=True), dict(reshaped=True), dict(missing=True, reshaped=True)],
    ids=["missing", "unexpected", "shape", "missing+shape"],
)
def test_each_mismatch_through_create_model(tmp_path, source, problems):
    sd = source[0]
    path = save(broken(sd, **problems), tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        create_model(TEST, checkpoint=path)
    assert_names_problems(str(info.value), sd, **problems)


def test_mismatch_with_a_new_head_still_checks_the_backbone(source):
    # A classifier of another size is replaced, but the rest must still fit exactly.
    model = create_model(TEST, num_classes=7)
    before = clone_sd(model)
    with pytest.raises(CheckpointMismatchError, match=re.escape(MISSING)):
        load_weights(model, Weights(broken(source[0], missing=True), "bad.pth"), CLASSIFIER)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_check_fits_shortens_long_lists():
    expected = {f"w{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(CheckpointMismatchError) as info:
        check_fits(expected, {}, "x.pth")
    message = str(info.value)
    assert "20 missing keys" in message and "(8 more)" in message
    assert "w0" in message and "w19" not in message
    check_fits(expected, dict(expected), "x.pth")  # a perfect fit passes silently


# --- 4. num_classes ----------------------------------------------------------------------------------------


def _without(text: str, path: Path) -> str:
    return text.replace(str(path), "")  # tmp_path names hold digits of their own


def test_other_num_classes_keeps_backbone_and_warns(tmp_path, source, caplog):
    sd = source[0]
    path = save({"model": sd}, tmp_path / "in1k.pth")
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        model = create_model(TEST, checkpoint=path, num_classes=7)
    for key, value in sd.items():
        if not key.startswith(CLASSIFIER + "."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.state_dict()["head.fc.weight"].shape[0] == 7
    assert model.head.fc.out_features == 7
    assert model.num_classes == 7 and model.pretrained_cfg["num_classes"] == 7
    assert logits(model).shape == (2, 7)
    warnings = [_without(r.getMessage(), path) for r in caplog.records if r.name == "mambaout"]
    assert any(re.search(r"\b1000\b", w) and re.search(r"\b7\b", w) for w in warnings), warnings


def test_num_classes_follows_the_checkpoint(tmp_path, caplog):
    model7 = scrambled(num_classes=7, seed=4)
    path = save(clone_sd(model7), tmp_path / "seven.pth")
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        model = create_model(TEST, checkpoint=path)
        same = create_model(TEST, checkpoint=path, num_classes=7)
    assert model.num_classes == 7 and model.pretrained_cfg["num_classes"] == 7
    assert torch.equal(logits(model), logits(model7))
    assert torch.equal(logits(same), logits(model7))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- 5. safety and damaged files ---------------------------------------------------------------------------


class _Payload:
    """Pickles as a call that creates `marker` when unpickled."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch '{self.marker}'",)
        if self.how == "open":
            return builtins.open, (self.marker, "w")
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("how", ["os.system", "open", "exec"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_in_a_pickle_is_refused_and_never_run(tmp_path, source, how, writer):
    marker = tmp_path / "pwned"
    obj = {"model": source[0], "extra": _Payload(how, marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    for load in (read_checkpoint, lambda p: create_model(TEST, checkpoint=p)):
        with pytest.raises(CheckpointError, match="could run code") as info:
            load(path)
        assert not marker.exists()
    assert "safetensors" in str(info.value)  # says what to do instead
    # The file really is dangerous: an unsafe load does create the marker.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_argparse_namespace_beside_weights_loads(tmp_path, source):
    args = argparse.Namespace(model="vim_tiny", lr=5e-4, epochs=300, drop_path=0.05)
    path = save({"model": source[0], "args": args, "epoch": 299, "max_accuracy": 76.1}, tmp_path / "vim.pth")
    obj, metadata = read_checkpoint(path)
    assert obj["args"] == args and metadata == {}
    assert torch.equal(logits(create_model(TEST, checkpoint=path)), source[1])


def _half(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("zero_bytes.pth", "empty"),
        ("zero_bytes.safetensors", "empty"),
        ("truncated.pth", "truncated"),
        ("truncated_legacy.pth", "truncated"),
        ("truncated.safetensors", "cannot read safetensors"),
        ("tensor_alone.pth", "holds a Tensor, not a dict"),
        ("list_of_tensors.pth", "holds a list, not a dict"),
        ("missing.pth", "does not exist"),
        ("text.pth", "not a checkpoint"),
        ("memo_key_error.pth", "not a checkpoint"),
        ("stack_index_error.pth", "not a checkpoint"),
        ("safetensors_named.pth", "not a checkpoint"),
    ],
)
def test_damaged_files_raise_clear_errors(tmp_path, source, case, match):
    sd = source[0]
    path = tmp_path / case
    if case.startswith("zero_bytes"):
        path.touch()
    elif case == "truncated.pth":
        _half(save(sd, tmp_path / "full.pth"), path)
    elif case == "truncated_legacy.pth":
        torch.save(sd, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
        _half(tmp_path / "full.pth", path)
    elif case == "truncated.safetensors":
        _half(save(sd, tmp_path / "full.safetensors"), path)
    elif case == "tensor_alone.pth":
        torch.save(sd["head.fc.weight"], path)
    elif case == "list_of_tensors.pth":
        torch.save(list(sd.values()), path)
    elif case == "text.pth":
        path.write_text("this is not a checkpoint\n")
    elif case == "memo_key_error.pth":  # the unpickler raised a bare KeyError on this
        path.write_bytes(b"\x80\x02h\x07.")
    elif case == "stack_index_error.pth":  # ... and a bare IndexError on this
        path.write_bytes(b"\x80\x02a.")
    elif case == "safetensors_named.pth":
        save(sd, tmp_path / "real.safetensors").rename(path)
    for load in (read_checkpoint, lambda p: create_model(TEST, checkpoint=p)):
        with pytest.raises(CheckpointError, match=match) as info:
            load(path)
        message = str(info.value)
        assert case in message  # names the file
        assert "could run code" not in message  # damage is not reported as an attack
        assert "weights_only" not in message  # not torch's advice to load it unsafely


# --- 6. save_checkpoint / load_checkpoint ------------------------------------------------------------------


def _safetensors_header(path: Path) -> dict:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size])


def test_save_load_round_trip_with_class_names(tmp_path):
    names = ["cat", "dog", "eel"]
    model = scrambled(num_classes=3, seed=5)
    path = tmp_path / "pets.safetensors"
    save_checkpoint(model, path, class_names=names)

    header = _safetensors_header(path)  # a real safetensors file, parsed without the library
    assert header["__metadata__"]["model_name"] == TEST
    assert json.loads(header["__metadata__"]["class_names"]) == names
    assert read_metadata(path)["format"] == "mambaout"

    loaded = load_checkpoint(path)
    assert loaded.model_name == TEST and loaded.num_classes == 3
    assert loaded.pretrained_cfg["label_names"] == names
    assert torch.equal(logits(loaded), logits(model))

    # Saved again without class_names, the names come from the model's cfg.
    again = tmp_path / "again.safetensors"
    save_checkpoint(loaded, again)
    assert load_checkpoint(again).pretrained_cfg["label_names"] == names


def test_class_names_of_another_size_are_not_attached(tmp_path):
    path = tmp_path / "pets.safetensors"
    save_checkpoint(scrambled(num_classes=3), path, class_names=["cat", "dog", "eel"])
    model = load_checkpoint(path, num_classes=5)
    assert model.num_classes == 5 and "label_names" not in model.pretrained_cfg


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "test.safetensors"
    save_checkpoint(scrambled(), path)
    with pytest.raises(CheckpointError) as info:
        create_model("mambaout_femto", checkpoint=path)
    assert "mambaout_test" in str(info.value) and "mambaout_femto" in str(info.value)


@pytest.mark.parametrize("file_name", ["plain.pth", "plain.safetensors"])
def test_load_checkpoint_needs_a_recorded_model_name(tmp_path, source, file_name):
    path = save(source[0], tmp_path / file_name)
    with pytest.raises(CheckpointError, match="does not record its model name") as info:
        load_checkpoint(path)
    assert "create_model" in str(info.value) and file_name in str(info.value)


def test_save_checkpoint_refuses_a_torch_suffix(tmp_path):
    # It writes safetensors, and files are read by suffix: x.pth would never load again.
    path = tmp_path / "model.pth"
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(scrambled(), path)
    assert not path.exists()


def test_write_leaves_no_temporary_files(tmp_path):
    save_checkpoint(scrambled(), tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# --- 7. downloads ------------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The torch hub cache moved into tmp_path; returns the checkpoint cache folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win over TORCH_HOME
    folder = cache_dir()
    assert folder == tmp_path / "torch_home" / "hub" / "checkpoints"
    return folder


@pytest.fixture
def release(tmp_path, source):
    """A release file on 'the server' (a file:// URL) and its sha256."""
    (tmp_path / "server").mkdir()
    path = save(source[0], tmp_path / "server" / "release.pth")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_copies_into_cache_then_reuses_it(hub, release):
    path, _ = release
    cfg = {"url": path.as_uri(), "file_name": "mambaout_test.in1k.pth"}
    got = fetch_pretrained(TEST, cfg, progress=False)
    assert got == hub / "mambaout_test.in1k.pth"
    assert got.read_bytes() == path.read_bytes()
    assert _files(hub) == ["mambaout_test.in1k.pth"]
    path.unlink()  # the server is gone: the cached copy must do
    assert fetch_pretrained(TEST, cfg, progress=False) == got


@pytest.mark.parametrize("digest_len", [64, 10], ids=["full", "prefix"])
def test_correct_sha256_passes_and_is_rechecked_on_reuse(hub, release, digest_len):
    path, sha256 = release
    cfg = {"url": path.as_uri(), "file_name": "r.pth", "sha256": sha256[:digest_len]}
    got = fetch_pretrained(TEST, cfg, progress=False)
    assert fetch_pretrained(TEST, cfg, progress=False) == got
    assert _files(hub) == ["r.pth"]


def test_wrong_sha256_leaves_nothing_in_the_cache(hub, release):
    path, sha256 = release
    wrong = ("0" if sha256[0] != "0" else "1") + sha256[1:]
    cfg = {"url": path.as_uri(), "file_name": "r.pth", "sha256": wrong}
    with pytest.raises(CheckpointError) as info:
        fetch_pretrained(TEST, cfg, progress=False)
    assert not isinstance(info.value, PretrainedUnavailableError)  # corrupt, not unreachable
    assert path.as_uri() in str(info.value)
    assert _files(hub) == []  # neither the file nor a .partial temp


def test_cached_file_with_wrong_sha256_is_refused(hub, source):
    hub.mkdir(parents=True)
    save(source[0], hub / "r.pth")
    cfg = {"url": OFFLINE_URL, "file_name": "r.pth", "sha256": "ab" * 32}
    with pytest.raises(CheckpointError, match="delete it"):
        fetch_pretrained(TEST, cfg, progress=False)


@pytest.mark.parametrize("where", ["loopback", "missing_file"])
def test_unreachable_url_says_how_to_do_without(hub, tmp_path, where):
    url = OFFLINE_URL if where == "loopback" else (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(PretrainedUnavailableError) as info:
        fetch_pretrained(TEST, {"url": url, "file_name": "x.pth"}, progress=False)
    message = str(info.value)
    assert url in message and "checkpoint=PATH" in message and str(hub / "x.pth") in message
    assert _files(hub) == []


def test_cfg_without_file_name_caches_under_the_url_name(hub, release):
    path, _ = release
    assert fetch_pretrained(TEST, {"url": path.as_uri()}, progress=False) == hub / "release.pth"


def test_no_url_means_no_released_weights(hub):
    assert not get_model_spec(TEST).pretrained_cfg["url"]
    with pytest.raises(PretrainedUnavailableError, match="has no released weights"):
        create_model(TEST, pretrained=True)
    with pytest.raises(PretrainedUnavailableError, match=f"{TEST} has no released weights"):
        fetch_pretrained(TEST, {"url": "", "file_name": None})


@pytest.fixture
def released_test_model(monkeypatch):
    """mambaout_test given release weights at the unreachable URL (restored afterwards)."""
    cfg = get_model_spec(TEST).pretrained_cfg
    monkeypatch.setitem(cfg, "url", OFFLINE_URL)
    monkeypatch.setitem(cfg, "file_name", "mambaout_test.in1k.pth")
    return cfg


def test_pretrained_uses_the_cached_file_offline(hub, source, released_test_model):
    hub.mkdir(parents=True)
    save(source[0], hub / "mambaout_test.in1k.pth")
    model = create_model(TEST, pretrained=True)
    assert torch.equal(logits(model), source[1])
    assert model.pretrained_cfg["url"] == OFFLINE_URL


def test_pretrained_takes_the_ema_copy_where_the_release_cfg_says_so(
    hub, source, other, released_test_model, monkeypatch
):
    """Release files whose published accuracy is their EMA model's load 'model_ema'; others, and user files, 'model'."""
    hub.mkdir(parents=True)
    release = hub / "mambaout_test.in1k.pth"
    torch.save({"model": other[0], "model_ema": source[0]}, release)
    assert torch.equal(logits(create_model(TEST, pretrained=True)), other[1])  # cfg without use_ema
    monkeypatch.setitem(released_test_model, "use_ema", True)
    assert torch.equal(logits(create_model(TEST, pretrained=True)), source[1])
    assert torch.equal(logits(create_model(TEST, pretrained=True, use_ema=False)), other[1])
    assert torch.equal(logits(create_model(TEST, checkpoint=release)), other[1])  # a file given by path


def test_pretrained_without_cache_or_network(hub, released_test_model):
    with pytest.raises(PretrainedUnavailableError) as info:
        create_model(TEST, pretrained=True)
    assert OFFLINE_URL in str(info.value) and "checkpoint=PATH" in str(info.value)


def test_pretrained_downloads_then_loads(hub, release, source, monkeypatch):
    cfg = get_model_spec(TEST).pretrained_cfg
    monkeypatch.setitem(cfg, "url", release[0].as_uri())
    monkeypatch.setitem(cfg, "file_name", "mambaout_test.in1k.pth")
    monkeypatch.setitem(cfg, "sha256", release[1])
    assert torch.equal(logits(create_model(TEST, pretrained=True)), source[1])
    assert _files(hub) == ["mambaout_test.in1k.pth"]


def test_registry_cfg_is_restored():
    # Runs after the monkeypatched tests above: the shared spec dict is back to no weights.
    cfg = get_model_spec(TEST).pretrained_cfg
    assert not cfg["url"] and cfg["file_name"] is None
