"""Shared fixtures: the real sample data and one local Ray runtime for the whole session."""

from __future__ import annotations

import pytest

from pipelines.runtime import configure_environment

configure_environment()


@pytest.fixture(scope="session")
def sample() -> dict[str, str]:
    """Paths of the real sample files (`make sample-data` fetches them; `make test` runs it)."""
    from pipelines.sample_data import load_manifest

    return load_manifest()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs, loopback) shared by every test that needs it: starting Ray costs
    seconds, so tests never start their own."""
    from pipelines.runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
