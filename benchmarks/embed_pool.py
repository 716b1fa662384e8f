"""Embeddings of the demo model on the phantom eval set for several occlusion seeds (input of validate_gate.py).

    python benchmarks/embed_pool.py --seeds 12 --out /tmp/val/pool.npz

For every occluded paper ratio and every seed ``0..seeds-1`` the image embeddings are computed once (boxes
drawn from (seed, image id, ratio) exactly as the gate draws them), plus the clean images and the reports.
The validation study then builds many gate runs from these at the cost of a matrix product each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cxr_robust import PAPER_RATIOS

_W: dict = {}


def _init() -> None:
    import torch

    from cxr_robust.cache import default_cache_dir
    from cxr_robust.data.phantom import phantom
    from cxr_robust.engine import preprocess_images
    from cxr_robust.models import load_model

    torch.set_num_threads(1)
    data = phantom("eval", seed=0, cache_dir=default_cache_dir() / "phantom")
    model = load_model("phantom-clip")
    model.to("cpu")
    for m in model.torch_modules():
        m.eval()
    _W.update(data=data, model=model, pixels=preprocess_images(data, model, progress=False))


def _task(task: tuple[int, float]) -> tuple[int, float, np.ndarray]:
    from cxr_robust.engine import SweepConfig, encode_occluded

    seed, ratio = task
    emb = encode_occluded(_W["model"], _W["pixels"], _W["data"].image_ids, ratio,
                          SweepConfig(seed=seed, progress=False), "cpu")
    return seed, ratio, emb.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    _init()
    from cxr_robust.engine import encode_texts

    data, model = _W["data"], _W["model"]
    out = {"text": encode_texts(model, data.texts(model.default_text_policy), data.study_ids, 64),
           "study": data.image_study, "image_ids": np.array(data.image_ids)}
    tasks = [(0, 0.0)] + [(s, r) for s in range(args.seeds) for r in PAPER_RATIOS if r > 0]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init) as pool:
        for i, (seed, ratio, emb) in enumerate(pool.map(_task, tasks), start=1):
            out[f"img_s{seed}_r{ratio!r}"] = emb
            print(f"{i}/{len(tasks)} ({time.perf_counter() - t0:.0f}s)", flush=True)
    np.savez(args.out, **out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
