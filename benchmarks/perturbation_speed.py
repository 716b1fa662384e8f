"""Speed of the perturbation suite: each family batched on the device vs a per-image PIL/NumPy version, and
a full sweep of every family at 5 severities vs the model-compute floor.

    python benchmarks/perturbation_speed.py                      # both parts, prints tables
    python benchmarks/perturbation_speed.py --out docs/perturbation_benchmark.json

Part 1 times, for each registered perturbation at level 3 (occlusion: 25 %), the batched ``apply`` of already
drawn parameters on 64 phantom films against the per-image reference implementations the tests use as oracles
(``tests/oracles``) applying the same parameters, in the same run (drawing the parameters, shared by both, is
timed on its own), at 128 px (the demo model) and 224 px (CLIP-family inputs); best of 3.
Part 2 runs the engine on the phantom set with the demo model over every family at 5 severities (no cache)
and divides the time of its image passes by the model-compute floor: the same number of passes of encoding
already-decoded pixels with no perturbation, measured in the same run (median of single passes timed before
and after the sweep). Ratios are the result; absolute
seconds are printed for context only (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from cxr_robust.data.phantom import make_study
from cxr_robust.occlusion import Box, apply_box
from cxr_robust.perturbations import Condition, available, get_perturbation


def _references() -> dict[str, Callable[..., np.ndarray]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the oracles live in the repository's tests/
    from tests.oracles.intensity_geometry_overlay import REFERENCES as b
    from tests.oracles.noise_blur_digital import REFERENCES as a

    def occlusion(image: np.ndarray, params: dict, severity: float) -> np.ndarray:
        return apply_box(image, Box(*(int(v) for v in params["boxes"])))

    return {**a, **b, "occlusion": occlusion}


def films(side: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` phantom films at ``side`` px (8 distinct films, repeated) with distinct ids."""
    base = [np.asarray(Image.fromarray(make_study("eval", 0, i, 256).images[0]).resize((side, side)))
            for i in range(8)]
    x = np.stack([base[i % 8] for i in range(count)])[:, None]
    return torch.from_numpy(x.copy()), [f"img-{i}" for i in range(count)]


def _best(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def per_family(sides: tuple[int, ...] = (128, 224), batch: int = 64) -> list[dict[str, Any]]:
    """Seconds per image, batched vs per-image reference, for every registered perturbation with a reference."""
    refs = _references()
    rows = []
    for side in sides:
        x, ids = films(side, batch)
        for name in available():
            p = get_perturbation(name)
            sev = 0.25 if name == "occlusion" else 3.0
            if name not in refs:
                continue
            params = p.sample_params(ids, sev, 0, side, side)
            images = x.numpy()

            def reference() -> None:
                for i in range(batch):
                    refs[name](images[i], {k: v[i] for k, v in params.items()}, sev)

            # The same thing on both sides: applying already-drawn parameters. Drawing them (sample_params,
            # NumPy on the CPU, shared by both) is timed on its own.
            draw = _best(lambda: p.sample_params(ids, sev, 0, side, side))
            batched = _best(lambda: p.apply(x, params, sev))
            slow = _best(reference)
            rows.append({"perturbation": name, "side": side, "params_ms_per_image": 1e3 * draw / batch,
                         "batched_ms_per_image": 1e3 * batched / batch,
                         "reference_ms_per_image": 1e3 * slow / batch, "speedup": slow / batched})
    return rows


def sweep_vs_floor(studies: int = 200, batch_size: int = 64) -> dict[str, Any]:
    """Image-pass time of a sweep over every family x 5 severities, relative to the model-compute floor."""
    from cxr_robust.cache import EmbeddingCache
    from cxr_robust.data.phantom import phantom
    from cxr_robust.engine import SweepConfig, preprocess_images, run_sweep
    from cxr_robust.models import load_model

    model = load_model("phantom-clip")
    data = phantom("eval", num_studies=studies)
    conds = (Condition("occlusion", 0.0),) + tuple(
        Condition(n, s) for n in available() if get_perturbation(n).side == "image"
        for s in get_perturbation(n).default_severities if s)
    import tempfile

    pixels = preprocess_images(data, model)

    def one_pass() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, pixels.shape[0], batch_size):
                model.encode_images(pixels[s:s + batch_size])
        return time.perf_counter() - t0

    # The floor is timed like the sweep's passes (single passes, not a best-of), three before and three after
    # it, so machine load affects both sides alike; the median is used, the minimum is reported too.
    passes = [one_pass() for _ in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        config = SweepConfig(conditions=conds, ks=(5, 10), batch_size=batch_size, cache_images=False,
                             device="cpu", progress=False)
        result = run_sweep(model, data, config, EmbeddingCache(tmp))
    passes += [one_pass() for _ in range(3)]
    timings = result.meta["timings"]
    perturbed = sum(timings[f"{c.key}_s"] for c in conds if not c.is_clean)
    floor_pass = float(np.median(passes))
    n = len(conds) - 1
    return {"studies": studies, "images": data.num_images, "conditions": n, "perturbed_passes_s": perturbed,
            "floor_pass_s": floor_pass, "floor_pass_min_s": min(passes), "floor_s": n * floor_pass,
            "ratio_to_floor": perturbed / (n * floor_pass)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    parser.add_argument("--studies", type=int, default=200, help="phantom studies for the sweep part (default 200)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = per_family()
    print(f"{'perturbation':<16} {'px':>4} {'draw ms/img':>12} {'batched apply':>14} {'per-image apply':>16} "
          f"{'speedup':>8}")
    for r in rows:
        print(f"{r['perturbation']:<16} {r['side']:>4} {r['params_ms_per_image']:>12.3f} "
              f"{r['batched_ms_per_image']:>14.3f} {r['reference_ms_per_image']:>16.3f} {r['speedup']:>7.1f}x")
    sweep = sweep_vs_floor(args.studies)
    print(f"\nsweep of {sweep['conditions']} perturbed conditions on {sweep['images']} phantom images: image passes "
          f"{sweep['perturbed_passes_s']:.1f} s vs model floor {sweep['floor_s']:.1f} s "
          f"= {sweep['ratio_to_floor']:.2f}x")
    if args.out:
        doc = {"machine": {"cpu_count": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__}, "per_family": rows, "sweep_vs_floor": sweep}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
