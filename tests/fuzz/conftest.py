"""Hypothesis profiles for the fuzz tests: "ci" (the default) is small, "fuzz" is large.

``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``) picks the large one. Each fuzz test applies
the profile itself (``@PROFILE``), so the rest of the suite keeps its own settings.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = settings(
    # Deep nesting and 64 KiB payloads make some examples slow and large by design.
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)
settings.register_profile("ci", _COMMON, max_examples=150)
# Up to 30 s a test on one core: some 40 tests, about 11 minutes after the atheris targets.
settings.register_profile("fuzz", _COMMON, max_examples=5_000)
