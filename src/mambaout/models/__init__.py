"""Model families; importing this module registers every variant."""

from . import (
    local_mamba,  # noqa: F401  (registers LocalVim and LocalVMamba)
    mambaout,  # noqa: F401  (registers the MambaOut variants)
    plain_mamba,  # noqa: F401  (registers PlainMamba L1-L3)
    vim,  # noqa: F401  (registers Vision Mamba)
    vit,  # noqa: F401  (registers DeiT and its causal variants)
    vmamba,  # noqa: F401  (registers VMamba v0, v2 and v2v)
)
