"""Suite-wide settings.

Hypothesis draws fresh examples on every local run (that is how it keeps finding edge cases,
e.g. the subnormal squares of test_l2_based_norms_exact_where_squares_under_or_overflow); in CI
(``CI=true``) it is derandomized so that a run's verdict depends on the code alone.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
