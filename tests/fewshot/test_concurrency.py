"""`fewshot.concurrency: auto`: as many loss workers as the cluster's resources hold, capped."""

import pytest

from lorabatch.fewshot.config import FewShotConfig
from lorabatch.raysession import actor_pool_size


def test_concurrency_accepts_auto_and_positive_counts_only():
    assert FewShotConfig(concurrency="auto").concurrency == "auto"
    assert FewShotConfig(concurrency=3).concurrency == 3
    for bad in (0, -1, "many"):
        with pytest.raises(ValueError, match="concurrency"):
            FewShotConfig(concurrency=bad)


def test_auto_pool_size_follows_the_cluster(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0, "GPU": 2.0})
    assert actor_pool_size(3, 1.0, 0, 10) == 3  # a number is taken as given
    assert actor_pool_size("auto", 1.0, 0, 10) == 6  # CPUs / CPUs per actor
    assert actor_pool_size("auto", 4.0, 0, 10) == 1  # never below one
    assert actor_pool_size("auto", 1.0, 0, 4) == 4  # never more actors than items
    assert actor_pool_size("auto", 1.0, 1.0, 10) == 2  # GPU actors: GPUs / GPUs per actor
    assert actor_pool_size("auto", 1.0, 0.5, 10) == 4
