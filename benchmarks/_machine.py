"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """lscpu's model name (every speed figure names it), or the platform's processor where lscpu is missing."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")]
    return names[0] if names else platform.processor() or platform.machine() or "unknown"
