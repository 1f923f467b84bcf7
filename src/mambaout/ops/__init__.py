"""Numeric kernels."""

from .selective_scan import BACKENDS, scan_backend, selective_scan

__all__ = ["BACKENDS", "scan_backend", "selective_scan"]
