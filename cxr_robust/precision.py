"""Numeric precision of the encoders, and how far reduced precision moves the retrieval ranks.

Reduced precision (``fp16`` / ``bf16`` autocast) roughly doubles encoder throughput on GPUs with tensor
cores, but it is only acceptable where it leaves the benchmark's answer unchanged. :func:`rank_agreement`
states that answer's change: the share of queries whose rank of the true report is identical, the largest
rank shift, and the largest Recall@k difference over the grid. The sweep defaults to ``fp32`` everywhere;
``benchmarks/precision_agreement.py`` measures the agreement of a model before a team switches.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ContextManager

import numpy as np

if TYPE_CHECKING:
    from cxr_robust.engine import SweepResult

PRECISIONS = ("fp32", "fp16", "bf16")
"""``fp32``: no autocast. ``fp16`` / ``bf16``: ``torch.autocast`` with that dtype around every encoder call;
the embeddings are cast back to float32 before scoring."""


def check_precision(precision: str) -> str:
    """``precision`` if known, else a ValueError listing the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def autocast(device: str, precision: str) -> ContextManager[Any]:
    """The autocast context for ``precision`` on ``device`` (a no-op for ``fp32``).

    On CPUs without native bf16/fp16 arithmetic autocast is emulated and much slower than fp32; it is
    still correct, which is what the agreement check on a CPU-only machine needs.
    """
    import torch

    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def rank_agreement(reference: "SweepResult", other: "SweepResult") -> dict[str, Any]:
    """How ``other`` (e.g. fp16) differs from ``reference`` (fp32) on the same queries, conditions and ks.

    Per condition (``per_condition``, keyed by its ``perturbation@severity`` key): ``identical_rank`` (share of queries whose expected rank of the true report is the same),
    ``max_rank_shift`` (largest absolute change of that rank), ``max_recall_diff`` (largest |Recall@k|
    difference over the ks, as a fraction). ``overall`` holds the worst of each over all conditions.
    """
    if reference.image_ids != other.image_ids:
        raise ValueError(f"rank_agreement needs the same queries: {reference.model} has "
                         f"{reference.n_queries}, {other.model} has {other.n_queries} (or a different order)")
    missing = sorted(set(reference.counts) ^ set(other.counts))
    if missing:
        raise ValueError(f"rank_agreement needs the same conditions; only one of the runs has "
                         f"{[c.label for c in missing]}")
    per_condition = {}
    for cond, ref_counts in reference.counts.items():
        ref_rank = ref_counts.ranks()
        oth_rank = other.counts[cond].ranks()
        shift = np.abs(ref_rank - oth_rank)
        per_condition[cond.key] = {
            "identical_rank": float(np.mean(shift == 0)),
            "max_rank_shift": float(shift.max()) if shift.size else 0.0,
            "max_recall_diff": max(abs(reference.recall(cond, k) - other.recall(cond, k)) for k in reference.ks),
        }
    overall = {
        "identical_rank": min(v["identical_rank"] for v in per_condition.values()),
        "max_rank_shift": max(v["max_rank_shift"] for v in per_condition.values()),
        "max_recall_diff": max(v["max_recall_diff"] for v in per_condition.values()),
    }
    return {"per_condition": per_condition, "overall": overall}
