"""The engine's task plumbing: the iteration sampler behind iteration-based schedules."""

import pytest

from mambaout.engine.task import IterationSampler, epochs_for_iterations


@pytest.mark.parametrize("length, per_epoch, world", [(10, 4, 1), (10, 7, 2), (7, 16, 3), (5, 5, 1)])
def test_the_iteration_sampler_is_a_stream_of_permutations_cut_into_epochs(length, per_epoch, world):
    epochs = 6
    shards = [IterationSampler(length, per_epoch, seed=3, rank=r, world_size=world) for r in range(world)]
    stream = []
    for epoch in range(epochs):
        chunks = []
        for sampler in shards:
            sampler.set_epoch(epoch)
            chunks.append(list(sampler))
            assert len(chunks[-1]) == len(sampler) == per_epoch
        # interleave the ranks back into the global order
        stream += [chunks[i % world][i // world] for i in range(per_epoch * world)]
    for start in range(0, len(stream) - length + 1, length):
        assert sorted(stream[start : start + length]) == list(range(length))  # each pass is a permutation


def test_an_epoch_of_the_iteration_sampler_depends_on_seed_and_epoch_alone():
    a, b = IterationSampler(50, 8, seed=1), IterationSampler(50, 8, seed=1)
    a.set_epoch(4)
    for epoch in (0, 1, 4):  # b reaches epoch 4 after others: the same indices (exact resume)
        b.set_epoch(epoch)
        later = list(b)
    assert list(a) == later
    c = IterationSampler(50, 8, seed=2)
    c.set_epoch(4)
    assert list(c) != later
    assert epochs_for_iterations(160_000, 16_000) == 10 and epochs_for_iterations(10, 4) == 3
