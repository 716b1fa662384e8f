"""The robustness gate: one case per (model, occlusion ratio, k), parametrized by the cxr-robust plugin.

Run it with ``pytest -m robustness``; options (``pytest --help``, group cxr-robust) choose models, dataset,
weights and the grid. Each model's sweep runs once per session, whatever the selection.
"""

import pytest

pytestmark = pytest.mark.robustness


def test_recall_not_below_baseline(gate_cell):
    """Measured Recall@k is not significantly below the recorded baseline (Holm over the model's grid)."""
    gate_cell.check_baseline()


def test_recall_vs_chance(gate_cell):
    """Clearly-above-chance baselines stay clearly above chance; no cell is clearly below chance (k/N)."""
    gate_cell.check_chance()


def test_negation_confusion(gate_negation):
    """The model ranks a study's report above its negated twin clearly more than half the time, and not
    significantly less often than its recorded run (``--cxr-negation``)."""
    gate_negation.check()
