"""The no-weight-decay rules give, for each family, exactly the set its official training code exempts."""

from pathlib import Path

import pytest
import torch
import yaml
from timm.optim import create_optimizer_v2
from torch import nn

import mambaout
from conftest import reference
from mambaout.engine.weight_decay import RULES, get_rule, no_weight_decay_names, param_groups
from mambaout.registry import get_model_spec

FIXTURE = yaml.safe_load((Path(__file__).parent / "fixtures" / "no_weight_decay.yaml").read_text())["models"]


def _meta_model(name: str) -> nn.Module:
    # names, shapes and module types are all a rule reads: no need to allocate or initialise weights
    with torch.device("meta"):
        return mambaout.create_model(name)


def _official_names_in_our_layout(name: str) -> set[str]:
    """The fixture's official names, renamed by the model's checkpoint converter."""
    entry = FIXTURE[name]
    listing = reference("official_state_dicts.json")["models"][entry["official_model"]]["keys"]
    # The converter sees the whole official state_dict (it detects the layout from it); every tensor holds its
    # own index, so each converted key tells which official key it came from.
    official = {key: torch.full(shape, float(i)) for i, (key, shape, _) in enumerate(listing)}
    exempt = {i for i, key in enumerate(official) if key in set(entry["no_weight_decay"])}
    assert len(exempt) == len(entry["no_weight_decay"]), "a fixture name is not in the official listing"
    ours = set()
    for key, value in get_model_spec(name).converter(official).items():
        assert value.min() == value.max(), f"{key} mixes official tensors: compare by name instead"
        if int(value.flatten()[0]) in exempt:
            ours.add(key)
    return ours


@pytest.mark.parametrize("name", FIXTURE)
def test_rule_gives_the_official_no_weight_decay_set(name):
    model = _meta_model(name)
    parameters = dict(model.named_parameters())
    assert len(parameters) == FIXTURE[name]["num_parameters"]
    # timm 0.3/0.4, Swin and LocalMamba test len(shape) == 1, timm >= 0.6 ndim <= 1: equal without 0-d parameters
    assert all(p.ndim > 0 for p in parameters.values())
    expected = _official_names_in_our_layout(name)
    assert expected <= parameters.keys()
    got = no_weight_decay_names(model, FIXTURE[name]["rule"])
    assert sorted(got - expected) == [] and sorted(expected - got) == []


@pytest.mark.parametrize("name", ["vim_tiny", "plainmamba_l1"])
def test_param_groups_cover_every_trainable_parameter_once(name):
    model = _meta_model(name)
    model.get_parameter("patch_embed.proj.weight" if name == "vim_tiny" else "pos_embed").requires_grad_(False)
    rule = FIXTURE[name]["rule"]
    groups = param_groups(model, 0.05, rule)
    exempt = no_weight_decay_names(model, rule)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter exactly once, the frozen one left out
    assert {trainable[id(p)] for p in groups[0]["params"]} == exempt & set(trainable.values())

    # timm takes the groups as they are (no second filter) and only fills in what a group leaves unset
    optimizer = create_optimizer_v2(groups, opt="adamw", lr=1e-3, weight_decay=0.05)
    assert [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups] == [
        (len(g["params"]), g["weight_decay"]) for g in groups
    ]
    assert all(a is b for g, h in zip(groups, optimizer.param_groups) for a, b in zip(g["params"], h["params"]))


def test_rules_on_a_small_model_follow_their_codes():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, groups=8)
            self.ln = nn.LayerNorm(8)
            self.A_log = nn.Parameter(torch.zeros(8, 4))
            self.fc = nn.Linear(8, 2)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

        def no_weight_decay_keywords(self) -> set[str]:
            return {"A_"}

    one_d = {"conv.bias", "bn.weight", "bn.bias", "dw.bias", "ln.weight", "ln.bias", "fc.bias"}
    assert no_weight_decay_names(Net(), "timm") == one_d | {"pos_embed"}
    assert no_weight_decay_names(Net(), "swin") == one_d | {"pos_embed", "A_log"}
    # mmcv: by module type, and a depthwise conv's bias keeps its decay
    assert no_weight_decay_names(Net(), "mmcls") == (one_d - {"dw.bias"}) | {"pos_embed"}
    # a model without the methods lists nothing (the official codes guard with hasattr)
    plain = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert {rule: no_weight_decay_names(plain, rule) for rule in RULES} == {
        rule: {"0.bias", "1.weight", "1.bias"} for rule in RULES
    }


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown no-weight-decay rule 'deit'; known rules: mmcls, swin, timm"):
        get_rule("deit")
    with pytest.raises(ValueError, match="known rules"):
        param_groups(nn.Linear(2, 2), 0.05, "Timm")
