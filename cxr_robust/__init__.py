"""cxr-robust: an occlusion-robustness regression gate for chest X-ray image->report retrieval.

Importing the package is cheap: torch, open_clip and transformers are imported only by the modules that
need them, so the pytest plugin and pure-Python helpers load fast.
"""

__version__ = "0.1.0"

PAPER_RATIOS: tuple[float, ...] = (0.0, 0.0025, 0.01, 0.04, 0.09, 0.25, 0.49, 0.81)
"""Occluded area fractions of Deanda et al. (Table 1): 0 %, 0.25 %, 1 %, 4 %, 9 %, 25 %, 49 %, 81 %."""

PAPER_KS: tuple[int, ...] = (5, 10, 20, 30, 50, 100)
"""Retrieval depths of Table 1."""
