"""Numeric kernels."""

from .selective_scan import selective_scan

__all__ = ["selective_scan"]
