"""The Ray engine's cost on this machine, and what it means for 100k, 377k and 1M images.

    python benchmarks/ray_scaling.py                          # 200 phantom studies, occlusion 4 / 25 / 81 %
    python benchmarks/ray_scaling.py --studies 200 --out /tmp/ray_scaling.json

Measured, within one run on the same machine and load:

1. the same sweep (demo model ``phantom-clip``, occlusion at three ratios, fresh caches) on the local engine
   and on the Ray engine (a local Ray on this machine's CPUs): wall time, the ratio ray / local,
   and whether the embeddings are bit-identical (the cache entries are compared byte for byte);
2. what a Ray batch costs on top of its compute: many small tasks of a trivial actor (same descriptor and
   output format as the engine, 64 rows x D floats per task) give the per-task overhead and the pool's start;
3. the compute of one batch as a worker runs it (decode + preprocess + perturb + encode of 64 images, in this
   process with the same code), and the driver's cost per batch (merge + atomic shard write with fsync).

Calculated (not run): wall time of a sweep of C = 8 conditions (the paper's grid) for N = 100k, 377k and 1M
images on W workers, each worker as fast as this machine with the measured thread count, from

    T(N, W) = pool_start + max(ceil(B / W) * (t_decode_batch + C * t_encode_batch + t_task), B * C * t_driver)

with B = ceil(N / batch_size). ``pool_start`` is the measured fixed cost of the sweep's actor pool (worker
start, imports, model load); each task decodes its batch once and encodes it at every condition; the second
term of the max is the driver's serial limit (merge and shard write per batch and condition). The local
engine takes one decode of every image plus B * C * t_encode_batch, and holds every decoded image in memory
(the table shows how much). Paper-size models (ViT-B/32 at 224 px) compute about 10-20 times more per image
than the demo model, which makes the fixed costs matter less; only the demo model can be measured offline.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr_robust import ray_engine
from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, encode_perturbed, preprocess_images, run_sweep
from cxr_robust.models import load_model
from cxr_robust.perturbations import Condition

SIZES = (100_000, 377_110, 1_000_000)  # 377,110: every MIMIC-CXR image
WORKERS = (1, 2, 4, 8, 16, 32, 64)


class _Echo:
    """A Ray Data actor that returns the engine's output format (rows x D floats) without computing."""

    def __init__(self, rows: int, dim: int) -> None:
        self.emb = np.zeros((rows, dim), dtype=np.float32)

    def __call__(self, d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = self.emb.shape[0]
        return {"batch": np.full(n, int(d["batch"][0]), dtype=np.int64), "pos": np.arange(n, dtype=np.int64),
                "image_id": np.array([f"img-{i}" for i in range(n)], dtype=object), "emb": self.emb,
                "not_unit": np.zeros(n, dtype=np.int64), "t": np.full(n, time.time())}


def task_overhead(ray: Any, tasks: int, rows: int, dim: int) -> dict[str, float]:
    """Per-task cost of the engine's Ray Data pattern (one descriptor per block, an actor pool of one)."""
    items = [{"batch": b} for b in range(tasks)]
    t0 = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=tasks).map_batches(
        _Echo, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"rows": rows, "dim": dim}, num_cpus=1)
    arrivals = [time.perf_counter() - t0 for _ in ds.iter_batches(batch_size=None, batch_format="numpy")]
    return {"tasks": tasks, "pool_start_s": arrivals[0], "total_s": arrivals[-1],
            "per_task_s": (arrivals[-1] - arrivals[0]) / max(1, len(arrivals) - 1)}


def batch_costs(model: Any, data: Any, condition: Condition, config: SweepConfig, threads: int,
                repeats: int) -> dict[str, float]:
    """Per batch, measured here with the engines' own code, interleaved: a Ray worker's compute (decode +
    preprocess + perturb + encode), the decoding alone, the local engine's compute (perturb + encode of pixels
    decoded beforehand), and the driver's merge + atomic shard write."""
    import torch

    ray = ray_engine._import_ray()
    refs = {"model": ray.put(model), "data": ray.put(data)}
    worker = ray_engine.BatchEncoder(refs, np.arange(data.num_images), list(data.image_ids), [condition], config,
                                     "cpu", threads)
    size = config.batch_size

    def one(s: int) -> tuple[float, float, float, dict[str, np.ndarray]]:
        t0 = time.perf_counter()
        out = worker({"batch": np.array([0]), "start": np.array([s]), "stop": np.array([s + size]),
                      "jobs": np.array(["0"])})
        t1 = time.perf_counter()
        pixels = preprocess_images(data, model, config.decode_workers, False, config.draft_decode,
                                   list(range(s, s + size)))
        t2 = time.perf_counter()
        encode_perturbed(model, pixels, data.image_ids[s:s + size], condition, config, "cpu")
        return t1 - t0, t2 - t1, time.perf_counter() - t2, out

    starts = list(range(0, data.num_images - size + 1, size))[:repeats]
    one(starts[0])  # warm-up (first calls of the model and the perturbation), not counted
    runs = [one(s) for s in starts]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for i, (_, _, _, out) in enumerate(runs):
            emb = np.stack(list(out["emb"]))  # what the driver does with a batch's rows, then the shard
            ray_engine._write_shard(Path(tmp), i * size, (i + 1) * size, emb, [str(x) for x in out["image_id"]], 0)
        driver = (time.perf_counter() - t) / len(runs)
    return {"batch_size": size, "batches_timed": len(runs),
            "t_batch_s": float(np.median([r[0] for r in runs])),
            "t_decode_image_s": float(np.median([r[1] for r in runs])) / size,
            "t_local_batch_s": float(np.median([r[2] for r in runs])),
            "t_driver_s": driver, "torch_threads": torch.get_num_threads()}


def image_files(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "image").glob("*.npz"))}


def measure(studies: int, ratios: tuple[float, ...], batch_size: int, repeats: int) -> dict[str, Any]:
    import torch

    data = phantom("eval", num_studies=studies)
    model = load_model("phantom-clip")
    conditions = tuple(Condition("occlusion", r) for r in ratios)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                       "torch": torch.__version__, "python": sys.version.split()[0],
                                       "load_average_at_start": os.getloadavg()[0]},
                           "sweep": {"model": "phantom-clip", "studies": data.num_studies, "images": data.num_images,
                                     "conditions": [c.key for c in conditions], "batch_size": batch_size},
                           "engines": {}}
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):  # local first: a starting Ray's background processes do not slow it
            if engine == "ray":
                t = time.perf_counter()
                ray = ray_engine.init_ray(None)
                out["ray_init_s"] = time.perf_counter() - t
                out["machine"]["ray"] = ray.__version__
            cache = Path(tmp) / engine
            config = SweepConfig(conditions=conditions, ks=(1, 5, 10), batch_size=batch_size, engine=engine)
            t = time.perf_counter()
            result = run_sweep(model, data, config, EmbeddingCache(cache))
            wall = time.perf_counter() - t
            timings = result.meta["timings"]
            out["engines"][engine] = {"wall_s": wall, "texts_s": timings.get("texts_s", 0.0),
                                      "decode_s": timings.get("decode_s", 0.0),
                                      "per_condition_s": {c.key: timings[f"{c.key}_s"] for c in conditions},
                                      "grid": {c.key: result.grid()[c] for c in conditions}}
            files[engine] = image_files(cache)
    local, remote = out["engines"]["local"], out["engines"]["ray"]
    out["bit_identical"] = files["local"] == files["ray"] and len(files["local"]) == len(conditions)
    out["grids_equal"] = local["grid"] == remote["grid"]
    out["ratio_ray_over_local"] = {"sweep": remote["wall_s"] / local["wall_s"]}

    how = ray_engine.plan(ray, "cpu")
    out["plan"] = {"workers": how.workers, "threads": how.threads}
    config = SweepConfig(conditions=conditions, batch_size=batch_size)
    with ray_engine._quiet_ray_data(ray):
        out["task"] = task_overhead(ray, tasks=200, rows=batch_size, dim=model.embed_dim)
    out["batch"] = batch_costs(model, data, conditions[-1], replace(config, progress=False), how.threads or 1, repeats)
    n_batches = math.ceil(data.num_images / batch_size)
    # The ray engine embeds every condition before the scoring loop: its image work is the rest of the wall.
    ray_images = remote["wall_s"] - remote["texts_s"] - sum(remote["per_condition_s"].values())
    b = out["batch"]
    work = n_batches * (batch_size * b["t_decode_image_s"] + len(conditions) * b["t_local_batch_s"]
                        + out["task"]["per_task_s"]) / how.workers
    out["pass_start_s"] = max(0.0, float(ray_images - work))  # what the sweep's pool costs beyond its batches
    out["model"] = project(out, model)
    out["machine"]["load_average_at_end"] = os.getloadavg()[0]  # other processes on the machine skew all of it
    return out


SWEEP_CONDITIONS = 8
"""Conditions of the projected sweep: the paper's grid (the clean images and 7 occlusion ratios)."""


def project(m: dict[str, Any], model: Any) -> dict[str, Any]:
    """Calculated wall time of a sweep of :data:`SWEEP_CONDITIONS` conditions, local and on W Ray workers.

    Local: decode every image once, then one pass per condition. Ray: one actor pool for the sweep; each task
    decodes its batch once and encodes it at every condition; the driver merges and shards each (batch,
    condition) in turn, which bounds the sweep from below however many workers there are.
    """
    size, c = m["batch"]["batch_size"], SWEEP_CONDITIONS
    t_task, t_driver = m["task"]["per_task_s"], m["batch"]["t_driver_s"]
    t_decode_batch, t_encode_batch = size * m["batch"]["t_decode_image_s"], m["batch"]["t_local_batch_s"]
    rows = []
    for n in SIZES:
        b = math.ceil(n / size)
        local = {"sweep_s": n * m["batch"]["t_decode_image_s"] + b * c * t_encode_batch,
                 "decode_once_s": n * m["batch"]["t_decode_image_s"],
                 "pixels_gb": n * model.input_channels * model.input_size ** 2 / 1e9}
        ray = {str(w): m["pass_start_s"] + max(math.ceil(b / w) * (t_decode_batch + c * t_encode_batch + t_task),
                                               b * c * t_driver) for w in WORKERS}
        rows.append({"images": n, "batches": b, "local": local, "ray_sweep_s": ray,
                     "driver_limit_s": b * c * t_driver})
    return {"conditions": c, "rows": rows,
            "formula": "pool_start + max(ceil(B/W) * (t_decode_batch + C * t_encode_batch + t_task), B * C * t_driver)"}


def _fmt(s: float) -> str:
    return f"{s:,.0f} s" if s < 5400 else f"{s / 3600:,.1f} h"


def report(m: dict[str, Any]) -> str:
    """The measurements and the projection as printed text."""
    e, lines = m["engines"], []
    lines.append(f"machine: {m['machine']['cpus']} CPUs, torch {m['machine']['torch']} "
                 f"({m['machine']['torch_threads']} threads), ray {m['machine']['ray']}; ray.init "
                 f"{m['ray_init_s']:.1f} s (not in the sweep times); load average "
                 f"{m['machine']['load_average_at_start']:.1f} at start, {m['machine']['load_average_at_end']:.1f} at end")
    sw = m["sweep"]
    lines.append(f"sweep: {sw['model']}, {sw['studies']} studies / {sw['images']} images, {', '.join(sw['conditions'])},"
                 f" batch {sw['batch_size']}; ray plan: {m['plan']['workers']} worker(s) x {m['plan']['threads']} "
                 "thread(s)")
    lines.append(f"{'':24}{'local':>10}{'ray':>10}{'ray/local':>11}")
    lines.append(f"{'sweep wall':24}{e['local']['wall_s']:>9.1f}s{e['ray']['wall_s']:>9.1f}s"
                 f"{m['ratio_ray_over_local']['sweep']:>10.2f}x")
    lines.append(f"bit-identical embeddings: {m['bit_identical']}; equal grids: {m['grids_equal']}")
    t, b = m["task"], m["batch"]
    lines.append(f"per Ray task: {1e3 * t['per_task_s']:.1f} ms ({t['tasks']} tasks of {b['batch_size']} rows; a "
                 f"trivial pool starts in {t['pool_start_s']:.1f} s); pass start with the model: "
                 f"{m['pass_start_s']:.1f} s")
    lines.append(f"per batch of {b['batch_size']}: worker (decode + perturb + encode) {b['t_batch_s']:.3f} s, local "
                 f"(perturb + encode) {b['t_local_batch_s']:.3f} s, decode {1e3 * b['t_decode_image_s']:.2f} ms "
                 f"per image, driver (merge + shard) {1e3 * b['t_driver_s']:.1f} ms")
    lines.append("")
    lines.append(f"calculated wall time of a sweep of {m['model']['conditions']} conditions (workers as fast as this "
                 "machine's):")
    head = f"{'images':>10} {'local':>9} {'decode':>8} {'pixels':>8} " + " ".join(f"{'W=' + str(w):>8}"
                                                                               for w in WORKERS)
    lines.append(head)
    for r in m["model"]["rows"]:
        loc = r["local"]
        lines.append(f"{r['images']:>10,} {_fmt(loc['sweep_s']):>9} {_fmt(loc['decode_once_s']):>8} "
                     f"{loc['pixels_gb']:>6.0f}GB " + " ".join(f"{_fmt(r['ray_sweep_s'][str(w)]):>8}" for w in WORKERS))
    lines.append("(local: every image decoded once and held in memory ('decode', 'pixels'), then one pass per "
                 "condition; ray: each task decodes its batch once for all conditions. The driver alone limits a "
                 "sweep to "
                 + ", ".join(f"{_fmt(r['driver_limit_s'])}" for r in m["model"]["rows"]) + ")")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=200, help="phantom studies (default 200)")
    p.add_argument("--ratios", default="4,25,81", help="occlusion ratios in percent (default 4,25,81)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="batches timed for the per-batch compute")
    p.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    m = measure(args.studies, tuple(float(r) / 100 for r in args.ratios.split(",")), args.batch_size, args.repeats)
    print(report(m))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(m, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if m["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
