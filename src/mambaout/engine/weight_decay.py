"""Which parameters get no weight decay: the rule of each official training code, and optimizer param groups.

A rule is a property of the training code, not of the model: it decides from a parameter's shape, name and module
type, plus the names the model itself lists in `no_weight_decay()` (and, for the Swin rule,
`no_weight_decay_keywords()`). Each model's `no_weight_decay()` returns what its official model returns, in our
parameter names, so rule + model gives exactly the official set. The rules (official sources):

- "timm": timm's optimizer factory, `param.ndim <= 1 or name.endswith(".bias") or name in model.no_weight_decay()`
  (huggingface/pytorch-image-models@v0.6.11 timm/optim/optim_factory.py:37-56 param_groups_weight_decay, called by
  create_optimizer_v2 :215-232). Used by MambaOut (yuweihao/MambaOut@9f2f234 train.py:502, timm 0.6.11), DeiT
  (facebookresearch/deit@7e160fe main.py:352, timm@6504a42 (0.3.2) optim_factory.py:25-48 add_weight_decay), Vim
  (hustvl/Vim@dd0358a vim/main.py:391, timm 0.4.12 optim_factory.py:29-41, 100-106) and LocalMamba
  (hunto/LocalMamba@75e5d1f classification/lib/utils/optim.py:23-63: the same test, plus "[g]"-prefixed substring
  entries that neither LocalMamba model lists). timm 0.3/0.4 and LocalMamba test `len(param.shape) == 1`, not
  `ndim <= 1`: the two differ only for 0-d parameters, which none of our models has.
- "swin": Swin's `set_weight_decay` as VMamba keeps it (MzeroMiko/VMamba@2ed52ea
  classification/utils/optimizer.py:19-35, 52-76, called at classification/main.py:137): `len(param.shape) == 1`,
  a ".bias" suffix, a name in `no_weight_decay()`, or any `no_weight_decay_keywords()` entry inside the name.
- "mmcls": mmcv's DefaultOptimizerConstructor (open-mmlab/mmcv@v1.7.2
  mmcv/runner/optimizer/default_constructor.py:161-241) with mmcls's Swin AdamW paramwise_cfg, which PlainMamba's
  configs extend (ChenhongyiYang/PlainMamba@0975a1d configs/_base_/schedules/imagenet_bs1024_adamw_swin.py:1-7,
  plain_mamba_configs/plain_mamba_l1_in1k_300e.py:54-64): norm_decay_mult=0 (every parameter of a
  BatchNorm/InstanceNorm/GroupNorm/LayerNorm module, by type), bias_decay_mult=0 (a parameter named `bias`, except
  in a depthwise nn.Conv2d, whose dwconv_decay_mult is left at 1), and the custom_keys with decay_mult=0, which the
  model's `no_weight_decay()` returns as the parameter names they match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

Rule = Callable[[nn.Module], set[str]]

# mmcv's `is_norm` types (mmcv.utils._BatchNorm/_InstanceNorm are torch's private bases; SyncBatchNorm included)
_MMCV_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _listed(model: nn.Module, method: str) -> set[str]:
    """What the model's `no_weight_decay()` / `no_weight_decay_keywords()` returns; empty when it has none."""
    # the official codes all guard with hasattr: a model without the method lists nothing
    fn = getattr(model, method, None)
    return set(fn()) if callable(fn) else set()


def timm_rule(model: nn.Module) -> set[str]:
    """timm's optimizer factory: 1-D (and 0-d) parameters, ".bias" names and `model.no_weight_decay()` names."""
    skip = _listed(model, "no_weight_decay")
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or n in skip}


def swin_rule(model: nn.Module) -> set[str]:
    """Swin's set_weight_decay: 1-D, ".bias", `no_weight_decay()` names and `no_weight_decay_keywords()` substrings."""
    skip, keywords = _listed(model, "no_weight_decay"), _listed(model, "no_weight_decay_keywords")
    return {
        n
        for n, p in model.named_parameters()
        # len(shape) == 1 as Swin writes it: a 0-d parameter would be decayed here
        if len(p.shape) == 1 or n.endswith(".bias") or n in skip or any(k in n for k in keywords)
    }


def mmcls_rule(model: nn.Module) -> set[str]:
    """mmcv's DefaultOptimizerConstructor with norm/bias decay_mult 0 and `no_weight_decay()` as its custom keys."""
    custom = _listed(model, "no_weight_decay")
    exempt = set()
    for module_name, module in model.named_modules():
        # mmcv decides per module, by type: norm layers lose decay on all their parameters; a depthwise conv
        # (in_channels == groups) takes dwconv_decay_mult (1: decayed), which mmcv checks BEFORE the bias rule,
        # so a depthwise conv's bias keeps its weight decay
        is_norm = isinstance(module, _MMCV_NORMS)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if full in custom or is_norm or (name == "bias" and not is_dwconv):
                exempt.add(full)
    return exempt


RULES: dict[str, Rule] = {"timm": timm_rule, "swin": swin_rule, "mmcls": mmcls_rule}


def get_rule(rule: str) -> Rule:
    """The rule of that name; a ValueError naming the known rules otherwise."""
    try:
        return RULES[rule]
    except KeyError:
        raise ValueError(f"unknown no-weight-decay rule {rule!r}; known rules: {', '.join(sorted(RULES))}") from None


def no_weight_decay_names(model: nn.Module, rule: str) -> set[str]:
    """Names of the parameters of `model` that `rule` exempts from weight decay (frozen ones included)."""
    return get_rule(rule)(model)


def param_groups(model: nn.Module, weight_decay: float, rule: str) -> list[dict[str, Any]]:
    """Optimizer param groups [no decay, decay] of the trainable parameters, each with its own weight_decay."""
    exempt = no_weight_decay_names(model, rule)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen: not optimized, as in every official code
        (no_decay if name in exempt else decay).append(param)
    # timm's order (no decay first, as create_optimizer_v2(model) builds them); both groups name their weight_decay,
    # so the optimizer's default never applies; an empty group is left out
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]
