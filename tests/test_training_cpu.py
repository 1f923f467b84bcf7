"""benchmarks/training_cpu.py's training cases: what runs against what, each repeat in a fresh process."""

import dataclasses

import pytest

from test_gpu_check import _load

training_cpu = _load("training_cpu")


def test_ours_runs_as_mambaout_train_does_and_timm_as_its_train_py_does_plus_a_kept_memory_reference():
    specs = training_cpu.case_specs(compile_timm=False)
    assert specs["ours"].ours and specs["ours"].kept_memory  # TrainConfig's default on a CPU
    plain = [s for name, s in specs.items() if name != "ours" and training_cpu.TIMM_KEPT not in name]
    kept = [s for name, s in specs.items() if training_cpu.TIMM_KEPT in name]
    assert plain and not any(s.ours or s.kept_memory for s in plain)
    assert [dataclasses.replace(s, kept_memory=False) for s in kept] == plain  # the same configurations again
    assert {s.channels_last for s in plain} == {False, True}


def test_a_case_is_timed_in_its_own_process_and_a_dead_one_is_named():
    spec = training_cpu.case_specs(compile_timm=False)["ours"]
    assert training_cpu.case_seconds(spec, "mambaout_test", 2, 32, threads=1, warmup=1, steps=1) > 0
    with pytest.raises(RuntimeError, match=r"no_such_model .* died with exit code 1"):
        training_cpu.case_seconds(spec, "no_such_model", 2, 32, threads=1, warmup=1, steps=1)
