"""What JPEG draft decoding costs in fidelity and saves in time, measured in one run.

    python benchmarks/decode_fidelity.py                       # 994 phantom studies as 2,048 x 2,458 JPEGs
    python benchmarks/decode_fidelity.py --studies 200 --out docs/decode_fidelity.json

The gate decodes JPEGs in full by default (the authors' pipelines); ``--cxr-draft-decode`` lets PIL decode
them at 1/2, 1/4 or 1/8 scale, never below the model's input side. This script writes the phantom films as
JPEG files of MIMIC-CXR-JPG's order of size (not square, so no side is 512 or 224) and measures, on the same
files in the same process:

* ``demo``: the demo model's full occlusion sweep with exact and with draft decoding (fresh caches): decode
  time of each, and the largest Recall@k difference over the 8 x 6 grid, in points;
* ``architectures``: for each paper architecture, built with random weights in its published file format
  (the tests' builder), the largest absolute difference between the clean-image embeddings from exact and
  from draft decoding, and for CXR-CLIP the effect of its 512 pre-resize (``pre_resize=None``).

Random weights give meaningless Recall, so the architectures' figures are embedding shifts only; the Recall
effect is the demo's (a trained model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' random-weight builders

from cxr_robust import PAPER_KS  # noqa: E402
from cxr_robust.cache import EmbeddingCache  # noqa: E402
from cxr_robust.data.phantom import phantom  # noqa: E402
from cxr_robust.engine import SharedPixels, SweepConfig, preprocess_images, run_sweep  # noqa: E402
from cxr_robust.models import load_model  # noqa: E402

from sweep_benchmark import as_jpeg_files  # noqa: E402  (benchmarks/ is sys.path[0] when run)


def demo_effect(data: Any, tmp: Path) -> dict[str, Any]:
    """The demo's occlusion sweep with exact and draft decoding: decode times and the Recall differences."""
    model = load_model("phantom-clip")
    out: dict[str, Any] = {}
    grids = {}
    for draft in (False, True):
        config = SweepConfig(draft_decode=draft, ks=tuple(k for k in PAPER_KS if k <= data.num_studies))
        result = run_sweep(model, data, config, EmbeddingCache(tmp / f"cache-{draft}"), shared_pixels=SharedPixels())
        grids[draft] = result.grid()
        out["draft" if draft else "exact"] = {"decode_s": result.meta["timings"]["decode_s"],
                                              "total_s": result.meta["timings"]["total_s"]}
    diffs = [100 * (grids[True][c][k] - grids[False][c][k]) for c in grids[False] for k in grids[False][c]]
    out["max_abs_recall_diff_points"] = round(float(np.max(np.abs(diffs))), 3)
    out["mean_abs_recall_diff_points"] = round(float(np.mean(np.abs(diffs))), 3)
    out["decode_speedup"] = round(out["exact"]["decode_s"] / out["draft"]["decode_s"], 2)
    out["cells"] = len(diffs)
    return out


def embedding_shift(model: Any, data: Any, draft_model: Any | None = None, draft: bool = True) -> float:
    """Largest |difference| between clean embeddings of ``model`` (exact decoding) and ``draft_model`` (draft)."""
    import torch

    other = draft_model or model
    with torch.inference_mode():
        exact = model.encode_images(preprocess_images(data, model, draft=False))
        moved = other.encode_images(preprocess_images(data, other, draft=draft))
    return float((exact - moved).abs().max())


def architecture_effect(data: Any, tmp: Path) -> dict[str, Any]:
    """Per paper architecture (random weights): draft-vs-exact embedding shift; CXR-CLIP: pre-resize on/off."""
    from tests.model_fixtures import build_paper_model

    out: dict[str, Any] = {}
    for name in ("clip", "cxr-repair", "medclip-vit", "medclip-resnet", "cxr-clip-swint", "cxr-clip-r50"):
        model = build_paper_model(name, tmp / name)
        row = {"draft_vs_exact_max_abs": embedding_shift(model, data)}
        if name.startswith("cxr-clip"):
            plain = build_paper_model(name, tmp / f"{name}-plain", pre_resize=None)
            row["no_pre_resize_vs_default_max_abs"] = embedding_shift(model, data, plain, draft=False)
        out[name] = {k: float(f"{v:.3g}") for k, v in row.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print them and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=994)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--height", type=int, default=2458)
    p.add_argument("--arch-images", type=int, default=32, help="images per architecture for the embedding shifts")
    p.add_argument("--skip-architectures", action="store_true")
    p.add_argument("--skip-demo", action="store_true", help="only the architectures' shifts (on --arch-images studies)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"studies": args.arch_images if args.skip_demo else args.studies,
                              "jpeg_size": [args.width, args.height]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "jpeg").mkdir()
        studies = args.arch_images if args.skip_demo else args.studies
        data = as_jpeg_files(phantom(num_studies=studies), tmp / "jpeg", args.width, args.height)
        result["images"] = data.num_images
        if not args.skip_demo:
            result["demo"] = demo_effect(data, tmp)
            print(json.dumps({"demo": result["demo"]}, indent=1), flush=True)
        if not args.skip_architectures:
            few = data.subset(range(min(args.arch_images, data.num_studies)))
            result["architectures"] = architecture_effect(few, tmp)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
