"""Validation study of the gate's DEFAULT rule: false alarms and detection, with no flags.

    python benchmarks/embed_pool.py --seeds 12 --out /tmp/pool.npz        # ~10 min on 2 cores
    python benchmarks/validate_gate.py --pool /tmp/pool.npz --out docs/validation.json

The default rule is what ``pytest -m robustness`` applies when recorded per-query ranks of the model exist
(the demo ships them): the paired per-cell tests, the paired grid test and the chance tests, adjusted
together per model (``gate.compare_paired`` + ``stats.apply_family``, the same functions the gate calls).
The unpaired rule (a recorded table, as for published aggregates) is reported beside it.

Runs are built from precomputed embeddings (``embed_pool.py``: the demo model ``phantom-clip`` on the full
phantom eval set, 1,757 images and 994 reports; image embeddings for 12 occlusion seeds at every occluded
ratio), so each gate run costs one similarity product per ratio:

(a) **Unchanged model, other occlusion seeds** (``--null-runs``): every image's box at every ratio is that
    of a seed drawn uniformly from 1..11 for that image (boxes are drawn per image, so this is distributed
    exactly as a fresh seed; runs share draws, so they are not fully independent). Gated against the
    seed-0 reference. The default's own case (same seed, unchanged model) is identical by construction.
(b) **Equally good but different models** (``--equal-models``): each model is the demo followed by its own
    fixed random perturbation of the image and report embeddings (same size for every model, so any two
    are exchangeable: neither is better in expectation, while ~10 % of per-query hits differ between
    them, as between two fine-tuning runs with different data orders). Model 0 is the recorded reference;
    models 1..n are gated against it.
(c) **Degraded models** (``--replicates`` each): image-embedding noise calibrated to lower clean Recall@10 by
    1, 1.5, 2 and 3 points (every ratio degraded); occlusion-only noise (clean images untouched) calibrated
    to lower Recall@10 by 1.5 and 2.5 points on average over 0.25-9 % occlusion; report-embedding noise
    lowering clean Recall@10 by 2.5 points. The realised drop of each replicate is recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_robust import PAPER_KS, PAPER_RATIOS
from cxr_robust.engine import SweepResult
from cxr_robust.gate import compare_paired, grid_unpaired
from cxr_robust.metrics import RankCounts
from cxr_robust.stats import CellInput, GateRule, GridDecision, apply_family, clopper_pearson, decide

OCCLUDED = tuple(r for r in PAPER_RATIOS if r > 0)
LOW_OCCLUSION = (0.0025, 0.01, 0.04, 0.09)
RULES = ("default (paired)", "unpaired (table)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=Path, required=True, help="embeddings written by benchmarks/embed_pool.py")
    p.add_argument("--null-runs", type=int, default=60)
    p.add_argument("--equal-models", type=int, default=30)
    p.add_argument("--replicates", type=int, default=40, help="degraded models per target drop")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


class Pool:
    """The precomputed embeddings and the scoring of a run built from them."""

    def __init__(self, path: Path) -> None:
        z = np.load(path)
        self.text = z["text"].astype(np.float32)
        self.study = z["study"]
        self.image_ids = [str(x) for x in z["image_ids"]]
        self.seeds = sorted({int(k.split("_")[1][1:]) for k in z.files if k.startswith("img_s")})
        self.images = {(int(k.split("_")[1][1:]), float(k.split("_r")[1])): z[k].astype(np.float32)
                       for k in z.files if k.startswith("img_s")}
        self.images.update({(s, 0.0): self.images[(0, 0.0)] for s in self.seeds})  # ratio 0 is the identity

    def counts(self, images: dict[float, np.ndarray], text: np.ndarray | None = None) -> dict[float, RankCounts]:
        """Rank counts of every query at every ratio (the gate's own scoring)."""
        import torch

        from cxr_robust.scoring import score_ranks

        t = torch.from_numpy(_unit(self.text if text is None else text))
        return {r: score_ranks(torch.from_numpy(_unit(e)), t, self.study) for r, e in images.items()}

    def result(self, counts: dict[float, RankCounts], seed: int) -> SweepResult:
        return SweepResult(model="phantom-clip", dataset="phantom-eval-s0", baseline_row="phantom-clip",
                           text_policy="findings+impression", seed=seed, ks=PAPER_KS, counts=counts,
                           image_ids=self.image_ids)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noisy(x: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sd, x.shape).astype(np.float32) if sd > 0 else x


# ----- the two rules ---------------------------------------------------------------------------------------
def gate_default(ref: SweepResult, cand: SweepResult, alpha: float) -> dict[str, Any]:
    """The default rule: paired cells + paired grid + chance, one weighted-Holm family."""
    rule = GateRule(alpha=alpha)
    cells = [CellInput(cand.model, r, k, v, cand.n_queries, cand.n_candidates)
             for r, by_k in cand.grid().items() for k, v in by_k.items()]
    decisions = {(d.condition, d.k): d for d in decide(cells, rule)}
    grid = compare_paired(cand, decisions, ref.counts, ref.image_ids, ref.seed, rule)
    apply_family(list(decisions.values()), grid, alpha)
    return _failures(decisions, grid)


def gate_unpaired(ref: SweepResult, cand: SweepResult, alpha: float) -> dict[str, Any]:
    """The rule against a recorded table (the reference's grid, M queries): z-tests + grid z-test + chance."""
    rule = GateRule(alpha=alpha)
    ref_grid = ref.grid()
    cells = [CellInput(cand.model, r, k, v, cand.n_queries, cand.n_candidates, ref_grid[r][k], ref.n_queries)
             for r, by_k in cand.grid().items() for k, v in by_k.items()]
    decisions = {(d.condition, d.k): d for d in decide(cells, rule)}
    grid = grid_unpaired(cand, decisions, rule)
    apply_family(list(decisions.values()), grid, alpha)
    return _failures(decisions, grid)


def _failures(decisions: dict, grid: GridDecision) -> dict[str, Any]:
    cells = [f"{100 * r:g}%@{k}" for (r, k), d in decisions.items() if d.passed is False]
    chance = [f"{100 * r:g}%@{k}" for (r, k), d in decisions.items() if not d.chance_passed]
    return {"failed": bool(cells or chance or grid.passed is False or not grid.chance_passed),
            "cells": cells, "chance": chance, "grid": grid.passed is False, "grid_p_adjusted": grid.p_adjusted}


def gate_both(ref: SweepResult, cand: SweepResult, alpha: float) -> dict[str, Any]:
    return {"default (paired)": gate_default(ref, cand, alpha), "unpaired (table)": gate_unpaired(ref, cand, alpha)}


def drop(ref: SweepResult, cand: SweepResult, ratios: tuple[float, ...] = (0.0,), k: int = 10) -> float:
    """Mean fall of Recall@k over ``ratios``, in points (positive = worse)."""
    return float(np.mean([100 * (ref.recall(r, k) - cand.recall(r, k)) for r in ratios]))


# ----- the study -------------------------------------------------------------------------------------------
def calibrate(make: Callable[[float, int], SweepResult], ref: SweepResult, ratios: tuple[float, ...],
              targets: list[float], sds: list[float], draws: int = 6) -> dict[float, float]:
    """Noise sd whose mean drop (over ``draws`` draws, seeds apart from the replicates') matches each target,
    by linear interpolation on a grid of sds (the mean drop is made monotone in sd first)."""
    means = np.maximum.accumulate([float(np.mean([drop(ref, make(sd, 900_000 + i), ratios) for i in range(draws)]))
                                   for sd in sds])
    return {t: float(np.interp(t, means, np.array(sds))) for t in targets}


def rate(records: list[dict], rule: str) -> dict[str, Any]:
    """Share of runs with any failing test (exact 95 % interval), and how many failed by the grid test and by
    at least one cell test."""
    hits = sum(r[rule]["failed"] for r in records)
    lo, hi = clopper_pearson(hits / len(records), len(records)) if records else (None, None)
    return {"rate": hits / len(records) if records else None, "n": len(records), "failed": hits, "ci95": [lo, hi],
            "by_grid_test": sum(r[rule]["grid"] for r in records),
            "by_a_cell": sum(bool(r[rule]["cells"]) for r in records)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    pool = Pool(args.pool)
    others = [s for s in pool.seeds if s != 0]
    base_images = {r: pool.images[(0, r)] for r in PAPER_RATIOS}
    ref = pool.result(pool.counts(base_images), 0)
    print(f"pool: {len(pool.image_ids)} images, {len(pool.text)} reports, seeds {pool.seeds}; reference R@10 clean "
          f"{100 * ref.recall(0.0, 10):.2f}%", flush=True)
    doc: dict[str, Any] = {"config": {**{k: str(v) for k, v in vars(args).items()}, "images": len(pool.image_ids),
                                      "reports": len(pool.text), "seeds": pool.seeds,
                                      "command": " ".join(["python", "benchmarks/validate_gate.py", *sys.argv[1:]])}}

    # (a) unchanged model, other occlusion seeds
    null = []
    for j in range(args.null_runs):
        rng = np.random.default_rng(10_000 + j)
        images = {0.0: base_images[0.0]}
        for r in OCCLUDED:
            pick = rng.choice(others, size=len(pool.image_ids))
            stack = np.stack([pool.images[(s, r)] for s in others])  # (S, M, D)
            images[r] = stack[np.searchsorted(others, pick), np.arange(len(pool.image_ids))]
        null.append(gate_both(ref, pool.result(pool.counts(images), seed=1000 + j), args.alpha))
    doc["unchanged_other_seeds"] = {rule: rate(null, rule) for rule in RULES}
    print("(a) unchanged, other seeds:", {r: doc["unchanged_other_seeds"][r]["rate"] for r in RULES}, flush=True)

    # (b) equally good, different models
    def variant(v: int) -> SweepResult:
        rng = np.random.default_rng(20_000 + v)
        images = {r: _noisy(e, 0.03, rng) for r, e in base_images.items()}
        return pool.result(pool.counts(images, _noisy(pool.text, 0.01, rng)), 0)

    ref_v = variant(0)
    equal = []
    for v in range(1, args.equal_models + 1):
        cand = variant(v)
        rec = gate_both(ref_v, cand, args.alpha)
        a, b = ref_v.hits(0.0, 10), cand.hits(0.0, 10)
        rec["discordant_share_r10_clean"] = float(np.mean(a != b))
        rec["diff_r10_clean_pts"] = -drop(ref_v, cand)
        equal.append(rec)
    doc["equally_good_models"] = {rule: rate(equal, rule) for rule in RULES}
    doc["equally_good_models"]["discordant_share_r10_clean"] = float(np.mean([r["discordant_share_r10_clean"]
                                                                             for r in equal]))
    doc["equally_good_models"]["diff_r10_clean_pts_range"] = [min(r["diff_r10_clean_pts"] for r in equal),
                                                             max(r["diff_r10_clean_pts"] for r in equal)]
    print("(b) equally good:", {r: doc["equally_good_models"][r]["rate"] for r in RULES}, flush=True)

    # (c) degraded models
    def image_noise(ratios: tuple[float, ...]) -> Callable[[float, int], SweepResult]:
        def make(sd: float, seed: int) -> SweepResult:
            rng = np.random.default_rng(seed)
            return pool.result(pool.counts({r: _noisy(e, sd if r in ratios else 0.0, rng)
                                            for r, e in base_images.items()}), 0)
        return make

    def text_noise(sd: float, seed: int) -> SweepResult:
        return pool.result(pool.counts(base_images, _noisy(pool.text, sd, np.random.default_rng(seed))), 0)

    sds = [float(x) for x in np.linspace(0.01, 0.07, 13)]
    studies = [("all ratios, image embeddings", image_noise(PAPER_RATIOS), (0.0,), [1.0, 1.5, 2.0, 3.0], sds),
               ("occlusion only (clean identical)", image_noise(OCCLUDED), LOW_OCCLUSION, [1.5, 2.5], sds),
               ("report embeddings", text_noise, (0.0,), [2.5], sds)]
    detection = []
    for name, make, ratios, targets, sds in studies:
        sd_for = calibrate(make, ref, ratios, targets, sds)
        for target in targets:
            records = []
            for i in range(args.replicates):
                cand = make(sd_for[target], 50_000 + 1000 * int(10 * target) + i)
                records.append({"drop_pts": drop(ref, cand, ratios), **gate_both(ref, cand, args.alpha)})
            drops = [r["drop_pts"] for r in records]
            row = {"degradation": name, "target_drop_pts": target, "measured_on": [100 * r for r in ratios],
                   "noise_sd": sd_for[target], "drop_mean": float(np.mean(drops)),
                   "drop_range": [float(min(drops)), float(max(drops))],
                   **{rule: rate(records, rule) for rule in RULES}}
            detection.append(row)
            print(f"(c) {name}, target -{target}: realised {row['drop_mean']:.2f} "
                  f"[{row['drop_range'][0]:.2f}, {row['drop_range'][1]:.2f}]; "
                  + ", ".join(f"{r}: {row[r]['rate']:.2f}" for r in RULES), flush=True)
    doc["degraded"] = detection
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(doc)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _fmt(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['failed']}/{r['n']} = {100 * r['rate']:.0f} % [{100 * lo:.0f}-{100 * hi:.0f}]"


def print_table(doc: dict[str, Any]) -> None:
    """The Markdown table README and docs/statistics.md carry."""
    print("\n| case | realised drop of Recall@10 (points) | default rule (paired) | unpaired rule (table) |")
    print("|---|---|---|---|")
    for label, key in (("unchanged model, other occlusion seeds (false alarms)", "unchanged_other_seeds"),
                       ("equally good, different models (false alarms)", "equally_good_models")):
        print(f"| {label} | 0 | {_fmt(doc[key][RULES[0]])} | {_fmt(doc[key][RULES[1]])} |")
    for row in doc["degraded"]:
        where = "clean" if row["measured_on"] == [0.0] else "mean over 0.25-9 % occlusion"
        print(f"| {row['degradation']}, target -{row['target_drop_pts']:g} | {row['drop_mean']:.2f} "
              f"({row['drop_range'][0]:.2f} to {row['drop_range'][1]:.2f}), {where} | {_fmt(row[RULES[0]])} | "
              f"{_fmt(row[RULES[1]])} |")


if __name__ == "__main__":
    raise SystemExit(main())
