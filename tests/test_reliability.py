"""Reliability: cache integrity and keys, parallel workers, interrupted runs, determinism.

Processes are real (``multiprocessing`` spawn, ``subprocess`` + SIGKILL), the model is the demo architecture
with seeded random weights (``tests/privacy_model.py``) and the data the phantom generator, so the whole
module runs on a CPU in well under a minute.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.data.retrieval_set import RetrievalSet
from cxr_robust.engine import SweepConfig, SweepResult, run_sweep
from cxr_robust.perturbations import Condition
from cxr_robust.results import ModelOutcome, build_document, load_ranks, load_results, write_results
from tests.privacy_model import build

ROOT = Path(__file__).resolve().parent.parent
CFG = SweepConfig(ratios=(0.0, 0.25), ks=(1, 5), device="cpu", progress=False)


@pytest.fixture(scope="module")
def model() -> Any:
    return build(seed=21)


@pytest.fixture(scope="module")
def data() -> RetrievalSet:
    return phantom("tiny").subset(range(16), name="rel")


def same_counts(a: SweepResult, b: SweepResult) -> bool:
    """Bit-identical rank counts at every ratio (and the same queries)."""
    return a.image_ids == b.image_ids and a.counts.keys() == b.counts.keys() and all(
        np.array_equal(a.counts[r].above, b.counts[r].above) and np.array_equal(a.counts[r].ties, b.counts[r].ties)
        and a.counts[r].n_candidates == b.counts[r].n_candidates for r in a.counts)


def child_env() -> dict[str, str]:
    """Environment of a child Python: the repository importable, one thread (a 2-core CI box)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------
# Cache keys: everything that changes an embedding changes the key, nothing else does


def _stats(model: Any, data: RetrievalSet, root: Path, config: SweepConfig = CFG) -> tuple[SweepResult, dict]:
    cache = EmbeddingCache(root)
    res = run_sweep(model, data, config, cache)
    return res, cache.stats.by_kind


def test_rerun_is_all_hits_and_identical(model: Any, data: RetrievalSet, tmp_path: Path) -> None:
    first, stats = _stats(model, data, tmp_path)
    assert stats == {"text": {"misses": 1}, "image": {"misses": 2}}
    again, stats = _stats(model, data, tmp_path)
    assert stats == {"text": {"hits": 1}, "image": {"hits": 2}} and same_counts(first, again)
    assert again.meta["text_encodings"] == again.meta["image_encodings"] == 0


def _changed_images(data: RetrievalSet) -> RetrievalSet:
    arrays = list(data.image_arrays)
    arrays[0] = 255 - np.asarray(arrays[0])
    return RetrievalSet(name=data.name, study_ids=data.study_ids, findings=data.findings,
                        impressions=data.impressions, image_ids=data.image_ids, image_study=data.image_study,
                        views=data.views, image_arrays=arrays)


def _changed_report(data: RetrievalSet) -> RetrievalSet:
    out = data.subset(range(data.num_studies), name=data.name)
    out.findings[3] = out.findings[3] + " Small left effusion."
    return out


@pytest.mark.parametrize(("change", "text_miss", "image_miss"), [
    ("seed", False, True), ("perturbation", False, True), ("ratio", False, True), ("draft", False, True),
    ("image_pixels", False, True), ("report_text", True, False), ("text_policy", True, False),
    ("model_weights", True, True), ("batch_size", False, False), ("progress", False, False),
])
def test_cache_key_covers_what_changes_an_embedding(change: str, text_miss: bool, image_miss: bool,
                                                    model: Any, data: RetrievalSet, tmp_path: Path) -> None:
    _stats(model, data, tmp_path)
    config, m, d = CFG, model, data
    if change in ("seed", "batch_size", "progress"):
        config = SweepConfig(**{**CFG.__dict__, change: {"seed": 1, "batch_size": 3, "progress": False}[change]})
    elif change == "ratio":
        config = SweepConfig(**{**CFG.__dict__, "conditions": (Condition("occlusion", 0.04),)})
    elif change == "perturbation":  # another perturbation at a level: never the occlusion entry
        config = SweepConfig(**{**CFG.__dict__, "conditions": (Condition("gaussian_noise", 1),)})
    elif change == "draft":
        config = SweepConfig(**{**CFG.__dict__, "draft_decode": not CFG.draft_decode})
    elif change == "text_policy":
        config = SweepConfig(**{**CFG.__dict__, "text_policy": "impression"})
    elif change == "image_pixels":
        d = _changed_images(data)
    elif change == "report_text":
        d = _changed_report(data)
    elif change == "model_weights":
        m = build(seed=22)
    _, stats = _stats(m, d, tmp_path, config)
    assert ("misses" in stats["text"]) is text_miss
    assert ("misses" in stats["image"]) is image_miss


def test_in_memory_models_with_different_weights_get_different_keys() -> None:
    import torch

    from cxr_robust.models.demo import build_phantom_clip, wrap_phantom_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a = wrap_phantom_clip(build_phantom_clip())
        torch.manual_seed(2)
        b = wrap_phantom_clip(build_phantom_clip())
    assert a.fingerprint() != b.fingerprint()


def test_entry_header_holds_the_full_key_and_checksum(model: Any, data: RetrievalSet, tmp_path: Path) -> None:
    import hashlib

    _stats(model, data, tmp_path)
    for entry in tmp_path.rglob("*.npz"):
        assert len(entry.stem) == 40 and all(c in "0123456789abcdef" for c in entry.stem)  # names are hashes
        with np.load(entry, allow_pickle=False) as npz:
            header, array = json.loads(str(npz["header"])), npz["array"]
        assert header["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
        assert header["key"]["kind"] == entry.parent.name and "model" in header["key"]


# --------------------------------------------------------------------------------------------------
# Corrupted entries are detected and rebuilt


def _rewrite_array(entry: Path) -> None:
    """A well-formed entry whose array no longer matches its checksum (bit rot behind a valid zip)."""
    with np.load(entry, allow_pickle=False) as npz:
        header, array = str(npz["header"]), npz["array"].copy()
    array.flat[0] += 1.0
    with open(entry, "wb") as fh:
        np.savez(fh, array=array, header=np.array(header))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped_bytes": lambda p: p.write_bytes(bytes(b ^ 0xFF if 200 <= i < 216 else b
                                                   for i, b in enumerate(p.read_bytes()))),
    "flipped_tail": lambda p: p.write_bytes(p.read_bytes()[:-300] + bytes(b ^ 0x55 for b in p.read_bytes()[-300:])),
    "empty": lambda p: p.write_bytes(b""),
    "checksum_mismatch": _rewrite_array,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_corrupt_entries_are_rebuilt_and_results_unchanged(damage: str, model: Any, data: RetrievalSet,
                                                           tmp_path: Path) -> None:
    clean, _ = _stats(model, data, tmp_path)
    entries = sorted(tmp_path.rglob("*.npz"))
    assert len(entries) == 3
    for entry in entries:
        DAMAGE[damage](entry)
    cache = EmbeddingCache(tmp_path)
    again = run_sweep(model, data, CFG, cache)
    assert same_counts(clean, again)
    assert cache.stats.rebuilt_corrupt == 3 and cache.stats.hits == 0
    assert cache.stats.by_kind == {"text": {"rebuilt_corrupt": 1, "misses": 1},
                                   "image": {"rebuilt_corrupt": 2, "misses": 2}}
    third = EmbeddingCache(tmp_path)  # the rebuilt entries are sound
    run_sweep(model, data, CFG, third)
    assert third.stats.hits == 3 and third.stats.rebuilt_corrupt == 0


def test_entry_under_another_key_is_not_used(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute("text", {"a": 1}, lambda: np.zeros(3))
    os.replace(cache.path_for("text", {"a": 1}), cache.path_for("text", {"a": 2}))  # a "hash collision"
    array, hit = cache.get_or_compute("text", {"a": 2}, lambda: np.ones(3))
    assert not hit and array.tolist() == [1, 1, 1] and cache.stats.rebuilt_corrupt == 1


# --------------------------------------------------------------------------------------------------
# Parallel workers sharing one cache directory


def _worker(root: str, counter: str, go: Any, out: Any, name: str) -> None:
    """One "pytest-xdist worker": the shared key (slow compute, counted in a file) and a key of its own."""
    cache = EmbeddingCache(root)

    def compute() -> np.ndarray:
        with open(counter, "a") as fh:
            fh.write(f"{name}\n")
        time.sleep(1.0)  # long enough that every worker arrives while the first computes
        return np.arange(1000, dtype=np.float32)

    go.wait(timeout=120)  # all workers call get_or_compute at the same moment
    shared, hit = cache.get_or_compute("text", {"shared": True}, compute)
    own, _ = cache.get_or_compute("image", {"worker": name}, lambda: np.full(10, len(name), np.float32))
    out.put((name, hit, float(shared.sum()), own.tolist()))


def test_workers_sharing_a_cache_compute_once_and_never_corrupt(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Barrier(3), ctx.Queue()
    counter = tmp_path / "calls.txt"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(counter), go, out, f"gw{i}"))
             for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1  # exactly one computation of the shared key
    assert sorted(hit for _, hit, _, _ in results) == [False, True, True]
    assert {s for _, _, s, _ in results} == {float(np.arange(1000).sum())}
    assert all(own == [3.0] * 10 for _, _, _, own in results)
    cache = EmbeddingCache(tmp_path / "cache")  # every entry on disk is sound
    assert cache.get_or_compute("text", {"shared": True}, lambda: pytest.fail("recomputed"))[1]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


# --------------------------------------------------------------------------------------------------
# Interrupted runs

SWEEP_SCRIPT = """
import sys, time
from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, run_sweep
from cxr_robust.results import save_ranks
from tests.privacy_model import build

cache_dir, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = phantom("tiny").subset(range(16), name="rel")
config = SweepConfig(ratios=(0.0, 0.01, 0.09, 0.25, 0.49), ks=(1, 5), device="cpu", progress=False)
cache = EmbeddingCache(cache_dir)
res = run_sweep(build(seed=23), data, config, cache, on_condition=lambda condition, counts: time.sleep(pause))
save_ranks(out, res.counts, res.image_ids, {"hits": cache.stats.hits, "misses": cache.stats.misses})
"""


def _run_script(tmp: Path, cache_dir: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    script = tmp / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(cache_dir), str(out), str(pause)], cwd=tmp,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sweep_killed_partway_resumes_to_the_clean_result(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    proc = _run_script(tmp_path, cache_dir, tmp_path / "never.npz", pause=30.0)
    deadline = time.monotonic() + 180
    while not list((cache_dir / "image").glob("*.npz")):  # the first ratio's entry is complete
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the sweep never wrote its first image entry"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "never.npz").exists()
    assert len(list((cache_dir / "image").glob("*.npz"))) == 1  # partway: 1 of 5 ratios

    resumed = _run_script(tmp_path, cache_dir, tmp_path / "resumed.npz")
    clean = _run_script(tmp_path, tmp_path / "fresh", tmp_path / "clean.npz")
    for p in (resumed, clean):
        assert p.wait(timeout=300) == 0, p.stdout.read().decode()
    r_counts, r_ids, r_meta = load_ranks(tmp_path / "resumed.npz")
    c_counts, c_ids, c_meta = load_ranks(tmp_path / "clean.npz")
    assert r_meta == {"hits": 2, "misses": 4} and c_meta == {"hits": 0, "misses": 6}  # text + 1 ratio reused
    assert r_ids == c_ids and r_counts.keys() == c_counts.keys()
    for ratio in c_counts:
        assert np.array_equal(r_counts[ratio].above, c_counts[ratio].above)
        assert np.array_equal(r_counts[ratio].ties, c_counts[ratio].ties)
    assert not list(tmp_path.rglob("*.tmp"))


KILL_IN_WRITE = """
import os, signal, sys
import numpy as np
from cxr_robust.cache import EmbeddingCache
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die after the data, before the rename
EmbeddingCache(sys.argv[1]).get_or_compute("text", {"a": 1}, lambda: np.arange(5.0))
"""


def test_entry_killed_mid_write_is_neither_trusted_nor_left(tmp_path: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_IN_WRITE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], env=child_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    stale = list((tmp_path / "cache").rglob("*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0 and not list((tmp_path / "cache").rglob("*.npz"))
    cache = EmbeddingCache(tmp_path / "cache")
    array, hit = cache.get_or_compute("text", {"a": 1}, lambda: np.arange(5.0) * 2)
    assert not hit and array.tolist() == [0, 2, 4, 6, 8]  # recomputed: the complete-looking tmp was not used
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # and removed under the entry's lock


KILL_IN_RESULTS = """
import os, signal, sys
from cxr_robust.results import ModelOutcome, build_document, write_results
write_results(sys.argv[1], build_document([ModelOutcome("m", "skipped", reason="v1")], {"run": 1}))
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
write_results(sys.argv[1], build_document([ModelOutcome("m", "skipped", reason="v2")], {"run": 2}))
"""


def test_results_killed_mid_write_keep_the_previous_complete_file(tmp_path: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(KILL_IN_RESULTS)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(script), str(out)], env=child_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    stale = list(out.glob(".results.json.*.tmp"))
    assert len(stale) == 1  # the killed write's temporary file; results.json itself is the old version
    doc = load_results(out)
    assert doc["run"] == 1 and doc["models"][0]["reason"] == "v1"
    stale[0].write_text(json.dumps({**doc, "run": 99}))  # even a valid-looking stale file is never read
    assert load_results(out)["run"] == 1
    write_results(out, build_document([ModelOutcome("m", "skipped", reason="v3")], {"run": 3}))
    assert load_results(out)["run"] == 3


def test_stale_tmp_is_ignored_when_no_results_were_ever_completed(tmp_path: Path) -> None:
    (tmp_path / ".results.json.abc123.tmp").write_text('{"schema": "cxr-robust/results/1", "models": []}')
    with pytest.raises(FileNotFoundError, match="no results at"):
        load_results(tmp_path)


# --------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_bit_identical_across_runs_batch_sizes_and_threads(model: Any, data: RetrievalSet,
                                                                      tmp_path: Path) -> None:
    import torch

    def sweep(batch_size: int, threads: int, run: str) -> SweepResult:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:  # cache off and a fresh directory: every embedding is computed
            config = SweepConfig(**{**CFG.__dict__, "batch_size": batch_size, "cache_images": False})
            return run_sweep(model, data, config, EmbeddingCache(tmp_path / run))
        finally:
            torch.set_num_threads(before)

    ref = sweep(256, 1, "ref")
    for batch_size, threads in ((256, 1), (1, 1), (7, 1), (256, 2)):
        other = sweep(batch_size, threads, f"b{batch_size}t{threads}")
        assert same_counts(ref, other), f"batch {batch_size}, {threads} threads"


def test_ratio_zero_does_not_depend_on_the_occlusion_seed(model: Any, data: RetrievalSet, tmp_path: Path) -> None:
    a = run_sweep(model, data, CFG, EmbeddingCache(tmp_path / "a"))
    b = run_sweep(model, data, SweepConfig(**{**CFG.__dict__, "seed": 7}), EmbeddingCache(tmp_path / "b"))
    clean = Condition("occlusion", 0.0)
    assert np.array_equal(a.counts[clean].above, b.counts[clean].above)  # ratio 0 is the identity


def test_a_cuda_index_beyond_the_machines_gpus_is_refused_naming_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cxr-device cuda:5`` on a 2-GPU machine fails at once, not later as a bare CUDA error (simulated GPUs)."""
    import torch

    from cxr_robust.engine import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == "cuda:1" and pick_device("cuda") == "cuda"
    with pytest.raises(RuntimeError, match=r"'cuda:5' requested but this machine has 2 CUDA device\(s\).*--cxr-device"):
        pick_device("cuda:5")


def test_shared_pixels_serve_a_second_model_of_one_geometry_and_catch_a_lying_key(
        caplog: pytest.LogCaptureFixture) -> None:
    """Decoded pixels are reused across models with one preprocessing key, and a reuse is spot-checked: a model
    whose preprocessing differs under the same key gets its own pixels, never another model's (SharedPixels)."""
    import numpy as np

    from cxr_robust.data.phantom import phantom
    from cxr_robust.engine import SharedPixels, preprocess_images
    from cxr_robust.models import load_model

    data, store, config = phantom("eval", num_studies=6), SharedPixels(), SweepConfig(device="cpu")
    first = load_model("phantom-clip")
    pixels = store.get(data, first, config, None)
    assert store.get(data, load_model("phantom-clip"), config, None) is pixels and store.hits == 1

    liar = load_model("phantom-clip")  # same class and key, other pixels: inverted films
    liar.preprocess = lambda image, own=liar.preprocess: 255 - own(image)
    with caplog.at_level("WARNING"):
        got = store.get(data, liar, config, None)
    assert store.hits == 1 and "differ from its own preprocessing" in caplog.text
    assert np.array_equal(got.numpy(), preprocess_images(data, liar).numpy())
