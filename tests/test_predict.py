"""Preprocessing and labels of `predict_files` (the CLI tests cover the command around it)."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

import mambaout
from mambaout.errors import InputSizeError
from mambaout.tasks.classification.predict import class_names, eval_transform, predict_files


def _official_pipeline(img, size, crop_pct, mean, std):
    """Resize the short side to size / crop_pct (bicubic), center crop, normalise: the official eval."""
    scaled = int(size / crop_pct)
    img = F.resize(img, scaled, interpolation=InterpolationMode.BICUBIC)
    img = F.center_crop(img, size)
    return F.normalize(F.to_tensor(img), mean, std)


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_base_tall_rw"])
def test_eval_transform_follows_pretrained_cfg(name):
    model = mambaout.create_model("mambaout_test")
    model.pretrained_cfg = dict(mambaout.get_model_spec(name).pretrained_cfg)  # cfg of a released model
    cfg = model.pretrained_cfg
    img = Image.fromarray(torch.randint(0, 256, (300, 420, 3), dtype=torch.uint8).numpy())
    ours = eval_transform(model)(img)
    expected = _official_pipeline(img, cfg["input_size"][1], cfg["crop_pct"], cfg["mean"], cfg["std"])
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_imagenet_class_names_for_a_1000_way_head():
    names = class_names(mambaout.create_model("mambaout_test", num_classes=1000))
    assert len(names) == 1000
    assert names[1].startswith("goldfish") and names[999].startswith("toilet tissue")
    assert class_names(mambaout.create_model("mambaout_test", num_classes=3)) == ["class 0", "class 1", "class 2"]


def test_predictions_are_the_models_softmax_in_input_order(tmp_path):
    model = mambaout.create_model("mambaout_test", num_classes=4).eval()
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (64 + i, 70, 3), dtype=torch.uint8).numpy()).save(path)
        paths.append(path)
    predictions, errors = predict_files(model, paths, topk=4, batch_size=2)
    assert errors == []
    transform = eval_transform(model)
    for path, prediction in zip(paths, predictions):
        assert prediction.path == str(path)
        with torch.no_grad():
            probs = model(transform(Image.open(path).convert("RGB"))[None]).softmax(-1)[0]
        assert [g.index for g in prediction.top] == probs.argsort(descending=True).tolist()
        assert [g.probability for g in prediction.top] == pytest.approx(probs.sort(descending=True).values.tolist())


def test_bad_input_size_is_refused():
    with pytest.raises(InputSizeError, match="must be positive"):
        eval_transform(mambaout.create_model("mambaout_test"), input_size=(0, 64))
