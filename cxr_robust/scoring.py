"""Cosine scoring of query embeddings against candidate embeddings, straight to rank counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_robust.metrics import RankCounts, rank_counts

if TYPE_CHECKING:
    import torch


def score_ranks(image_emb: "torch.Tensor", text_emb: "torch.Tensor", targets: Any,
                chunk_rows: int = 8192) -> RankCounts:
    """Rank counts of each image's true report under cosine similarity.

    Embeddings must already be L2-normalised (the model adapters guarantee it), so cosine is one matrix
    product. Queries are processed in chunks of ``chunk_rows`` so memory stays ``chunk_rows x N``.
    """
    import torch

    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding shapes {tuple(image_emb.shape)} and {tuple(text_emb.shape)} do not match")
    targets = np.asarray(targets, dtype=np.int64)
    text_t = text_emb.T.contiguous()
    parts: list[RankCounts] = []
    for start in range(0, image_emb.shape[0], chunk_rows):
        scores = image_emb[start:start + chunk_rows] @ text_t
        parts.append(rank_counts(scores, torch.as_tensor(targets[start:start + chunk_rows])))
    if not parts:
        return RankCounts(np.zeros(0, np.int64), np.zeros(0, np.int64), int(text_emb.shape[0]))
    return RankCounts(np.concatenate([p.above for p in parts]), np.concatenate([p.ties for p in parts]),
                      int(text_emb.shape[0]))
