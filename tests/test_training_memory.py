"""benchmarks/training_memory.py's measurement: fresh processes, positive numbers, more memory for a larger batch."""

from test_gpu_check import _load

training_memory = _load("training_memory")


def test_a_larger_batch_takes_more_memory_in_a_training_step():
    # 2 against 32 images at 64: the activations differ by ~10 MiB, well above the allocator's noise
    small, large = (training_memory.measure_in_subprocess("mambaout_test", batch, 64, timeout=120) for batch in (2, 32))
    for row in (small, large):
        assert row["setup_mib"] > 0 and row["peak_mib"] >= row["setup_mib"] and row["step_mib"] > 0
        assert row["process_max_rss_mib"] >= row["peak_mib"] - 1  # VmHWM and ru_maxrss agree on the peak
        assert row["batch"] in (2, 32) and row["precision"] in ("bf16", "fp32")
    assert large["step_mib"] > small["step_mib"]
    assert large["peak_mib"] > small["peak_mib"]
