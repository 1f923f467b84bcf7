"""Keeping freed host memory for reuse in CPU training: glibc serves large blocks from the heap and keeps them."""

import subprocess
import sys
from pathlib import Path

import pytest

from mambaout.data.synthetic import write_dataset
from mambaout.engine import host_memory, loop
from mambaout.tasks.classification.config import TrainConfig
from mambaout.tasks.classification.task import train

# a 64 MiB tensor allocated, filled and freed; glibc's mallinfo2 says where it lived and what the heap kept of it
PROBE = """
import ctypes, sys, torch
from mambaout.engine.host_memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblkhd
block = torch.empty(64 << 20, dtype=torch.uint8)
block.fill_(1)
mapped = libc.mallinfo2().hblkhd - before
del block
print(applied, mapped >> 20, libc.mallinfo2().fordblks >> 20)
"""


def _probe(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, mapped_mib, heap_free_mib = out.split()
    return applied, int(mapped_mib), int(heap_free_mib)


def test_large_blocks_come_from_the_heap_and_stay_there_after_free():
    _, mapped, heap_free = _probe("plain")
    assert mapped >= 64 and heap_free < 64  # glibc's default: its own mmap, unmapped on free
    applied, mapped, heap_free = _probe("keep")
    assert applied == "True" and mapped == 0 and heap_free >= 64


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_kept", False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.keep_freed_memory() is False


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(True))
    data = write_dataset(Path(tmp_path, "data"), train_per_class=2, val_per_class=1, size=32)
    train(TrainConfig(data_dir=str(data), output=str(tmp_path), model="mambaout_test", img_size=32, batch_size=4,
                      workers=0, epochs=1, max_steps_per_epoch=1, warmup_epochs=0, cooldown_epochs=0, no_aug=True,
                      device="cpu", keep_freed_memory=keep))
    assert calls == ([True] if keep else [])
