import json
import os
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, for them and the processes they start
    # (oversubscribed OpenMP threads spin and wait, which made steps 10-50x slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The reference listings live in shared/ beside the checkout (CI clones the repo with shared/ beside it).
REFERENCE = Path(os.environ.get("MAMBAOUT_REFERENCE", REPO.parent / "shared" / "reference"))


@cache
def reference(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} is missing: set MAMBAOUT_REFERENCE to shared/reference")
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def console_script(name: str = "mambaout") -> str:
    """The installed entry point beside this interpreter (tests run it as users do)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the package (make install)")
    return str(path)


def cli_flags(options: dict) -> list[str]:
    """Command-line flags for training options: True as `--name`, False as `--no-name`, lists as several values."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


# the environment of a training subprocess: one OpenMP thread (as `one_thread` gives this process)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module of tiny models: on a shared 2-core machine several OpenMP threads contend and wait on
    each other (10-50x slower steps); subprocesses get the same through OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
