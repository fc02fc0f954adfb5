"""The NAT pair matrix: run the whole system for every pair of NAT profiles, many times, and
report which pairs end direct, how often (Wilson 95 % interval), how fast, by which strategy.

- :mod:`~punchthrough.matrix.model`: pure aggregation (trial results -> ``matrix.json`` cells).
- :mod:`~punchthrough.matrix.sim` / :mod:`~punchthrough.matrix.lab`: the two backends.
- :mod:`~punchthrough.matrix.runner`: the loop over pairs and trials.
- :mod:`~punchthrough.matrix.report_html` / :mod:`~punchthrough.matrix.plots`: the report.
"""

from punchthrough.matrix.backend import MatrixBackend, TrialRunner
from punchthrough.matrix.model import (
    BirthdayAttempt,
    Cell,
    TrialResult,
    aggregate,
    aggregate_cell,
    all_pairs,
    matrix_json,
    parse_pairs,
    percentile,
    trial_error,
    trial_from_call,
    trial_seed,
)
from punchthrough.matrix.profiles import default_profiles, known_profiles
from punchthrough.matrix.report_html import render_html
from punchthrough.matrix.runner import MatrixRun, run_matrix
from punchthrough.matrix.sim import SimBackend

__all__ = [
    "BirthdayAttempt",
    "Cell",
    "MatrixBackend",
    "MatrixRun",
    "SimBackend",
    "TrialResult",
    "TrialRunner",
    "aggregate",
    "aggregate_cell",
    "all_pairs",
    "default_profiles",
    "known_profiles",
    "matrix_json",
    "parse_pairs",
    "percentile",
    "render_html",
    "run_matrix",
    "trial_error",
    "trial_from_call",
    "trial_seed",
]
