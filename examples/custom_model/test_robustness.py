"""The gate's two checks, as a project that uses cxr-robust writes them (the plugin provides ``gate_cell``).

Each test is parametrized by the plugin with one case per (model, occlusion ratio, k) of the configured grid.
"""

import pytest


@pytest.mark.robustness
def test_recall_not_below_baseline(gate_cell):
    gate_cell.check_baseline()


@pytest.mark.robustness
def test_recall_vs_chance(gate_cell):
    gate_cell.check_chance()
