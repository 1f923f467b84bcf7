"""Model families; importing this module registers every variant."""

from . import mambaout  # noqa: F401  (registers the MambaOut variants)
