"""Validation study of the gate: false alarms of an unchanged model, detection of degraded models.

    python benchmarks/validate_gate.py --runs 20 --out docs/validation.json          # the full study
    python benchmarks/validate_gate.py --runs 3 --studies 150 --noise-seeds 1 --strengths 0.03,0.08   # smoke

(a) False alarms. The demo model ``phantom-clip`` is swept on the phantom eval set with occlusion seed 0
    (the reference) and with ``--runs`` other seeds. Each other run is gated against the reference; a run
    "fails" when any (ratio, k) cell of its grid fails. Rules compared:

    * ``unpaired``:   the existing rule (``stats.decide``, baseline = the seed-0 grid, treated as a sample);
    * ``unpaired-fixed``: the same-images variant (``stats.decide_per_cell`` with
      ``baseline_is_sample=False`` and a per-cell seed sd from ``stats.seed_spread``; leave-one-out, so a
      run never tunes its own tolerance);
    * ``paired``:     ``paired.paired_decide`` against the reference's per-query ranks;
    * ``auc``:        ``summaries.auc_gate`` for every k (Bonferroni over k), paired bootstrap.

(b) Detection. Gaussian noise with sd ``strength x RMS(tensor)`` is added to every image-tower tensor (the
    text tower is untouched, so report embeddings are encoded once and served from the cache). Each
    variant is swept (occlusion seed 1000 + i, i.e. a seed different from the reference's, the harder
    case for paired tests) and gated like (a). Its *true drop* is the fall in Recall@10 at 0 % occlusion
    against the reference on the same images. Detection rates are tabulated by true-drop bin.

Ratio 0 is the identity (nothing is occluded), so the unchanged model's ratio-0 ranks do not depend on
the seed: the runs of (a) sweep only the occluded ratios and reuse the reference's ratio-0 ranks.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr_robust import PAPER_KS, PAPER_RATIOS
from cxr_robust.cache import EmbeddingCache, default_cache_dir
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, SweepResult, run_sweep
from cxr_robust.metrics import RankCounts, recall_at_k
from cxr_robust.paired import paired_decide
from cxr_robust.stats import (CellInput, GateRule, clopper_pearson, decide, decide_per_cell, seed_sd_for_baseline,
                              seed_spread)
from cxr_robust.summaries import auc_gate, hits_matrix, robustness_summary

MODES = ("unpaired", "unpaired-fixed", "paired", "auc")
DROP_BINS = (-np.inf, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, np.inf)  # true drop of Recall@10 at 0 %, in points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="occlusion seeds of the unchanged model besides seed 0")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--studies", type=int, default=None, help="phantom eval studies (default 994; smaller = smoke)")
    p.add_argument("--strengths", default="0.02,0.03,0.033,0.036,0.04,0.05,0.065",
                   help="relative noise sd added to image-tower weights (comma-separated)")
    p.add_argument("--noise-seeds", type=int, default=2, help="noise draws per strength")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the AUC gate")
    p.add_argument("--stand-in", action="store_true",
                   help="use a randomly initialised phantom-clip (seeded) instead of the shipped weights")
    p.add_argument("--weights", default=None, help="phantom-clip weights file (default: the shipped one)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="sweeps run in this many processes, one torch thread each (default: up to 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64 is fastest on CPU)")
    args = p.parse_args(argv)
    if args.studies is not None and args.studies < max(PAPER_KS):
        p.error(f"--studies must be at least {max(PAPER_KS)} (Recall@{max(PAPER_KS)} needs that many reports)")
    return args


# ----- models ------------------------------------------------------------------------------------------------

def base_model(args: argparse.Namespace) -> Any:
    """The unchanged model: shipped weights, or a seeded random initialisation for smoke runs."""
    import torch

    from cxr_robust.models import load_model
    from cxr_robust.models.demo import build_phantom_clip, wrap_phantom_clip

    if not args.stand_in:
        return load_model("phantom-clip", weights=args.weights)
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(0)
        net = build_phantom_clip()
    return wrap_phantom_clip(net.float().eval(), {"stand_in": "random-init-seed0"})


def degraded(base: Any, strength: float, seed: int) -> Any:
    """A copy of ``base`` with Gaussian noise (sd = strength x per-tensor RMS) on its image tower."""
    import torch

    from cxr_robust.models.demo import wrap_phantom_clip

    net = copy.deepcopy(base.model).cpu()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.visual.parameters():
            rms = p.pow(2).mean().sqrt()
            p.add_(torch.randn(p.shape, generator=gen) * strength * rms)
    ref_state = base.model.state_dict()
    for name, value in net.state_dict().items():
        if not name.startswith("visual.") and not torch.equal(value.cpu(), ref_state[name].cpu()):
            raise AssertionError(f"noise reached the text tower ({name}); the text cache would be wrong")
    # Same fingerprint as the base model on purpose: it keys the text cache, and the text tower is
    # bit-identical (checked above). Image embeddings are never cached in this study (cache_images=False).
    return wrap_phantom_clip(net.eval(), base.fingerprint())


# ----- gate modes ------------------------------------------------------------------------------------------

def _cells(grid: dict[float, dict[int, float]], ref_grid: dict[float, dict[int, float]], m: int,
           n: int) -> list[CellInput]:
    return [CellInput("phantom-clip", r, k, v, m, n, ref_grid[r][k], m) for r, by_k in grid.items()
            for k, v in by_k.items()]


def gate_all(ref: SweepResult, counts: dict[float, RankCounts], spread: dict[tuple[float, int], float],
             args: argparse.Namespace, boot_seed: int) -> dict[str, Any]:
    """Gate one candidate run against the reference under every mode: failing cells per mode."""
    ks, m, n = ref.ks, ref.n_queries, ref.n_candidates
    grid = {r: recall_at_k(c, ks) for r, c in counts.items()}
    cells = _cells(grid, ref.grid(), m, n)
    failing: dict[str, list[str]] = {}
    unpaired = decide(cells, GateRule(alpha=args.alpha))
    failing["unpaired"] = [f"{d.ratio!r}@{d.k}" for d in unpaired if d.passed is False]
    fixed = decide_per_cell(cells, GateRule(alpha=args.alpha, baseline_is_sample=False),
                            seed_sd_for_baseline(spread))
    failing["unpaired-fixed"] = [f"{d.ratio!r}@{d.k}" for d in fixed if d.passed is False]
    paired = paired_decide(ref.counts, counts, ref.image_ids, ref.image_ids, ks, alpha=args.alpha)
    failing["paired"] = [f"{d.ratio!r}@{d.k}" for d in paired if not d.passed]
    failing["auc"] = []
    for k in ks:
        ratios, h_ref = hits_matrix(ref.counts, k)
        _, h_cand = hits_matrix(counts, k)
        res = auc_gate(h_ref, h_cand, ratios, alpha=args.alpha / len(ks), n_boot=args.n_boot, seed=boot_seed)
        if not res["passed"]:
            failing["auc"].append(f"auc@{k}")
    return {**{m: len(failing[m]) for m in MODES}, "failing": failing,
            "chance_failures": sum(not d.chance_passed for d in unpaired),
            "paired_min_p_adjusted": min(d.p_adjusted for d in paired),
            "recall10_clean": grid[0.0][10] if 10 in ks else None}


# ----- the study -------------------------------------------------------------------------------------------

# One torch thread per process: on a 2-core machine two single-threaded sweeps run ~2x faster than one
# sweep on two threads (the ViT's matrices are too small to split well).
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace, cache_root: str) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(args=args, data=load_data(args), model=base_model(args), cache=EmbeddingCache(cache_root))


def _sweep_task(task: tuple[str, int, tuple[float, ...], float, int]) -> dict[str, Any]:
    """Run one sweep in a worker: the unchanged model (``"seed"``) or a noised variant (``"noise"``)."""
    kind, occ_seed, ratios, strength, noise_seed = task
    w = _WORKER
    model = w["model"] if kind == "seed" else degraded(w["model"], strength, noise_seed)
    config = SweepConfig(ratios=ratios, ks=PAPER_KS, seed=occ_seed, device=w["args"].device,
                         batch_size=w["args"].batch_size, cache_images=False, progress=False)
    # Image embeddings are not cached (no two runs share them); report embeddings are, once for all runs.
    res = run_sweep(model, w["data"], config, w["cache"])
    return {"counts": {r: (c.above, c.ties, c.n_candidates) for r, c in res.counts.items()},
            "image_ids": res.image_ids, "seconds": res.meta["timings"]["total_s"],
            "text_encodings": res.meta["text_encodings"]}


def load_data(args: argparse.Namespace) -> Any:
    """The phantom eval set (generated once, then loaded from the package's phantom cache)."""
    return phantom("eval", seed=0, num_studies=args.studies, cache_dir=default_cache_dir() / "phantom")


def run_tasks(tasks: list[tuple], args: argparse.Namespace, cache_root: str) -> Any:
    """Yield the results of ``tasks`` in order, in ``args.workers`` processes (or inline for 1)."""
    if args.workers <= 1:
        _init_worker(args, cache_root)
        yield from map(_sweep_task, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: torch's thread pools in this process are not safe to fork.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(args, cache_root)) as pool:
        yield from pool.map(_sweep_task, tasks)


def _as_counts(raw: dict[float, tuple]) -> dict[float, RankCounts]:
    return {r: RankCounts(a, t, n) for r, (a, t, n) in raw.items()}


def loo_spread(grids: list[dict[float, dict[int, float]]], leave_out: int | None) -> dict[tuple[float, int], float]:
    """Per-cell seed sd from every grid except ``leave_out`` (so a run is not judged by its own noise)."""
    return seed_spread([g for i, g in enumerate(grids) if i != leave_out])


def main(argv: list[str] | None = None) -> int:
    """Run the study, print the tables, write JSON."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    data = load_data(args)  # generate (and cache) before the workers start, so they only load it
    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    print(f"phantom eval: {data.num_images} images, {data.num_studies} reports; model "
          f"{'stand-in (random init)' if args.stand_in else 'phantom-clip'}; {args.runs} seeds; "
          f"{len(strengths)} x {args.noise_seeds} degraded variants; {args.workers} worker(s)", flush=True)
    occluded = tuple(r for r in PAPER_RATIOS if r > 0)
    noise = [(strength, 10_000 * (si + 1) + ns) for si, strength in enumerate(strengths)
             for ns in range(args.noise_seeds)]
    tasks = ([("seed", 0, PAPER_RATIOS, 0.0, 0)]
             + [("seed", s, occluded, 0.0, 0) for s in range(1, args.runs + 1)]
             + [("noise", 1000 + i, PAPER_RATIOS, strength, nseed) for i, (strength, nseed) in enumerate(noise)])

    with tempfile.TemporaryDirectory(prefix="cxr-validate-") as tmp:
        results = run_tasks(tasks, args, tmp)
        first = next(results)
        ref = SweepResult(model="phantom-clip", dataset=data.name, baseline_row="phantom-clip", text_policy="",
                          seed=0, ks=PAPER_KS, counts=_as_counts(first["counts"]), image_ids=first["image_ids"])
        print(f"reference sweep (seed 0): {first['seconds']:.1f}s; Recall@10 at 0 %: "
              f"{100 * ref.recall(0.0, 10):.2f}%", flush=True)
        seed_counts, variant_raw, sweep_seconds, text_encodings = [], [], [first["seconds"]], first["text_encodings"]
        for i, (task, res) in enumerate(zip(tasks[1:], results), start=2):
            sweep_seconds.append(res["seconds"])
            if i % 5 == 0 or i == len(tasks):
                print(f"  {i}/{len(tasks)} sweeps done ({time.perf_counter() - t_start:.0f}s)", flush=True)
            text_encodings += res["text_encodings"]
            if task[0] == "seed":
                # Ratio 0 is the identity, so the unchanged model's ratio-0 ranks are the reference's.
                seed_counts.append({0.0: ref.counts[0.0], **_as_counts(res["counts"])})
            else:
                variant_raw.append((task, _as_counts(res["counts"])))
    t_sweeps = time.perf_counter() - t_start

    grids = [ref.grid()] + [{r: recall_at_k(c, ref.ks) for r, c in sc.items()} for sc in seed_counts]
    spread_all = seed_spread(grids)
    false_alarm_runs = [{"seed": i + 1, **gate_all(ref, counts, loo_spread(grids, i + 1), args, boot_seed=i)}
                        for i, counts in enumerate(seed_counts)]
    variants = []
    for (_, occ_seed, _, strength, nseed), counts in variant_raw:
        rec = gate_all(ref, counts, spread_all, args, boot_seed=occ_seed)
        drop = 100 * (ref.recall(0.0, 10) - recall_at_k(counts[0.0], [10])[10])
        variants.append({"strength": strength, "noise_seed": nseed, "occlusion_seed": occ_seed,
                         "true_drop_r10_pts": drop, **rec})

    doc = summarise(args, data, ref, false_alarm_runs, variants, spread_all, strengths)
    doc["timings_s"] = {"sweeps_wall": round(t_sweeps, 1), "sweep_mean": round(float(np.mean(sweep_seconds)), 1),
                        "total": round(time.perf_counter() - t_start, 1)}
    doc["text_encodings"] = text_encodings  # reports encoded once per worker at most: the cache serves the rest
    print_tables(doc)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def summarise(args: argparse.Namespace, data: Any, ref: SweepResult, runs: list[dict], variants: list[dict],
              spread: dict[tuple[float, int], float], strengths: list[float]) -> dict[str, Any]:
    """The JSON document: configuration, false-alarm rates, detection by true-drop bin, raw records."""
    false_alarm = {m: float(np.mean([r[m] > 0 for r in runs])) if runs else None for m in MODES}
    # 20 runs pin a rate down only loosely: report the exact 95 % interval with it.
    false_alarm_ci = {m: list(clopper_pearson(false_alarm[m], len(runs))) if runs else None for m in MODES}
    bins = []
    for lo, hi in zip(DROP_BINS[:-1], DROP_BINS[1:]):
        sel = [v for v in variants if lo <= v["true_drop_r10_pts"] < hi]
        bins.append({"drop_pts": [None if np.isinf(lo) else lo, None if np.isinf(hi) else hi], "n": len(sel),
                     **{m: (float(np.mean([v[m] > 0 for v in sel])) if sel else None) for m in MODES}})
    big = [v for v in variants if v["true_drop_r10_pts"] >= 3.0]
    sds = np.array(list(spread.values()))
    return {
        "config": {"runs": args.runs, "studies": args.studies, "images": data.num_images, "reports": data.num_studies,
                   "model": "stand-in (random init)" if args.stand_in else "phantom-clip",
                   "strengths": strengths, "noise_seeds": args.noise_seeds, "alpha": args.alpha,
                   "n_boot": args.n_boot, "ratios": list(PAPER_RATIOS), "ks": list(PAPER_KS),
                   "command": " ".join(["python", "benchmarks/validate_gate.py", *sys.argv[1:]])},
        "reference": {"grid": {repr(r): {str(k): v for k, v in by_k.items()} for r, by_k in ref.grid().items()},
                      "summary": robustness_summary(ref.counts, ref.ks, n_boot=1000)},
        "seed_sd": {"median": float(np.median(sds)), "max": float(sds.max()),
                    "per_cell": {f"{r!r}@{k}": v for (r, k), v in spread.items()}},
        "false_alarm_rate": false_alarm,
        "false_alarm_ci95": false_alarm_ci,
        "detection_by_true_drop": bins,
        "detection_drop_ge_3pts": {"n": len(big), **{m: (float(np.mean([v[m] > 0 for v in big])) if big else None)
                                                    for m in MODES}},
        "targets": {"false_alarm_max": 0.05, "paired_detection_drop_ge_3pts_min": 0.95},
        "runs": runs, "variants": variants,
    }


def print_tables(doc: dict[str, Any]) -> None:
    """Compact text tables of the two parts."""
    print(f"\n(a) unchanged model, {len(doc['runs'])} occlusion seeds vs seed 0: share of runs with any failing cell")
    print("    " + "  ".join(f"{m:>14}" for m in MODES))
    print("    " + "  ".join(f"{doc['false_alarm_rate'][m]:>14.2f}" for m in MODES))
    print("    " + "  ".join(f"{'[%.2f, %.2f]' % tuple(doc['false_alarm_ci95'][m]):>14}" for m in MODES)
          + "   exact 95 % CI")
    print(f"    per-cell seed sd of Recall@k: median {100 * doc['seed_sd']['median']:.2f}, "
          f"max {100 * doc['seed_sd']['max']:.2f} points")
    print("\n(b) degraded image tower: detection rate by true drop of Recall@10 at 0 % (points)")
    print(f"    {'drop':>12} {'n':>3}  " + "  ".join(f"{m:>14}" for m in MODES))
    for b in doc["detection_by_true_drop"]:
        lo, hi = b["drop_pts"]
        label = f"<{hi:g}" if lo is None else (f">={lo:g}" if hi is None else f"{lo:g}-{hi:g}")
        cells = "  ".join(f"{'-' if b[m] is None else f'{b[m]:.2f}':>14}" for m in MODES)
        print(f"    {label:>12} {b['n']:>3}  {cells}")
    big = doc["detection_drop_ge_3pts"]
    print(f"    {'>=3 (target)':>12} {big['n']:>3}  " + "  ".join(
        f"{'-' if big[m] is None else f'{big[m]:.2f}':>14}" for m in MODES))
    print(f"\ntimings: {doc['timings_s']}")


if __name__ == "__main__":
    raise SystemExit(main())
