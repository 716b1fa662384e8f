"""Datasets: the RetrievalSet type and its sources (phantom, MIMIC-CXR, manifest)."""

from cxr_robust.data.retrieval_set import RetrievalSet
from cxr_robust.data.text_policy import TextPolicy, report_text

__all__ = ["RetrievalSet", "TextPolicy", "report_text"]
