"""Shared test set-up: a fixed seed per test, float64 helpers, and the hypothesis profile."""

import os

import pytest
from hypothesis import HealthCheck, settings

import minillm

settings.register_profile(
    "minillm", max_examples=int(os.environ.get("MINILLM_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("minillm")


@pytest.fixture(autouse=True)
def _seed():
    minillm.manual_seed(0)
    yield
