"""One-shot GPU check: the CUDA paths nobody could run yet, measured in one command; README's GPU numbers come from it.

    python benchmarks/gpu_check.py                       # on a machine with an NVIDIA GPU: writes docs/gpu_check.json
    python benchmarks/gpu_check.py --device cuda:1       # another GPU of the machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu.json    # every section on the CPU at tiny sizes

Sections (each timed and run under its own try/except: a failure is recorded in the JSON and the rest still
runs; the exit code is 1 when any section failed, 0 otherwise):

  a. ``pytest -m gpu``: the gpu-marked tests in a subprocess (pass / fail / skip counts and the return code).
  b. Throughput of ``encode_images`` (images/s) for the paper's four architectures -- CLIP ViT-B/32, CXR-RePaiR,
     MedCLIP-ViT, CXR-CLIP Swin-T -- with random weights written in their official files and loaded through
     the registry (``tests.model_fixtures.build_paper_model``, shared with tests/test_gpu.py), at batch sizes
     64-1,024 in fp32, bf16 and fp16 (``cxr_robust.precision.autocast``), after warm-up, synchronised.
  c. The full Table 1 grid, 4 models x 8 occlusion ratios x 6 ks, on the 994-study phantom set (1,757 images;
     MIMIC-CXR's evaluation set has 1,770), end to end through ``run_sweep`` with a fresh cache (no hits).
     Goal: < 60 s in total on one H100-class GPU.
  d. bf16 and fp16 against fp32 on the same sweep: ``cxr_robust.precision.rank_agreement``.
  e. GPU fp32 (TF32 off) against CPU fp32 embeddings of the same preprocessed images, per architecture:
     max |difference| <= 1e-5.

Time budget: at most 8 minutes on one GPU (the JSON records the wall time and whether it stayed within).

Without CUDA (or with ``--dry-run``) every section runs on the CPU at tiny sizes (2 studies / 2 images, batch
sizes 1 and 2, fp32 + bf16, ratios 0 and 0.25 %, ks 1 and 2, CPU compared with CPU in e), says so on stderr and in
the JSON's ``mode``, and records per section what it would measure on a GPU. That keeps this script from
rotting between GPU loans (tests/test_gpu_check.py runs it in CI). A dry run writes to the system temp
directory unless ``--out`` is given, so it never overwrites the GPU record in docs/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests` (the random-weight builder) is a package at the repository root
    sys.path.insert(0, str(ROOT))

from cxr_robust import PAPER_KS, PAPER_RATIOS, __version__  # noqa: E402
from cxr_robust.models import PAPER_MODELS  # noqa: E402

if TYPE_CHECKING:
    from cxr_robust.data.retrieval_set import RetrievalSet
    from cxr_robust.engine import SweepResult
    from cxr_robust.models.base import RetrievalModel

GPU_OUT = ROOT / "docs" / "gpu_check.json"
DRY_OUT = Path(tempfile.gettempdir()) / "cxr_robust_gpu_check_dry_run.json"
GRID_GOAL_S = 60.0
"""Section c's goal: the whole Table 1 grid of the four models in under a minute on one H100-class GPU."""
TIME_BUDGET_S = 8 * 60.0
PARITY_TOLERANCE = 1e-5
"""Largest |GPU fp32 - CPU fp32| embedding difference accepted (TF32 off): both are IEEE fp32, only the
order of accumulation differs, which moves unit-norm 512-d embeddings by ~1e-6."""
MODEL_LABELS = {"clip": "CLIP ViT-B/32", "cxr-repair": "CXR-RePaiR", "medclip-vit": "MedCLIP-ViT",
                "cxr-clip-swint": "CXR-CLIP Swin-T"}
SEED = 0


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the GPU measurement or the CPU dry run."""

    device: str
    studies: int
    batch_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    ratios: tuple[float, ...]
    ks: tuple[int, ...]
    sweep_batch_size: int
    warmup: int
    """Untimed calls before each timed (model, precision, batch size) cell."""
    repeats: int
    """Timed calls per cell."""
    parity_images: int
    phantom_workers: int
    models: tuple[str, ...] = PAPER_MODELS
    """The architectures measured (``--models``; default the four of Table 1)."""


def gpu_plan(device: str) -> Plan:
    """What a GPU run measures (README's numbers)."""
    return Plan(device=device, studies=994, batch_sizes=(64, 128, 256, 512, 1024), precisions=("fp32", "bf16", "fp16"),
                ratios=tuple(PAPER_RATIOS), ks=tuple(PAPER_KS), sweep_batch_size=256, warmup=2, repeats=5,
                parity_images=32, phantom_workers=max(1, min(8, os.cpu_count() or 1)))


# Tiny on purpose: on 2 CPU cores without native bf16 one image of these encoders costs 0.1-0.5 s in fp32 and
# 1-2 s under emulated bf16 autocast, and writing then loading the four architectures (570 M random parameters)
# already takes most of a minute. Every code path still runs: clean and occluded passes, two batch sizes, two
# precisions, the agreement and the parity comparison.
DRY_PLAN = Plan(device="cpu", studies=2, batch_sizes=(1, 2), precisions=("fp32", "bf16"), ratios=(0.0, 0.0025),
                ks=(1, 2), sweep_batch_size=8, warmup=0, repeats=1, parity_images=2, phantom_workers=1)


# --------------------------------------------------------------------------------------------------
# Helpers

def _sync(device: str) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU), so a timer measures the work itself."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _need(data: "RetrievalSet | None") -> "RetrievalSet":
    """The phantom set, or the reason a section cannot run without it."""
    if data is None:
        raise RuntimeError("the phantom set could not be generated (see setup.phantom in the JSON)")
    return data


def _paper_models(directory: Path, names: tuple[str, ...]) -> tuple[dict[str, "RetrievalModel"], dict[str, str],
                                                                    dict[str, float]]:
    """The architectures ``names`` with random weights in their official files, loaded through the registry (CPU)."""
    from tests.model_fixtures import build_paper_model

    models, errors, seconds = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # the synthetic test vocabulary is not Bio_ClinicalBERT's 28,996 entries: expected here
                warnings.filterwarnings("ignore", message=".*entries, not Bio_ClinicalBERT", category=UserWarning)
                models[name] = build_paper_model(name, directory / name, seed=SEED)
        except Exception as exc:  # one architecture failing must not hide the other three
            errors[name] = _error(exc)
        seconds[name] = round(time.perf_counter() - t0, 2)
    return models, errors, seconds


def _sweep_config(plan: Plan, precision: str) -> Any:
    from cxr_robust.engine import SweepConfig

    return SweepConfig(ratios=plan.ratios, ks=plan.ks, device=plan.device, precision=precision,
                       batch_size=plan.sweep_batch_size, seed=SEED, progress=False)


def _fresh_sweep(model: "RetrievalModel", data: "RetrievalSet", plan: Plan, precision: str
                 ) -> tuple["SweepResult", float]:
    """One end-to-end sweep with an empty cache (every text and image is encoded); its result and seconds."""
    from cxr_robust.cache import EmbeddingCache
    from cxr_robust.engine import run_sweep

    with tempfile.TemporaryDirectory(prefix="gpu-check-cache-") as tmp:
        cache = EmbeddingCache(tmp)
        t0 = time.perf_counter()
        result = run_sweep(model, data, _sweep_config(plan, precision), cache)
        _sync(plan.device)
        seconds = time.perf_counter() - t0
    if cache.stats.hits:
        raise RuntimeError(f"{model.name}: {cache.stats.hits} cache hit(s) in a fresh cache; the timing is not a "
                           "full encode")
    return result, seconds


# --------------------------------------------------------------------------------------------------
# Sections

def gpu_test_files() -> list[str]:
    """Test modules that mark something ``gpu`` (the dry run collects only these: see :func:`gpu_tests_command`)."""
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("test_*.py"))
            if "mark.gpu" in p.read_text(encoding="utf-8", errors="replace")]


def parse_pytest_summary(output: str) -> dict[str, int]:
    """Counts from pytest's final summary line (``3 passed, 2 skipped, 1620 deselected in 9.1s``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0, "deselected": 0}
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", ln)
             and re.search(r" in [\d.]+s", ln)]
    if not lines:
        raise ValueError("no pytest summary line in the output; last lines:\n" + "\n".join(output.splitlines()[-5:]))
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1]):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def gpu_tests_command(dry: bool) -> list[str]:
    """a's command: ``pytest -m gpu`` (the dry run narrows it to the modules that mark tests gpu)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    if dry:
        # Collecting the whole suite costs ~20 s on 2 CPU cores; the dry run collects only the modules that
        # mark tests gpu (found by their source text), the GPU run collects everything.
        command += gpu_test_files()
    return command


class GpuTests:
    """Section a, started in the background: the tests load their own models, and building ours (CPU only, the
    GPU idle until section b) meanwhile saves the tests' collection time."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.command = gpu_tests_command(dry)
        self.log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict[str, Any]:
        """Wait for the run; its counts and return code (``errors`` says what is wrong, if anything)."""
        try:
            returncode = self.proc.wait(timeout=max(1.0, TIME_BUDGET_S - (time.perf_counter() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        counts = parse_pytest_summary(output)
        ran = counts["passed"] + counts["failed"] + counts["errors"] + counts["skipped"]
        out: dict[str, Any] = {"command": " ".join(["python"] + self.command[1:]), "returncode": returncode,
                               **counts, "output_tail": "\n".join(output.splitlines()[-15:])}
        problems = []
        if returncode != 0:
            problems.append(f"pytest exited with {returncode}")
        if ran == 0:
            problems.append("no gpu-marked test was collected")
        if not self.dry and counts["passed"] == 0:  # with CUDA present, all-skipped means the tests saw no GPU
            problems.append("no gpu-marked test passed on a CUDA machine")
        if self.dry and counts["passed"]:
            import torch

            if not torch.cuda.is_available():
                problems.append(f"{counts['passed']} gpu-marked test(s) passed without CUDA: a skip marker is missing")
        out["ok"] = not problems
        if problems:
            out["errors"] = {"pytest": "; ".join(problems)}
        return out


def section_throughput(plan: Plan, models: dict[str, "RetrievalModel"]) -> dict[str, Any]:
    """b. images/s of ``encode_images`` per architecture x precision x batch size (pixels already on the device)."""
    import torch

    from cxr_robust.precision import autocast

    rows, errors, oom = [], {}, []
    for name, model in models.items():
        try:
            model.to(plan.device)
            for module in model.torch_modules():
                module.eval()
            gen = torch.Generator().manual_seed(SEED)
            shape = (max(plan.batch_sizes), model.input_channels, model.input_size, model.input_size)
            pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(plan.device)
            for precision in plan.precisions:
                row: dict[str, Any] = {"model": name, "precision": precision, "images_per_s": {}}
                for bs in plan.batch_sizes:
                    batch = pixels[:bs]
                    try:
                        with torch.inference_mode(), autocast(plan.device, precision):
                            for _ in range(plan.warmup):
                                model.encode_images(batch)
                            _sync(plan.device)
                            t0 = time.perf_counter()
                            for _ in range(plan.repeats):
                                emb = model.encode_images(batch)
                            _sync(plan.device)
                            elapsed = time.perf_counter() - t0
                    except torch.cuda.OutOfMemoryError:  # a capacity fact of this GPU, not a bug: recorded
                        row["images_per_s"][str(bs)] = None
                        oom.append(f"{name} {precision} batch {bs}")
                        torch.cuda.empty_cache()
                        continue
                    if emb.shape[0] != bs or not bool(torch.isfinite(emb).all()):
                        raise RuntimeError(f"{precision} batch {bs}: {tuple(emb.shape)} embeddings, finite: "
                                           f"{bool(torch.isfinite(emb).all())}")
                    row["images_per_s"][str(bs)] = round(bs * plan.repeats / elapsed, 2)
                rows.append(row)
            del pixels
        except Exception as exc:
            errors[name] = _error(exc)
    return {"rows": rows, "out_of_memory": oom, "errors": errors,
            "note": "encode_images only: uint8 pixels already on the device, normalisation included"}


def section_grid(plan: Plan, models: dict[str, "RetrievalModel"], data: "RetrievalSet | None",
                 results: dict[str, "SweepResult"]) -> dict[str, Any]:
    """c. The Table 1 grid through ``run_sweep`` per model, fp32, fresh cache; fills ``results`` for d."""
    data = _need(data)
    per_model, errors = {}, {}
    distinct = len({r for r in plan.ratios if r}) + 1  # every ratio 0 is one clean pass
    for name, model in models.items():
        try:
            result, seconds = _fresh_sweep(model, data, plan, "fp32")
            expected = {"text_encodings": data.num_studies, "image_encodings": data.num_images * distinct}
            got = {k: result.meta[k] for k in expected}
            if got != expected:
                raise RuntimeError(f"encoded {got}, expected {expected}: the sweep did not encode everything")
            results[name] = result
            per_model[name] = {"seconds": round(seconds, 2), "timings": result.meta["timings"], **got,
                               "device": result.meta["device"], "cells": len(result.counts) * len(result.ks),
                               "clean_recall": {str(k): round(result.recall(0.0, k), 4) for k in result.ks}}
        except Exception as exc:
            errors[name] = _error(exc)
    total = round(sum(v["seconds"] for v in per_model.values()), 2)
    return {"per_model": per_model, "total_s": total, "goal_s": GRID_GOAL_S,
            "goal": f"< {GRID_GOAL_S:g} s for the 4 models at 994 studies on one H100-class GPU",
            "goal_met": total < GRID_GOAL_S if plan.device.startswith("cuda") and not errors else None,
            "studies": data.num_studies, "images": data.num_images, "errors": errors}


def section_precision(plan: Plan, models: dict[str, "RetrievalModel"], data: "RetrievalSet | None",
                      fp32: dict[str, "SweepResult"]) -> dict[str, Any]:
    """d. Each reduced precision's sweep against c's fp32 sweep: ``rank_agreement`` and seconds."""
    from cxr_robust.precision import rank_agreement

    data = _need(data)
    rows, errors = [], {}
    for name, model in models.items():
        if name not in fp32:
            errors[name] = "no fp32 sweep to compare with (section c failed for this model)"
            continue
        for precision in [p for p in plan.precisions if p != "fp32"]:
            try:
                result, seconds = _fresh_sweep(model, data, plan, precision)
                rows.append({"model": name, "precision": precision, "seconds": round(seconds, 2),
                             "fp32_seconds": fp32[name].meta["timings"]["total_s"],
                             **rank_agreement(fp32[name], result)["overall"]})
            except Exception as exc:
                errors[f"{name} {precision}"] = _error(exc)
    return {"rows": rows, "errors": errors}


def section_parity(plan: Plan, models: dict[str, "RetrievalModel"], data: "RetrievalSet | None") -> dict[str, Any]:
    """e. fp32 embeddings on the plan's device (TF32 off) against the CPU's, on the same preprocessed images."""
    import torch

    from cxr_robust.engine import preprocess_images

    data = _need(data)
    per_model, errors = {}, {}
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # TF32 keeps 10 mantissa bits in matmuls/convolutions: a fp32 comparison must switch it off
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        for name, model in models.items():
            try:
                pixels = preprocess_images(data, model, indices=range(min(plan.parity_images, data.num_images)))
                with torch.inference_mode():
                    model.to("cpu")
                    reference = model.encode_images(pixels).float()
                    model.to(plan.device)
                    other = model.encode_images(pixels.to(plan.device)).float().cpu()
                diff = float((reference - other).abs().max())
                per_model[name] = {"max_abs_diff": diff, "images": int(pixels.shape[0]),
                                   "within_tolerance": diff <= PARITY_TOLERANCE}
                if diff > PARITY_TOLERANCE:
                    errors[name] = f"max |{plan.device} - cpu| = {diff:.3g} > {PARITY_TOLERANCE:g}"
            except Exception as exc:
                errors[name] = _error(exc)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    compared = (f"{plan.device} vs cpu" if plan.device != "cpu" else
                "cpu vs cpu (dry run: no GPU; exercises the code only)")
    return {"compared": compared, "tolerance": PARITY_TOLERANCE, "tf32": False, "per_model": per_model,
            "errors": errors}


# --------------------------------------------------------------------------------------------------
# Running and reporting

def run_section(doc: dict[str, Any], key: str, title: str, fn: Callable[..., dict[str, Any]], *args: Any,
                sizes: dict[str, Any], on_gpu: dict[str, Any] | None, started: float | None = None) -> None:
    """Run one section into ``doc["sections"][key]``: its numbers, or the error, and its wall time (from
    ``started`` when the section began earlier, in the background)."""
    entry: dict[str, Any] = {"title": title, "ok": False, "error": None, "sizes": sizes}
    if on_gpu is not None:
        entry["on_gpu"] = on_gpu
    print(f"[{key[0]}] {title} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter() if started is None else started
    try:
        result = fn(*args)
        entry.update(result)
        entry["ok"] = bool(result.get("ok", True)) and not result.get("errors")
    except Exception as exc:  # recorded; the next section still runs
        entry["error"] = _error(exc)
        entry["traceback"] = traceback.format_exc()
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    doc["sections"][key] = entry


def section_sizes(plan: Plan) -> dict[str, dict[str, Any]]:
    """What each section measures under ``plan`` (stored per section; in a dry run also the GPU plan's)."""
    return {
        "a_gpu_tests": {"command": "python -m pytest -m gpu -q -p no:cacheprovider"},
        "b_throughput": {"models": list(plan.models), "batch_sizes": list(plan.batch_sizes),
                         "precisions": list(plan.precisions), "warmup_calls": plan.warmup,
                         "timed_calls": plan.repeats, "device": plan.device},
        "c_table1_grid": {"models": list(plan.models), "studies": plan.studies, "ratios": list(plan.ratios),
                          "ks": list(plan.ks), "precision": "fp32", "sweep_batch_size": plan.sweep_batch_size,
                          "device": plan.device, "cache": "fresh (no hits)"},
        "d_precision_agreement": {"models": list(plan.models),
                                  "precisions": [p for p in plan.precisions if p != "fp32"],
                                  "against": "fp32 sweep of c", "studies": plan.studies},
        "e_fp32_parity": {"models": list(plan.models), "images": plan.parity_images, "tf32": False,
                          "compare": f"{plan.device} vs cpu", "tolerance": PARITY_TOLERANCE},
    }


def environment(plan: Plan) -> dict[str, Any]:
    """Device name and library versions."""
    import numpy
    import torch

    cuda = plan.device.startswith("cuda")
    return {"device": plan.device,
            "device_name": (torch.cuda.get_device_name(plan.device) if cuda else
                            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"),
            "device_memory_gib": (round(torch.cuda.get_device_properties(plan.device).total_memory / 2**30, 1)
                                  if cuda else None),
            "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "tf32_defaults": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                              "cudnn": torch.backends.cudnn.allow_tf32},
            "cxr_robust": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "cpu_count": os.cpu_count()}


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def format_report(doc: dict[str, Any]) -> str:
    """The readable table printed at the end of a run."""
    env, sections = doc["environment"], doc["sections"]
    lines = [f"cxr-robust GPU check -- mode: {doc['mode']}",
             f"device: {env['device']} ({env['device_name']}); torch {env['torch']}, CUDA {env['cuda'] or 'none'}, "
             f"cuDNN {env['cudnn'] or 'none'}; wall {doc['wall_s']:.1f} s (budget on a GPU {TIME_BUDGET_S:g} s)", ""]

    def head(key: str) -> None:
        s = sections.get(key)
        if s is None:
            lines.append(f"[{key[0]}] not run")
            return
        status = "OK" if s["ok"] else "FAILED"
        lines.append(f"[{key[0]}] {s['title']} -- {s['seconds']:.1f} s -- {status}")
        if s.get("error"):
            lines.append(f"    error: {s['error']}")
        for item, message in (s.get("errors") or {}).items():
            lines.append(f"    error ({item}): {message}")
        if "on_gpu" in s:
            lines.append("    on a GPU this section measures: "
                         + "; ".join(f"{k}={v}" for k, v in s["on_gpu"].items()))

    a = sections.get("a_gpu_tests", {})
    head("a_gpu_tests")
    if "returncode" in a:
        lines.append(f"    {a['passed']} passed, {a['failed']} failed, {a['skipped']} skipped, {a['errors']} errors "
                     f"(return code {a['returncode']}): {a['command']}")
    b = sections.get("b_throughput", {})
    head("b_throughput")
    if b.get("rows"):
        sizes = list(b["rows"][0]["images_per_s"])
        lines.append(f"    {'images/s':<22}" + "".join(f"{'bs ' + s:>10}" for s in sizes))
        for row in b["rows"]:
            label = f"{MODEL_LABELS.get(row['model'], row['model'])} {row['precision']}"
            lines.append(f"    {label:<22}" + "".join(f"{_fmt(row['images_per_s'].get(s)):>10}" for s in sizes))
    c = sections.get("c_table1_grid", {})
    head("c_table1_grid")
    if c.get("per_model"):
        lines.append(f"    {c['studies']} studies, {c['images']} images; goal {c['goal']}; "
                     f"measured total {c['total_s']:.1f} s" + ("" if c["goal_met"] is None else
                                                               f" -> goal {'met' if c['goal_met'] else 'MISSED'}"))
        lines.append(f"    {'model':<22}{'seconds':>9}{'texts':>7}{'images':>8}  clean Recall@k")
        for name, v in c["per_model"].items():
            recall = " ".join(f"@{k}={r:.3f}" for k, r in v["clean_recall"].items())
            lines.append(f"    {MODEL_LABELS.get(name, name):<22}{v['seconds']:>9.1f}{v['text_encodings']:>7}"
                         f"{v['image_encodings']:>8}  {recall}")
    d = sections.get("d_precision_agreement", {})
    head("d_precision_agreement")
    if d.get("rows"):
        lines.append(f"    {'model':<16}{'prec':>6}{'same rank':>11}{'max shift':>11}{'max |dR@k|':>12}{'seconds':>9}")
        for row in d["rows"]:
            lines.append(f"    {MODEL_LABELS.get(row['model'], row['model']):<16}{row['precision']:>6}"
                         f"{row['identical_rank']:>11.2%}{row['max_rank_shift']:>11g}"
                         f"{100 * row['max_recall_diff']:>10.2f}pt{row['seconds']:>9.1f}")
    e = sections.get("e_fp32_parity", {})
    head("e_fp32_parity")
    if e.get("per_model"):
        lines.append(f"    {e['compared']}, TF32 off, {PARITY_TOLERANCE:g} allowed")
        for name, v in e["per_model"].items():
            lines.append(f"    {MODEL_LABELS.get(name, name):<22} max |diff| {v['max_abs_diff']:.3g} "
                         f"over {v['images']} "
                         f"images {'OK' if v['within_tolerance'] else 'EXCEEDS'}")
    lines += ["", f"result: {'all sections OK' if not doc['failed'] else 'FAILED: ' + ', '.join(doc['failed'])}; "
                  f"JSON: {doc['out']}"]
    return "\n".join(lines)


def choose_mode(dry_run: bool, cuda_available: bool, torch_version: str, cuda_build: str | None) -> str:
    """``gpu``, or the dry run's reason (stored as the JSON's ``mode``)."""
    if dry_run:
        return "dry-run (--dry-run): every section on the CPU at tiny sizes; these are not GPU measurements"
    if not cuda_available:
        return (f"dry-run (no CUDA device): torch.cuda.is_available() is False (torch {torch_version}, CUDA build "
                f"{cuda_build or 'none'}); every section ran on the CPU at tiny sizes; these are not GPU measurements")
    return "gpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help=f"the JSON record (default: {GPU_OUT.relative_to(ROOT)} on a GPU, {DRY_OUT} in a dry run)")
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes (no GPU needed)")
    p.add_argument("--device", default="cuda", help="the CUDA device to measure (default: cuda)")
    p.add_argument("--models", default=",".join(PAPER_MODELS),
                   help="comma-separated architectures (default: the four of Table 1; CI's dry run takes one)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    import torch

    if not args.device.startswith("cuda"):
        p.error(f"--device takes a CUDA device (cuda, cuda:1, ...), not {args.device!r}; use --dry-run for the CPU")
    mode = choose_mode(args.dry_run, torch.cuda.is_available(), torch.__version__, torch.version.cuda)
    if mode != "gpu":
        print("\n" + "!" * 100 + f"\n!!! gpu_check: CPU DRY RUN -- {mode}.\n"
              "!!! For README's numbers run this on a machine with an NVIDIA GPU.\n" + "!" * 100 + "\n",
              file=sys.stderr, flush=True)
    dry = mode != "gpu"
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in PAPER_MODELS]
    if unknown or not models:
        p.error(f"--models: {', '.join(unknown) or 'none given'}; choose among {', '.join(PAPER_MODELS)}")
    plan = replace(DRY_PLAN if dry else gpu_plan(args.device), models=models)
    out_path = args.out or (DRY_OUT if dry else GPU_OUT)
    sizes, gpu_sizes = section_sizes(plan), section_sizes(gpu_plan(args.device))
    doc: dict[str, Any] = {"tool": "benchmarks/gpu_check.py", "mode": mode, "dry_run": dry,
                           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "environment": {}, "plan": asdict(plan),
                           "gpu_plan": asdict(gpu_plan(args.device)), "time_budget_s": TIME_BUDGET_S,
                           "setup": {}, "sections": {}, "out": str(out_path)}

    try:
        doc["environment"] = environment(plan)
    except Exception as exc:  # the sections can still run and say more
        doc["environment"] = {"device": plan.device, "device_name": f"unknown ({_error(exc)})",
                              "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None,
                              "error": _error(exc)}

    def on_gpu(key: str) -> dict[str, Any] | None:
        return gpu_sizes[key] if dry else None

    gpu_tests: GpuTests | None = None
    try:
        gpu_tests = GpuTests(dry)
    except Exception as exc:  # recorded as section a's error below
        start_error = exc

    # Setup shared by b-e: the phantom set and the four architectures (loaded on the CPU).
    setup: dict[str, Any] = doc["setup"]
    models: dict[str, RetrievalModel] = {}
    data = None
    with tempfile.TemporaryDirectory(prefix="gpu-check-weights-") as weights_dir:
        t0 = time.perf_counter()
        try:
            models, errors, seconds = _paper_models(Path(weights_dir), plan.models)
            setup["models"] = {"seconds": seconds, "errors": errors,
                               "how": "random weights in the official files, loaded with load_model (seed 0)"}
        except Exception as exc:
            setup["models"] = {"errors": {"all": _error(exc)}, "traceback": traceback.format_exc()}
        setup["models_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        try:
            from cxr_robust.data.phantom import phantom

            data = phantom("eval", seed=SEED, num_studies=plan.studies, workers=plan.phantom_workers)
            setup["phantom"] = {"studies": data.num_studies, "images": data.num_images, "errors": {}}
        except Exception as exc:
            setup["phantom"] = {"errors": {"phantom": _error(exc)}, "traceback": traceback.format_exc()}
        setup["phantom_s"] = round(time.perf_counter() - t0, 2)

    def finish_gpu_tests() -> dict[str, Any]:
        if gpu_tests is None:
            raise RuntimeError(f"pytest could not be started: {_error(start_error)}")
        return gpu_tests.result()

    run_section(doc, "a_gpu_tests", "gpu-marked tests (pytest -m gpu)", finish_gpu_tests, sizes=sizes["a_gpu_tests"],
                on_gpu=on_gpu("a_gpu_tests"), started=None if gpu_tests is None else gpu_tests.started)
    fp32_results: dict[str, SweepResult] = {}
    run_section(doc, "b_throughput", "throughput of encode_images (images/s)", section_throughput, plan, models,
                sizes=sizes["b_throughput"], on_gpu=on_gpu("b_throughput"))
    run_section(doc, "c_table1_grid", "Table 1 grid end to end (run_sweep, fp32, fresh cache)", section_grid,
                plan, models, data, fp32_results, sizes=sizes["c_table1_grid"], on_gpu=on_gpu("c_table1_grid"))
    run_section(doc, "d_precision_agreement", "reduced precision vs fp32 (rank_agreement)",
                section_precision, plan, models, data, fp32_results,
                sizes=sizes["d_precision_agreement"], on_gpu=on_gpu("d_precision_agreement"))
    run_section(doc, "e_fp32_parity", "fp32 embeddings, device vs CPU (TF32 off)", section_parity,
                plan, models, data, sizes=sizes["e_fp32_parity"], on_gpu=on_gpu("e_fp32_parity"))

    setup_errors = {**setup.get("models", {}).get("errors", {}), **setup.get("phantom", {}).get("errors", {})}
    doc["failed"] = ([k for k, s in doc["sections"].items() if not s["ok"]] + (["setup"] if setup_errors else [])
                     + (["environment"] if "error" in doc["environment"] else []))
    doc["wall_s"] = round(time.perf_counter() - t_start, 2)
    doc["within_time_budget"] = doc["wall_s"] <= TIME_BUDGET_S if not dry else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    print(format_report(doc), flush=True)
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
