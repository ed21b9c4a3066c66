"""Which attempts read the CPU clock: every run of a slow or new task, one in N of fast ones."""

from __future__ import annotations

from collectors.runtime import CpuSampler


def test_new_and_slow_tasks_are_always_measured_fast_ones_sampled() -> None:
    sampler = CpuSampler(every=16, slow_s=0.001)
    assert sampler.want("new") and sampler.want("new")  # not timed yet
    sampler.learn("fast", 0.0002)
    sampler.learn("slow", 0.25)
    fast = sum(sampler.want("fast") for _ in range(160))
    assert fast == 10
    assert all(sampler.want("slow") for _ in range(50))


def test_a_task_that_speeds_up_is_sampled_and_one_that_slows_down_measured_again() -> None:
    sampler = CpuSampler(every=4, slow_s=0.001)
    sampler.learn("t", 0.5)
    assert all(sampler.want("t") for _ in range(8))
    sampler.learn("t", 0.0001)
    assert sum(sampler.want("t") for _ in range(8)) == 2
    sampler.learn("t", 0.002)
    assert all(sampler.want("t") for _ in range(8))


def test_per_batch_sampling_follows_the_slowest_run_of_the_last_batch() -> None:
    """collectors.dramatiq decides on its sending thread, per batch: every run after a batch with a
    slow one, and after one fast batch in ``every``."""
    sampler = CpuSampler(every=4, slow_s=0.001)
    assert [sampler.after_batch(0.0002) for _ in range(8)] == [False, False, False, True] * 2
    assert all(sampler.after_batch(0.003) for _ in range(5))
    assert sampler.after_batch(0.0009) is False
