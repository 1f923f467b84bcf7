"""Vim's official ImageNet-1k recipes (hustvl/Vim: vim/scripts/pt-vim-{t,s}.sh, ft-vim-{t,s}.sh on vim/main.py, a
copy of DeiT's main.py) and LocalVim's (hunto/LocalMamba, which trains Vim's blocks with local scans).

Vim differs from DeiT in its scripts: fp32 (`--no_amp`), Vim-Ti weight decay 0.1 and drop path 0, Vim-S at a global
batch of 512 with `--lr 1e-3` and drop path 0.05. Vim-Ti+/S+ fine-tune the stride-16 model at stride 8 for 30 epochs
at a constant 1e-5 (`--lr 5e-6 --min-lr 1e-5 --warmup-lr 1e-5`, 1024 images a step), the position embedding
resampled to the new grid when the checkpoint is loaded (`--finetune`).
"""

from __future__ import annotations

from . import DenseSettings, recipe
from .deit import DIFFERENCES, deit_layer

_MAIN = "hustvl/Vim:vim/main.py"
_PT = "hustvl/Vim:vim/scripts/pt-vim-{}.sh"
_FT = "hustvl/Vim:vim/scripts/ft-vim-{}.sh"
_VIM = {**deit_layer(_MAIN), "amp": (None, f"{_PT.format('*')} --no_amp (fp32)")}

_PRETRAIN = {
    "vim_tiny": {
        "global_batch_size": (1024, f"{_PT.format('t')}: 8 GPUs x --batch-size 128"),
        "weight_decay": (0.1, f"{_PT.format('t')} --weight-decay 0.1"),
        "drop_path": (0.0, f"{_PT.format('t')} --drop-path 0.0"),
    },
    "vim_small": {
        "global_batch_size": (512, f"{_PT.format('s')}: 8 GPUs x --batch-size 64"),
        "lr": (1e-3, f"{_PT.format('s')} --lr 1e-3 at 512 (x 512/512)"),
        "weight_decay": (0.05, f"{_PT.format('s')} --weight-decay 0.05"),
        "drop_path": (0.05, f"{_PT.format('s')} --drop-path 0.05"),
    },
    # no pt-vim-b.sh in the repository (the README only links the weights): main.py's defaults at 8 GPUs
    "vim_base": {
        "global_batch_size": (512, f"{_MAIN} --batch-size default 64 x 8 GPUs (no pt-vim-b.sh)"),
        "lr": (5e-4, f"{_MAIN} --lr default 5e-4 x 512/512 (no pt-vim-b.sh)"),
        "weight_decay": (0.05, f"{_MAIN} --weight-decay default (no pt-vim-b.sh)"),
        "drop_path": (0.1, f"{_MAIN} --drop-path default (no pt-vim-b.sh)"),
    },
}


_NO_SCRIPT = ("Vim-B has no training script (the README links its weights only): these are vim/main.py's defaults "
              "on 8 GPUs, not a recipe its authors published",)


def _finetune(size: str) -> dict:
    script = _FT.format(size)
    return {
        "epochs": (30, f"{script} --epochs 30"),
        "global_batch_size": (1024, f"{script}: 8 GPUs x --batch-size 128"),
        "lr": (1e-5, f"{script} --lr 5e-6 x 1024/512"),
        "warmup_lr": (1e-5, f"{script} --warmup-lr 1e-5"),
        "min_lr": (1e-5, f"{script} --min-lr 1e-5 (with warmup-lr: a constant 1e-5)"),
        "weight_decay": (1e-8, f"{script} --weight-decay 1e-8"),
        "drop_path": (0.0, f"{script} --drop-path 0.0"),
    }


RECIPES = {
    **{
        name: recipe(name, _VIM, values, differences=DIFFERENCES + (_NO_SCRIPT if name == "vim_base" else ()),
                     title=name)
        for name, values in _PRETRAIN.items()
    },
    **{
        f"vim_{size}_plus": recipe(f"vim_{size}_plus", _VIM, _finetune(letter), differences=DIFFERENCES,
                                   title=f"Vim-{letter.upper()}+ fine-tuning from the stride-16 model")
        for size, letter in (("tiny", "t"), ("small", "s"))
    },
}

DENSE = {
    name: DenseSettings(0.1, "ViTDet-style fine-tuning of small plain models (no Vim detection config)")
    for name in ("vim_tiny", "vim_small", "vim_base", "vim_tiny_plus", "vim_small_plus")
}
