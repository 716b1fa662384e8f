"""Do fp16 / bf16 encoders give the same retrieval ranks as fp32? Run before switching ``--cxr-precision``.

    python benchmarks/precision_agreement.py                                   # demo + random-weight CLIP family
    python benchmarks/precision_agreement.py --device cuda --studies 994       # the full phantom set on a GPU
    python benchmarks/precision_agreement.py --models cxr-clip-swint --weights cxr-clip-swint=r.tar --bert-vocab V

For each model, the same sweep (same images, boxes and reports) runs in fp32 and in each reduced precision;
the table gives the share of queries whose rank of the true report is unchanged, the largest rank shift and the
largest Recall@k difference (:func:`cxr_robust.precision.rank_agreement`), with the time of each run. ``clip``
and ``cxr-repair`` are built with random weights (seeded) and saved as state dicts, then loaded through the
registry like published files, unless ``--weights`` names real ones. On a CPU without native half precision,
autocast is emulated and slow: keep ``--studies`` small there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cxr_robust import PAPER_KS
from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, pick_device, run_sweep
from cxr_robust.models import load_model
from cxr_robust.precision import PRECISIONS, rank_agreement

RANDOM_CLIP_FAMILY = ("clip", "cxr-repair")


def random_clip_weights(directory: Path, seed: int = 0) -> Path:
    """A seeded random ViT-B/32 CLIP state dict in OpenAI's key layout (what both CLIP-family loaders read)."""
    import torch

    from cxr_robust.models.clip_family import build_vit_b32_quickgelu

    torch.manual_seed(seed)
    path = directory / f"random-vit-b32-seed{seed}.pt"
    torch.save(build_vit_b32_quickgelu().state_dict(), path)
    return path


def measure(model_name: str, weights: str | None, bert_vocab: str | None, data: Any, ratios: tuple[float, ...],
            precisions: list[str], device: str) -> dict[str, Any]:
    """fp32 and each of ``precisions`` on the same sweep: agreement and seconds."""
    kwargs = {"bert_vocab": bert_vocab} if bert_vocab else {}
    model = load_model(model_name, weights=weights, **kwargs)
    ks = tuple(k for k in PAPER_KS if k <= data.num_studies)  # small smoke sets cannot have Recall@100
    results, seconds = {}, {}
    for precision in ["fp32", *precisions]:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: every run encodes
            t0 = time.perf_counter()
            results[precision] = run_sweep(model, data, SweepConfig(ratios=ratios, ks=ks, device=device,
                                                                    precision=precision), EmbeddingCache(tmp))
            seconds[precision] = round(time.perf_counter() - t0, 2)
    out: dict[str, Any] = {"model": model_name, "weights": "given" if weights else "shipped/random",
                           "seconds": seconds}
    for precision in precisions:
        out[precision] = rank_agreement(results["fp32"], results[precision])["overall"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="phantom-clip,clip,cxr-repair", help="comma-separated registered models")
    p.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH", help="real weights for a model")
    p.add_argument("--bert-vocab", default=None, help="Bio_ClinicalBERT vocab (MedCLIP / CXR-CLIP)")
    p.add_argument("--precisions", default="bf16,fp16", help="reduced precisions to compare with fp32")
    p.add_argument("--studies", type=int, default=60, help="phantom eval studies (default 60; 994 = full set)")
    p.add_argument("--ratios", default="0,25,81", help="occlusion ratios in percent")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when present)")
    p.add_argument("--out", type=Path, default=None, help="write the measurements as JSON")
    args = p.parse_args(argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    bad = [x for x in precisions if x not in PRECISIONS or x == "fp32"]
    if bad:
        p.error(f"--precisions takes fp16 and/or bf16, not {bad}")
    weights = dict(item.split("=", 1) for item in args.weights)
    ratios = tuple(float(r) / 100 for r in args.ratios.split(","))
    device = pick_device(args.device)
    data = phantom("eval", num_studies=args.studies)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            path = weights.get(name)
            if path is None and name in RANDOM_CLIP_FAMILY:
                path = str(random_clip_weights(Path(tmp)))
            rows.append(measure(name, path, args.bert_vocab, data, ratios, precisions, device))
            row = rows[-1]
            for precision in precisions:
                a = row[precision]
                print(f"{name:14s} {precision} vs fp32 on {device}, {data.num_images} images x {len(ratios)} ratios: "
                      f"{a['identical_rank']:.2%} of queries keep their rank, largest rank shift "
                      f"{a['max_rank_shift']:g}, largest |Recall@k difference| {100 * a['max_recall_diff']:.2f} pts "
                      f"(fp32 {row['seconds']['fp32']} s, {precision} {row['seconds'][precision]} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": device, "python": sys.version.split()[0], "studies": args.studies,
                                        "images": data.num_images, "ratios": list(ratios), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
