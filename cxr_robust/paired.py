"""Paired comparison of a candidate run against a recorded reference run on the same queries.

Both runs rank the same images against the same reports, so each query contributes a pair of per-query
hits ``(h_ref, h_cand)`` and the test looks only at the queries whose hit changed. Per (condition, k):

* ``d_i = h_ref_i - h_cand_i`` (positive: the candidate lost the hit). ``b = sum(max(d, 0))`` and
  ``c = sum(max(-d, 0))`` are the discordant counts (expected counts when ties make hits fractional).
* H0: the candidate is not worse (each pair is exchangeable: ``d_i`` and ``-d_i`` equally likely);
  H1 (one-sided): the candidate is worse. The statistic is ``T = sum(d_i) = b - c``.
* With 0/1 hits (every ``d_i`` in {-1, 0, 1}) this is the **exact McNemar test**:
  ``p = P(X >= b)``, ``X ~ Binomial(b + c, 1/2)`` (method ``mcnemar-exact``).
* With fractional hits (the ``expected`` tie policy, a query whose report ties with others) it is the
  **paired sign-flip permutation test** of ``T`` (the McNemar test is its 0/1 special case). Its null
  distribution is computed exactly: the ``d_i = +-1`` part is a binomial, enumerated in closed form, the
  fractional part is enumerated over all sign patterns when there are at most ``max_exact`` fractional
  differences (``sign-flip-exact``); beyond that, sign patterns of the fractional part are drawn
  (``n_perm``, seeded) and the binomial tail is still exact for each draw (``sign-flip-mc``), which keeps
  the Monte-Carlo error far below that of flipping every sign at random.
* ``min_drop > 0`` (H0: the drop is at most ``min_drop``): the exchangeability null no longer holds, so a
  one-sided paired t-test of ``mean(d) - min_drop`` is used; its p-value is combined with the exact test's
  (the larger is kept) so a cell never fails without exact evidence of some drop (``...+t-margin``).
* The cells of one model's grid are one family, Holm-adjusted; a cell fails when its adjusted p < alpha.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cxr_robust.metrics import RankCounts, check_ks
from cxr_robust.perturbations.base import Condition, as_condition
from cxr_robust.stats import bootstrap_means, holm

_EPS = 1e-9  # float slack when comparing sums of fractional hits (exact fractions have denominators <= N)


@dataclass
class PairedDecision:
    """The paired verdict on one (condition, k) cell; recalls and ``diff = candidate - reference`` are fractions."""

    condition: Condition
    k: int
    reference: float
    candidate: float
    diff: float
    b: float
    c: float
    p_value: float
    p_adjusted: float
    passed: bool
    method: str
    n_queries: int = 0
    min_drop: float = 0.0

    def as_dict(self) -> dict:
        """JSON-serialisable form (the condition as its ``perturbation@severity`` key)."""
        return {**asdict(self), "condition": self.condition.key}


def align_ids(ref_ids: Sequence[str], cand_ids: Sequence[str]) -> np.ndarray | None:
    """Index that puts the candidate's queries in the reference's order (None when already aligned).

    Raises ValueError naming the first differing ids and the counts when the two runs did not measure
    exactly the same images, or when either lists an image twice.
    """
    ref, cand = [str(x) for x in ref_ids], [str(x) for x in cand_ids]
    if ref == cand:
        if len(set(ref)) != len(ref):
            raise ValueError(f"image ids are not unique: {_first_duplicates(ref)} appear more than once")
        return None
    for name, ids in (("reference", ref), ("candidate", cand)):
        if len(set(ids)) != len(ids):
            raise ValueError(f"the {name} run lists image ids more than once: {_first_duplicates(ids)}")
    ref_set, cand_set = set(ref), set(cand)
    only_ref = [x for x in ref if x not in cand_set]
    only_cand = [x for x in cand if x not in ref_set]
    if only_ref or only_cand:
        raise ValueError(
            f"the runs did not measure the same images: reference has {len(ref)}, candidate {len(cand)}; "
            f"{len(only_ref)} only in the reference (first: {only_ref[:3]}), {len(only_cand)} only in the "
            f"candidate (first: {only_cand[:3]}); rerun both on the same data set (same --cxr-phantom-studies, "
            "split and view filter) or record a new reference")
    position = {x: i for i, x in enumerate(cand)}
    return np.array([position[x] for x in ref], dtype=np.int64)


def _first_duplicates(ids: list[str], n: int = 3) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for x in ids:
        if x in seen and x not in dup:
            dup.append(x)
        seen.add(x)
    return dup[:n]


def _reorder(counts: RankCounts, index: np.ndarray | None) -> RankCounts:
    if index is None:
        return counts
    label = None if counts.label is None else counts.label.take(index)
    return RankCounts(counts.above[index], counts.ties[index], counts.n_candidates, label)


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value of "candidate worse": ``P(X >= b)``, ``X ~ Binomial(b + c, 1/2)``."""
    from scipy.stats import binom

    if b + c == 0:
        return 1.0
    return float(binom.sf(b - 1, b + c, 0.5))


def _unit_tail(threshold: np.ndarray, n_unit: int) -> np.ndarray:
    """``P(S >= threshold)`` for ``S`` the sum of ``n_unit`` random signs (``S = 2X - n``, X binomial)."""
    from scipy.stats import binom

    x_min = np.ceil((threshold + n_unit) / 2.0 - _EPS)  # smallest X with 2X - n >= threshold
    return binom.sf(x_min - 1, n_unit, 0.5)


def sign_flip_p(d: np.ndarray, n_perm: int = 20000, seed: int = 0, max_exact: int = 16) -> tuple[float, str]:
    """One-sided p-value of ``sum(d) > 0`` under random sign flips of the paired differences ``d``.

    Returns ``(p, method)``; see the module docstring for how the null distribution is computed.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.abs(d) > _EPS]
    t_obs = float(d.sum())
    unit = np.abs(np.abs(d) - 1.0) <= _EPS
    n_unit = int(unit.sum())
    frac = np.abs(d[~unit])  # the sign of d does not matter under random flips
    if frac.size == 0:
        b = int(round(float(np.sum(d > 0))))
        return mcnemar_p(b, n_unit - b), "mcnemar-exact"
    if frac.size <= max_exact:
        # All 2^n sign patterns of the fractional part, each with probability 2^-n.
        patterns = ((np.arange(2 ** frac.size)[:, None] >> np.arange(frac.size)[None, :]) & 1) * 2 - 1
        frac_sums = patterns @ frac
        method = "sign-flip-exact"
    else:
        rng = np.random.default_rng(seed)
        frac_sums = np.empty(n_perm)
        step = max(1, 2_000_000 // frac.size)  # bound the sign matrix to ~2M entries
        for s in range(0, n_perm, step):
            m = min(step, n_perm - s)
            frac_sums[s:s + m] = np.where(rng.random((m, frac.size)) < 0.5, -1.0, 1.0) @ frac
        method = "sign-flip-mc"
    p = float(np.mean(_unit_tail(t_obs - frac_sums, n_unit)))
    return min(1.0, p), method


def _margin_p(d: np.ndarray, min_drop: float) -> float:
    """One-sided paired t-test p-value of H0 "mean(d) <= min_drop"."""
    from scipy.stats import t as student_t

    m = d.size
    excess = float(d.mean()) - min_drop
    sd = float(d.std(ddof=1)) if m > 1 else 0.0
    if sd <= 0:
        return 0.0 if excess > _EPS else 1.0
    return float(student_t.sf(excess / (sd / math.sqrt(m)), df=m - 1))


def paired_cell(ref_hits: np.ndarray, cand_hits: np.ndarray, min_drop: float = 0.0, n_perm: int = 20000,
                seed: int = 0) -> dict:
    """Test one cell: recalls, discordant counts ``b``/``c``, the one-sided p-value and the method."""
    ref_hits, cand_hits = np.asarray(ref_hits, float), np.asarray(cand_hits, float)
    if ref_hits.shape != cand_hits.shape or ref_hits.ndim != 1:
        raise ValueError(f"hits must be two 1-D arrays of equal length, got {ref_hits.shape} and {cand_hits.shape}")
    if ref_hits.size == 0:
        raise ValueError("no queries: a paired test needs M >= 1")
    d = ref_hits - cand_hits
    p, method = sign_flip_p(d, n_perm=n_perm, seed=seed)
    if min_drop > 0:
        p = max(p, _margin_p(d, min_drop))
        method += "+t-margin"
    ref, cand = float(ref_hits.mean()), float(cand_hits.mean())
    return {"reference": ref, "candidate": cand, "diff": cand - ref, "b": float(np.clip(d, 0, None).sum()),
            "c": float(np.clip(-d, 0, None).sum()), "p_value": p, "method": method}


def paired_decide(reference_counts: Mapping[Condition, RankCounts], candidate_counts: Mapping[Condition, RankCounts],
                  ref_ids: Sequence[str], cand_ids: Sequence[str], ks: Sequence[int], alpha: float = 0.05,
                  min_drop: float = 0.0, policy: str = "expected", n_perm: int = 20000,
                  seed: int = 0) -> list[PairedDecision]:
    """Paired verdicts for every (condition, k) of the candidate, Holm-adjusted over that grid.

    Every condition the candidate measured must exist in the reference (extra reference ones are ignored);
    queries are matched by image id (see :func:`align_ids`).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_drop < 0:
        raise ValueError(f"min_drop must be >= 0 (a fraction, e.g. 0.01 for 1 point), got {min_drop}")
    index = align_ids(ref_ids, cand_ids)
    reference_counts = {as_condition(c): v for c, v in reference_counts.items()}
    candidate_counts = {as_condition(c): v for c, v in candidate_counts.items()}
    missing = [c.label for c in candidate_counts if c not in reference_counts]
    if missing:
        raise ValueError(f"the reference run has no ranks at {', '.join(missing)} (it has "
                         f"{', '.join(c.label for c in sorted(reference_counts))}); record a reference with the "
                         "same perturbations and severities")
    out: list[PairedDecision] = []
    for cond in sorted(candidate_counts):
        ref, cand = reference_counts[cond], _reorder(candidate_counts[cond], index)
        if ref.n_candidates != cand.n_candidates:
            raise ValueError(f"at {cond.label}: reference ranked {ref.n_candidates} reports, candidate "
                             f"{cand.n_candidates}; both runs must rank the same report set")
        if ref.n_queries != len(ref_ids):
            raise ValueError(f"at {cond.label}: reference has ranks for {ref.n_queries} queries but "
                             f"{len(ref_ids)} image ids")
        for k in check_ks(ks, ref.n_candidates):
            cell = paired_cell(ref.hits(k, policy), cand.hits(k, policy), min_drop, n_perm, seed)
            out.append(PairedDecision(condition=cond, k=k, p_adjusted=1.0, passed=True, n_queries=ref.n_queries,
                                      min_drop=min_drop, **cell))
    for dec, p_adj in zip(out, holm([d.p_value for d in out]) if out else []):
        dec.p_adjusted = float(p_adj)
        dec.passed = bool(p_adj >= alpha)
    return out


def paired_bootstrap_ci(ref_hits: np.ndarray, cand_hits: np.ndarray, n_boot: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float, float]:
    """``(diff, lo, hi)``: mean of ``cand - ref`` and its percentile bootstrap interval (queries resampled)."""
    ref_hits, cand_hits = np.asarray(ref_hits, float), np.asarray(cand_hits, float)
    if ref_hits.shape != cand_hits.shape or ref_hits.ndim != 1:
        raise ValueError(f"hits must be two 1-D arrays of equal length, got {ref_hits.shape} and {cand_hits.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = cand_hits - ref_hits
    boot = bootstrap_means(d, n_boot, seed)[:, 0]
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return float(d.mean()), float(lo), float(hi)


def ranks_filename(row: str, dataset: str, seed: int) -> str:
    """File name under which ``--cxr-update-baselines`` records a model's per-query ranks."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row)
    return f"{slug}__{dataset}__seed{seed}.npz"


def find_reference_ranks(path: str | Path, row: str, dataset: str, seed: int) -> Path:
    """The reference ranks for ``row`` on ``dataset``: ``path`` itself if a file, else looked up in it.

    In a directory (or its ``ranks/``), the file of the same seed is preferred; otherwise the only file of
    another seed is used (a paired test across seeds is still valid, only less powerful).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--cxr-compare-to {path}: no such file or directory")
    exact = ranks_filename(row, dataset, seed)
    stem = exact[:exact.rindex("__seed") + len("__seed")]
    for folder in (path, path / "ranks"):
        if (folder / exact).is_file():
            return folder / exact
        others = sorted(folder.glob(stem + "*.npz"))
        if len(others) == 1:
            return others[0]
        if len(others) > 1:
            raise FileNotFoundError(f"{folder} holds ranks of {row!r} on {dataset!r} for several seeds "
                                    f"({', '.join(p.name for p in others)}) but not seed {seed}; pass one file")
    raise FileNotFoundError(f"no reference ranks {exact} in {path} or {path / 'ranks'}; record them with "
                            "--cxr-update-baselines on the reference model")
