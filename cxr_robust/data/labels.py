"""Findings labels per study (CheXpert's 14), where they come from, and when two studies' labels match.

(Skeleton: the constants every label source shares. Readers, policies and match rules follow.)
"""

from __future__ import annotations

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices")
"""The 14 labels of MIMIC-CXR-JPG's CheXpert and NegBio files, in their column order."""

POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -9
"""Label codes (int8): the files' ``1.0`` / ``0.0`` / ``-1.0`` / empty cell."""
