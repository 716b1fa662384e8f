"""Robustness summaries of one model's sweep: area under each recall-vs-severity curve, relative drops, and
the across-perturbation figures (mean relative drop, an mCE-style error relative to a reference model).

Definitions for one perturbation's curve (the occlusion curve shown; a levelled perturbation's x axis is its
level 0-5, evenly spaced), for one depth k, with ratios ``0 = r_0 < r_1 < ... < r_max`` and Recall@k ``R(r)``:

* ``auc@k = (1 / r_max) * trapezoid(R, r)`` over ``[0, r_max]``: the mean recall over occlusion ratios
  (the ratio axis is the occluded *area* fraction, linear, so 49 % and 81 % weigh most). A flat curve has
  ``auc = R``. It equals the mean over queries of the same weighted sum of per-query hits.
* ``auc_rel@k = auc@k / R(0)``: the share of the clean recall kept on average (None when ``R(0) = 0``).
* ``drop@k[r] = 1 - R(r) / R(0)``: relative loss at ratio ``r`` (0 for a model at chance, since chance
  ``k/N`` does not depend on occlusion; None when ``R(0) = 0``).
* Confidence intervals: percentile bootstrap over queries. The same resampled queries are used at every
  ratio and every k (the same images are reused across ratios, so the ratios are dependent), drawn from
  ``numpy.random.default_rng(seed)``.

JSON shape of :func:`robustness_summary` (ratios as ``repr(float)`` strings, recalls as fractions)::

    {"ratios": [0.0, 0.0025, ...], "n_queries": 1757, "n_boot": 2000, "confidence": 0.95, "seed": 0,
     "tie_policy": "expected",
     "clean@10": {"value": 0.41, "ci": [0.39, 0.43]},
     "auc@10": {"value": 0.22, "ci": [0.21, 0.23]},
     "auc_rel@10": {"value": 0.54, "ci": [0.52, 0.56]},
     "drop@10": {"0.0025": {"value": 0.001, "ci": [-0.004, 0.006]}, ...},
     ...one set of keys per k}
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from cxr_robust.metrics import RankCounts, check_ks
from cxr_robust.stats import bootstrap_means


def auc_weights(ratios: Sequence[float]) -> np.ndarray:
    """Trapezoid weights ``w`` over sorted ``ratios`` (which must start at 0) with ``sum(w) = 1``."""
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"an area under the curve needs at least 2 ratios, got {list(r)}")
    if r[0] != 0.0 or np.any(np.diff(r) <= 0):
        raise ValueError(f"ratios must be increasing and start at 0 (clean images), got {list(r)}")
    gaps = np.diff(r)
    w = np.zeros_like(r)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    return w / r[-1]


def hits_matrix(counts: Mapping[float, RankCounts], k: int, policy: str = "expected") -> tuple[np.ndarray, np.ndarray]:
    """``(ratios, H)``: sorted ratios and per-query hits ``H`` of shape ``(M, n_ratios)`` at depth ``k``."""
    ratios = np.array(sorted(counts), dtype=float)
    sizes = {counts[r].n_queries for r in ratios}
    if len(sizes) != 1:
        raise ValueError(f"ratios were measured on different numbers of queries: {sorted(sizes)}")
    return ratios, np.stack([counts[r].hits(k, policy) for r in ratios], axis=1)


def _interval(boot: np.ndarray, confidence: float) -> list[float] | None:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return [float(lo), float(hi)]


def _ratio_of(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def robustness_summary(counts: Mapping[float, RankCounts], ks: Sequence[int], n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95, policy: str = "expected") -> dict[str, Any]:
    """Clean recall, AUC, relative AUC and relative drops per k, with bootstrap CIs (shape: module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n_candidates = next(iter(counts.values())).n_candidates
    ks = check_ks(ks, n_candidates)
    ratios = np.array(sorted(counts), dtype=float)
    w = auc_weights(ratios)
    # One (M, K * R) matrix, so a single resampling serves every k and ratio.
    hits = np.concatenate([hits_matrix(counts, k, policy)[1] for k in ks], axis=1)
    n_r = ratios.size
    point = hits.mean(axis=0)
    boot = bootstrap_means(hits, n_boot, seed)
    out: dict[str, Any] = {"ratios": [float(r) for r in ratios], "n_queries": int(hits.shape[0]), "n_boot": n_boot,
                           "confidence": confidence, "seed": seed, "tie_policy": policy}
    for j, k in enumerate(ks):
        cols = slice(j * n_r, (j + 1) * n_r)
        rec, rec_b = point[cols], boot[:, cols]
        auc, auc_b = float(rec @ w), rec_b @ w
        out[f"clean@{k}"] = {"value": float(rec[0]), "ci": _interval(rec_b[:, 0], confidence)}
        out[f"auc@{k}"] = {"value": auc, "ci": _interval(auc_b, confidence)}
        clean_ok = rec[0] > 0
        out[f"auc_rel@{k}"] = {"value": auc / rec[0] if clean_ok else None,
                               "ci": _interval(_ratio_of(auc_b, rec_b[:, 0]), confidence) if clean_ok else None}
        out[f"drop@{k}"] = {
            repr(float(r)): {"value": float(1 - rec[i] / rec[0]) if clean_ok else None,
                             "ci": _interval(1 - _ratio_of(rec_b[:, i], rec_b[:, 0]), confidence) if clean_ok else None}
            for i, r in enumerate(ratios) if i > 0}
    return out


def auc_gate(reference_hits: np.ndarray, candidate_hits: np.ndarray, ratios: Sequence[float],
             tolerance: float = 0.0, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired AUC check: fail when the candidate's AUC is below the reference's by more than ``tolerance``
    with confidence ``1 - alpha``.

    ``*_hits`` are ``(M, n_ratios)`` per-query hit matrices of the same queries in the same order (from
    :func:`hits_matrix`). The difference ``auc_cand - auc_ref`` is bootstrapped over queries (paired: one
    resample for both runs); the check fails when its one-sided upper ``1 - alpha`` bound is below
    ``-tolerance``. When gating several k together, divide ``alpha`` by their number (Bonferroni).
    """
    ref, cand = np.asarray(reference_hits, float), np.asarray(candidate_hits, float)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[1] != len(ratios):
        raise ValueError(f"hit matrices must both be (M, {len(ratios)}), got {ref.shape} and {cand.shape}")
    if not 0 < alpha < 1 or tolerance < 0:
        raise ValueError(f"need 0 < alpha < 1 and tolerance >= 0, got alpha={alpha}, tolerance={tolerance}")
    w = auc_weights(np.asarray(ratios, float))
    per_query = (cand - ref) @ w  # each query's contribution to the AUC difference
    boot = bootstrap_means(per_query, n_boot, seed)[:, 0]
    diff = float(per_query.mean())
    upper = float(np.quantile(boot, 1 - alpha))
    return {"reference": float((ref @ w).mean()), "candidate": float((cand @ w).mean()), "diff": diff,
            "upper": upper, "tolerance": tolerance, "alpha": alpha, "n_boot": n_boot, "seed": seed,
            "passed": bool(upper >= -tolerance)}


def auc_vs_baseline(measured_auc_ci: Mapping[str, Any], baseline_auc: float | Mapping[str, Any],
                    tolerance: float = 0.0, confidence: float = 0.95) -> dict[str, Any]:
    """Unpaired AUC check against a baseline from another run (other queries or no per-query ranks).

    ``measured_auc_ci`` is an entry of :func:`robustness_summary` (``{"value", "ci"}`` at ``confidence``).
    A plain-number baseline is taken as exact: fail when the interval's upper end is below
    ``baseline - tolerance``. A baseline with its own CI is a sample too: the two half-widths are turned
    into standard errors, added in quadrature, and the difference is z-tested one-sided at
    ``(1 - confidence) / 2``, the same level as the first case.
    """
    from scipy.stats import norm

    value, ci = float(measured_auc_ci["value"]), measured_auc_ci["ci"]
    if ci is None:
        raise ValueError("the measured AUC has no confidence interval")
    if isinstance(baseline_auc, Mapping):
        base, base_ci = float(baseline_auc["value"]), baseline_auc.get("ci")
    else:
        base, base_ci = float(baseline_auc), None
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    if base_ci is None:
        upper = float(ci[1])
    else:
        se = math.hypot((ci[1] - ci[0]) / (2 * z), (base_ci[1] - base_ci[0]) / (2 * z))
        upper = value + z * se  # upper confidence bound of the measured value, widened by the baseline's error
    return {"measured": value, "baseline": base, "diff": value - base, "upper": upper, "tolerance": tolerance,
            "passed": bool(upper >= base - tolerance)}


def perturbation_summaries(counts: Mapping[Any, RankCounts], ks: Sequence[int], n_boot: int = 2000, seed: int = 0,
                           confidence: float = 0.95, policy: str = "expected") -> dict[str, Any]:
    """:func:`robustness_summary` per measured perturbation (its curve over severity, from the clean images at
    severity 0), keyed by perturbation name; perturbations with fewer than two points are left out.

    Every severity-0 condition is the same clean pass, so a perturbation measured without its own severity
    0 borrows the run's clean counts (the engine always measures them). For occlusion the x axis is the
    occluded area; for levelled perturbations it is the level 0-5, evenly spaced.
    """
    from cxr_robust.perturbations.base import as_condition

    conds = {as_condition(c): rc for c, rc in counts.items()}
    clean = next((rc for c, rc in conds.items() if c.is_clean), None)
    out: dict[str, Any] = {}
    for name in dict.fromkeys(c.perturbation for c in conds):
        curve = {c.severity: rc for c, rc in conds.items() if c.perturbation == name}
        if 0.0 not in curve and clean is not None:
            curve[0.0] = clean
        if len(curve) >= 2 and 0.0 in curve:
            out[name] = robustness_summary(dict(sorted(curve.items())), ks, n_boot, seed, confidence, policy)
    return out


def corruption_errors(recalls: Mapping[Any, Mapping[int, float]], k: int) -> dict[str, dict[str, float]]:
    """Per perturbation at depth ``k``: ``error_sum`` (sum over its severities > 0 of ``1 - Recall@k``),
    ``mean_relative_drop`` (mean over severities > 0 of ``1 - R(s) / R(clean)``, None when R(clean) = 0).

    ``recalls`` is ``{condition: {k: recall}}`` of one model (a :meth:`SweepResult.grid` or the cells of a
    results document).
    """
    from cxr_robust.perturbations.base import as_condition

    conds = {as_condition(c): by_k for c, by_k in recalls.items()}
    clean = next((by_k[k] for c, by_k in conds.items() if c.is_clean and k in by_k), None)
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(c.perturbation for c in conds):
        values = [by_k[k] for c, by_k in conds.items() if c.perturbation == name and not c.is_clean and k in by_k]
        if not values:
            continue
        drop = float(np.mean([1 - v / clean for v in values])) if clean else None
        out[name] = {"error_sum": float(sum(1 - v for v in values)), "n_severities": len(values),
                     "mean_relative_drop": drop}
    return out


def mce(model: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """ImageNet-C's mean corruption error, for retrieval: per perturbation ``CE = sum_s (1 - R_model(s)) /
    sum_s (1 - R_reference(s))`` (both from :func:`corruption_errors` at the same k, same severities), and
    ``mCE`` their mean. Below 1: more robust than the reference model. Perturbations either model lacks, or
    where the reference makes no error, are left out."""
    per = {name: model[name]["error_sum"] / reference[name]["error_sum"] for name in model
           if name in reference and reference[name]["error_sum"] > 0
           and model[name]["n_severities"] == reference[name]["n_severities"]}
    return {"ce": per, "mce": float(np.mean(list(per.values()))) if per else None}


def _side(name: str) -> str:
    """``image`` or ``report``: which side a perturbation of a results document perturbs (``image`` when it is not
    installed here, as every perturbation was before report-side ones existed)."""
    from cxr_robust.perturbations import get_perturbation

    try:
        return get_perturbation(name).side
    except KeyError:
        return "image"


def _mean_drop(errors: Mapping[str, Mapping[str, Any]]) -> float | None:
    drops = [e["mean_relative_drop"] for e in errors.values() if e["mean_relative_drop"] is not None]
    return float(np.mean(drops)) if drops else None


def add_corruption_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Write each measured model's across-perturbation figures into a results document, per k:
    ``corruption = {"k": {"per_perturbation": corruption_errors, "mean_relative_drop": ..., "mce": ...}}``.

    ``mean_relative_drop`` averages the image perturbations other than the clean-only ones, and
    ``report_mean_relative_drop`` (present when measured) the report-side ones: film corruptions and report
    rewordings are not averaged together. ``mce`` (image perturbations) is filled when the run names a reference
    model (``config.reference_model``) that was measured with the same conditions.
    Pure function of the document's cells, so the merged document of a pytest-xdist run gets it too.
    """
    from cxr_robust.results import cell_condition

    def recalls(model: dict[str, Any]) -> dict[Any, dict[int, float]]:
        out: dict[Any, dict[int, float]] = {}
        for c in model.get("cells") or []:
            out.setdefault(cell_condition(c), {})[int(c["k"])] = float(c["measured"])
        return out

    measured = {m["model"]: recalls(m) for m in doc.get("models", []) if m.get("status") == "measured"}
    reference = (doc.get("config") or {}).get("reference_model")
    for m in doc.get("models", []):
        if m["model"] not in measured:
            continue
        grid = measured[m["model"]]
        ks = sorted({k for by_k in grid.values() for k in by_k})
        per_k: dict[str, Any] = {}
        for k in ks:
            errors = corruption_errors(grid, k)
            # Film corruptions and report rewordings are different questions: one mean (and the mCE) each.
            image = {n: e for n, e in errors.items() if _side(n) == "image"}
            report = {n: e for n, e in errors.items() if _side(n) == "report"}
            entry: dict[str, Any] = {"per_perturbation": errors, "mean_relative_drop": _mean_drop(image)}
            if report:
                entry["report_mean_relative_drop"] = _mean_drop(report)
            if reference in measured:
                ref_errors = corruption_errors(measured[reference], k)
                entry["mce"] = {"reference": reference,
                                **mce(image, {n: e for n, e in ref_errors.items() if _side(n) == "image"})}
            per_k[str(k)] = entry
        m["corruption"] = per_k
    return doc
