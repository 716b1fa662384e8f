"""Cosine scoring of query embeddings against candidate embeddings, straight to rank counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cxr_robust.metrics import LabelCounts, RankCounts, Relevance, check_label_inputs, label_rows, scores_to_numpy

if TYPE_CHECKING:
    import torch


def score_ranks(image_emb: "torch.Tensor", text_emb: "torch.Tensor", targets: Any,
                chunk_rows: int = 8192, relevance: Relevance | None = None,
                label_ks: Sequence[int] = ()) -> RankCounts:
    """Rank counts of each image's true report under cosine similarity.

    Embeddings must already be L2-normalised (the model adapters guarantee it), so cosine is one matrix
    product. Queries are processed in chunks of ``chunk_rows`` so memory stays ``chunk_rows x N``. The
    chunk size is fixed, so results never depend on it.

    With ``relevance`` (findings labels, :class:`~cxr_robust.metrics.Relevance`) the counts also carry
    :class:`~cxr_robust.metrics.LabelCounts` at depths ``label_ks``, computed from the same score chunks (no
    second product; see :func:`cxr_robust.metrics.label_rows` for the cost). Without it nothing changes.
    """
    import torch

    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding shapes {tuple(image_emb.shape)} and {tuple(text_emb.shape)} do not match")
    m, n = int(image_emb.shape[0]), int(text_emb.shape[0])
    targets_np = np.asarray(targets, dtype=np.int64)
    if targets_np.shape != (m,):
        raise ValueError(f"{m} queries but targets of shape {targets_np.shape}")
    if m and (targets_np.min() < 0 or targets_np.max() >= n):
        raise ValueError(f"a target index is outside 0..{n - 1}")
    # Finite embeddings give finite cosines: checking the inputs is cheaper than checking M x N scores.
    # (NumPy on CPU: torch.isfinite there costs as much as the whole product on this build.)
    for name, emb in (("query", image_emb), ("candidate", text_emb)):
        if emb.device.type == "cpu":
            bad = np.flatnonzero(~np.isfinite(emb.detach().numpy()).all(axis=1)).tolist()
        else:
            bad = (~torch.isfinite(emb).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{name} embeddings contain NaN or Inf in rows {bad[:5]}")
    ks = np.array(check_label_inputs(relevance, label_ks, n), dtype=np.int64)
    if relevance is not None:
        precision, hit = np.empty((m, ks.size)), np.empty((m, ks.size))
        labelled = np.empty(m, bool)
    text_t = text_emb.T.contiguous()
    above, ties = np.empty(m, np.int64), np.empty(m, np.int64)
    for a in range(0, m, chunk_rows):
        b = min(a + chunk_rows, m)
        scores = image_emb[a:b] @ text_t
        if scores.device.type == "cpu":
            # NumPy's count_nonzero over a comparison costs a few ms for 1,770 x 994; torch's bool sum on CPU
            # costs more than the product itself (measured in tests/benchmarks/test_bench_scoring.py).
            s = scores.numpy()
            true = s[np.arange(b - a), targets_np[a:b]][:, None]
            above[a:b] = np.count_nonzero(s > true, axis=1)
            ties[a:b] = np.count_nonzero(s == true, axis=1) - 1
        else:
            idx = torch.as_tensor(targets_np[a:b], device=scores.device)[:, None]
            true = scores.gather(1, idx)
            above[a:b] = (scores > true).sum(dim=1).cpu().numpy()
            ties[a:b] = (scores == true).sum(dim=1).cpu().numpy() - 1
        if relevance is not None:
            # Label counts are computed in NumPy: on a GPU this copies the chunk's scores (chunk_rows x N) to the
            # host, so memory stays O(chunk_rows x N) there too.
            s_np = scores.numpy() if scores.device.type == "cpu" else scores_to_numpy(scores)
            precision[a:b], hit[a:b], labelled[a:b] = label_rows(s_np, targets_np[a:b], relevance, ks)
    label = LabelCounts(tuple(int(k) for k in ks), precision, hit, labelled) if relevance is not None else None
    return RankCounts(above, ties, n, label)
