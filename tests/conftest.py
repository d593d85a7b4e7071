"""Shared test configuration: hypothesis profiles (``ci`` when CI is set, ``dev`` otherwise)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI: more examples, no deadline (shared 2-core machines are noisy; speed is measured by
# benchmarks), and derandomized so that a landing is judged on the same examples every run; local
# runs stay random and keep finding new cases.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Local: quick feedback.
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
