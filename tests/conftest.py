"""Shared fixtures: the test vectors (read from the installed package, unchanged); the
Hypothesis profiles.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``cpimgw`` (the default) has no per-example
deadline and no too-slow health check, since the suite runs on shared, loaded machines
where a 200 ms stall says nothing about the code; ``ci`` (what ``make test`` and
``.ci/run`` use) is the same with a fixed seed per test, so a run's verdict does not
depend on luck — explore with the default profile (``pytest`` directly) to look for new
counterexamples.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "cpimgw", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("ci", settings.get_profile("cpimgw"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cpimgw"))

VECTORS = Path(__file__).resolve().parent.parent / "canonical" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The shipped copy of the project's test vectors (``canonical/vectors``)."""
    return VECTORS
