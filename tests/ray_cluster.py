"""The tests' local Ray cluster (``bench.ray_cluster``). Without ``ray`` installed the Ray
tests are skipped with a notice, unless ``TASKRUN_TEST_REQUIRE_RAY=1`` (set by
``.ci/run``) makes that a failure."""

from __future__ import annotations

import os

import pytest

from bench.ray_cluster import Cluster

__all__ = ["Cluster", "require_ray"]


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("TASKRUN_TEST_REQUIRE_RAY") == "1":
            raise RuntimeError("TASKRUN_TEST_REQUIRE_RAY=1 but ray is not installed "
                               "(pip install -r requirements-ray.txt)") from None
        pytest.skip("ray is not installed: Ray backend tests skipped "
                    "(pip install -r requirements-ray.txt)", allow_module_level=True)
