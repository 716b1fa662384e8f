"""The Ray Data engine (``--cxr-engine ray``) gives the local engine's results bit for bit, resumes from its
shards, survives a dead worker without counting a batch twice, and says how to install Ray when it is missing.

Everything runs on one local Ray started by the module's fixture (2 CPUs). Each call to the engine (a sweep's
uncached passes) starts an actor pool (a worker process, its imports, the model): about 20 s for the demo
model on 2 CPU cores (open_clip's import alone takes 9 s) and 10 s for the tiny model below, which needs only
torch. So only the bit-for-bit
test runs the demo model; the others use the tiny one, and the merge rules are tested with the worker class run
in the test process (no actor to start).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'cxr-robust[ray]'")
pytest.importorskip("ray.data", reason="needs Ray: pip install 'cxr-robust[ray]'")

import torch  # noqa: E402

from cxr_robust import ray_engine  # noqa: E402
from cxr_robust.cache import EmbeddingCache  # noqa: E402
from cxr_robust.data.images import BadImageError  # noqa: E402
from cxr_robust.data.phantom import phantom  # noqa: E402
from cxr_robust.data.retrieval_set import RetrievalSet  # noqa: E402
from cxr_robust.engine import (ImagePass, NonFiniteEmbeddingError, SweepConfig, encode_perturbed,  # noqa: E402
                               preprocess_images, run_sweep)
from cxr_robust.gate import GateOptions, GateSession  # noqa: E402
from cxr_robust.models import load_model  # noqa: E402
from cxr_robust.models.base import RetrievalModel, l2_normalise  # noqa: E402
from cxr_robust.perturbations import Condition  # noqa: E402

# Ray's own DataContext warns about its deprecated fields when a dataset is made; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

OCC = Condition("occlusion", 0.25)
NOISE = Condition("gaussian_noise", 2)
BATCH = 10  # 42 phantom images: batches of 10, 10, 10, 10 and a ragged 2


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray with 2 CPUs for the module, shut down at its end.

    The local engine runs here with 2 torch threads too: an actor uses the driver's thread count (bit-identical
    results need it) and must fit on the 2 CPUs, whatever the machine has.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    if started:
        ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> RetrievalSet:
    """24 phantom studies, 42 images."""
    return phantom("eval", num_studies=24)


class TinyModel(RetrievalModel):
    """Random projections of 16 x 16 grayscale pixels and of a report's byte counts: the workers import torch
    for it, not open_clip (a faster start). Ranks depend on both, so a wrong image row changes the grid."""

    name = "tiny"
    embed_dim = 8
    input_size = 16
    input_channels = 1

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.randn(16 * 16, 8, generator=gen)
        self.text_weight = torch.randn(256, 8, generator=gen)

    def preprocess(self, image: Any) -> np.ndarray:
        return np.asarray(image.resize((16, 16)), dtype=np.uint8)[None]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2_normalise(pixels.float().flatten(1) @ self.weight)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        counts = torch.stack([torch.bincount(torch.tensor(list(t.encode()), dtype=torch.long), minlength=256)[:256]
                              for t in texts]).float()
        return l2_normalise(counts @ self.text_weight)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name}


def build_tiny(weights: Any = None, **_: Any) -> TinyModel:
    """The gate's ad-hoc factory (``tests.test_ray_engine:build_tiny``)."""
    return TinyModel()


class DiesOnce(TinyModel):
    """Kills its worker process the first time it encodes a batch of ``rows`` rows (``marker`` records that it did).

    It never exits the process that built it (the test process), only a Ray worker.
    """

    def __init__(self, marker: Path, rows: int) -> None:
        super().__init__()
        self.marker, self.rows, self.home = str(marker), rows, os.getpid()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[0] == self.rows and os.getpid() != self.home and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # a crash, not an exception: Ray must restart the actor and retry the batch
        return super().encode_images(pixels)


def _local(model: RetrievalModel, data: RetrievalSet, condition: Condition, config: SweepConfig) -> np.ndarray:
    """What the local engine computes for every image of ``data``."""
    return encode_perturbed(model, preprocess_images(data, model), data.image_ids, condition, config, "cpu")


def _job(model: RetrievalModel, data: RetrievalSet, condition: Condition, digest: str | None,
         batch_size: int = BATCH) -> ImagePass:
    config = SweepConfig(conditions=(condition,), ks=(1,), batch_size=batch_size, engine="ray")
    return ImagePass(model, data, np.arange(data.num_images), list(data.image_ids), condition, config, "cpu", digest)


def _record_dispatch(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The batch indices each call sends to the workers."""
    sent: list[list[int]] = []
    real = ray_engine._dispatch

    def recording(ray_: Any, jobs: list[ImagePass], descriptors: list[ray_engine.Descriptor], *args: Any) -> Any:
        sent.append([d[0] for d in descriptors])
        return real(ray_, jobs, descriptors, *args)

    monkeypatch.setattr(ray_engine, "_dispatch", recording)
    return sent


def _in_process(copies: dict[int, Any], sent: list[list[int]] | None = None) -> Any:
    """A ``_dispatch`` that runs the worker class in the test process (no actor to start), delivers batch ``b``
    a second time through ``copies[b]`` and records the batches it is given in ``sent``."""
    def dispatch(ray_: Any, jobs: list[ImagePass], descriptors: list[ray_engine.Descriptor],
                 refs: dict[str, Any], how: ray_engine.Plan) -> Iterator[dict[str, np.ndarray]]:
        if sent is not None:
            sent.append([d[0] for d in descriptors])
        first = jobs[0]
        worker = ray_engine.BatchEncoder(refs, np.asarray(first.queries), list(first.query_ids),
                                         [j.condition for j in jobs], first.config, first.device, how.threads)
        for b, s, e, js in descriptors:
            block = worker({"batch": np.array([b]), "start": np.array([s]), "stop": np.array([e]),
                            "jobs": np.array([",".join(map(str, js))])})
            yield block
            if b in copies:  # what a retried task that had already delivered would send
                yield copies[b](block)
    return dispatch


# ----- 1. bit for bit ----------------------------------------------------------------------------------------
def test_a_ray_sweep_equals_the_local_engine_bit_for_bit(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model("phantom-clip")
    sent = _record_dispatch(monkeypatch)
    results, caches = {}, {}
    for engine in ("local", "ray"):
        caches[engine] = tmp_path / engine
        config = SweepConfig(conditions=(OCC, NOISE), ks=(1, 5, 10), batch_size=BATCH, engine=engine)
        results[engine] = run_sweep(model, data, config, EmbeddingCache(caches[engine]))
    local, remote = results["local"], results["ray"]
    assert remote.image_ids == local.image_ids and remote.meta["engine"] == "ray"
    assert remote.meta["image_encodings"] == 2 * data.num_images  # each query once per condition, no more
    for condition in (OCC, NOISE):
        assert np.array_equal(remote.counts[condition].above, local.counts[condition].above), condition
        assert np.array_equal(remote.counts[condition].ties, local.counts[condition].ties), condition
    # The image entries have the same keys (engine is not part of them) and the same bytes.
    names = sorted(p.name for p in (caches["local"] / "image").glob("*.npz"))
    assert len(names) == 2 and names == sorted(p.name for p in (caches["ray"] / "image").glob("*.npz"))
    for name in names:
        with np.load(caches["local"] / "image" / name) as a, np.load(caches["ray"] / "image" / name) as b:
            assert a["array"].dtype == b["array"].dtype == np.float32
            assert np.array_equal(a["array"], b["array"]), name
    assert not (caches["ray"] / "shards").exists()  # a completed pass leaves no shards behind
    # One actor pool for the sweep's uncached conditions; each task decodes its batch once for both.
    assert sent == [list(range(5))]
    again = run_sweep(model, data, SweepConfig(conditions=(OCC, NOISE), ks=(1, 5, 10), batch_size=BATCH,
                                               engine="ray"), EmbeddingCache(caches["ray"]))
    assert sent == [list(range(5))] and again.meta["image_encodings"] == 0  # cached: nothing dispatched


# ----- 2. resume ------------------------------------------------------------------------------------------------
def test_an_interrupted_pass_resumes_from_its_shards(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model, cache = TinyModel(), EmbeddingCache(tmp_path / "cache")
    job = _job(model, data, OCC, digest="d" * 64)
    folder = ray_engine.shard_dir(cache, job.digest)
    sent = _record_dispatch(monkeypatch)
    real_write, written = ray_engine._write_shard, []

    def write_then_die(folder_: Path, start: int, stop: int, *args: Any) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt("the run is stopped here")
        real_write(folder_, start, stop, *args)
        written.append(start // BATCH)

    monkeypatch.setattr(ray_engine, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        ray_engine.embed_pass(job, cache, {})
    assert len(list(folder.glob("rows-*.npz"))) == 2 and sent == [[0, 1, 2, 3, 4]]

    monkeypatch.setattr(ray_engine, "_write_shard", real_write)
    out = ray_engine.embed_pass(job, cache, {})
    assert sent[1] == sorted(set(range(5)) - set(written))  # only the batches without a shard are dispatched
    assert np.array_equal(out, _local(model, data, OCC, job.config))
    assert not folder.exists()


def test_a_damaged_shard_is_recomputed_not_used(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards are checked (rows, ids, shape, dtype, checksum) before use; this runs in the test process."""
    model, cache = TinyModel(), EmbeddingCache(tmp_path / "cache")
    job = _job(model, data, OCC, digest="e" * 64)
    folder = ray_engine.shard_dir(cache, job.digest)
    expected = _local(model, data, OCC, job.config)
    ray_engine._write_shard(folder, 0, 10, expected[:10], job.query_ids[:10], 3)  # valid
    ray_engine._write_shard(folder, 10, 20, expected[10:20], job.query_ids[10:20], 0)
    truncated = ray_engine._shard_path(folder, 10, 20)
    truncated.write_bytes(truncated.read_bytes()[:-7])
    ray_engine._write_shard(folder, 20, 30, expected[20:30], job.query_ids[:10], 0)  # rows of other images
    ray_engine._write_shard(folder, 30, 40, expected[30:40].astype(np.float64), job.query_ids[30:40], 0)
    got = {s: ray_engine._read_shard(folder, s, s + 10, job.query_ids[s:s + 10]) for s in (0, 10, 20, 30)}
    assert got[0] is not None and np.array_equal(got[0][0], expected[:10]) and got[0][1] == 3
    assert got[10] is None and got[20] is None and got[30] is None
    assert sorted(p.name for p in folder.iterdir()) == [ray_engine._shard_path(folder, 0, 10).name]  # bad ones go

    contract: dict[str, int] = {}
    sent: list[list[int]] = []
    monkeypatch.setattr(ray_engine, "_dispatch", _in_process({}, sent))
    ray_engine._write_shard(folder, 40, 42, expected[40:42], job.query_ids[40:42], 0)
    out = ray_engine.embed_pass(job, cache, contract)
    assert np.array_equal(out, expected) and sent == [[1, 2, 3]]  # batches 0 and 4 came from their shards
    assert contract == {"image": 3}  # a resumed shard's non-unit rows still count
    assert not folder.exists()


# ----- 3. retries -----------------------------------------------------------------------------------------------
def test_a_worker_that_dies_is_restarted_and_its_batch_counted_once(local_ray: Any, data: RetrievalSet,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "died"
    model = DiesOnce(marker, rows=data.num_images % BATCH)  # the ragged last batch
    sent = _record_dispatch(monkeypatch)
    contract: dict[str, int] = {}
    out = ray_engine.embed_pass(_job(model, data, OCC, digest="f" * 64), EmbeddingCache(tmp_path / "cache"),
                                contract)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker really died
    assert sent == [[0, 1, 2, 3, 4]]  # retried by Ray, not dispatched again by the engine
    assert out.shape == (data.num_images, 8) and contract == {}
    assert np.array_equal(out, _local(TinyModel(), data, OCC, _job(model, data, OCC, None).config))


def test_a_batch_delivered_twice_is_kept_once(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyModel()
    job = _job(model, data, OCC, digest=None)
    monkeypatch.setattr(ray_engine, "_dispatch", _in_process({1: dict, 4: dict}))
    out = ray_engine.embed_pass(job, EmbeddingCache(tmp_path / "cache"), {})
    assert np.array_equal(out, _local(model, data, OCC, job.config))

    def changed(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**block, "emb": block["emb"] + np.float32(1e-3)}

    monkeypatch.setattr(ray_engine, "_dispatch", _in_process({2: changed}))
    with pytest.raises(ray_engine.RayEngineError, match="batch 2 .*computed twice with different results"):
        ray_engine.embed_pass(job, EmbeddingCache(tmp_path / "cache"), {})


def test_rows_of_the_wrong_image_are_refused(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def swapped(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**block, "image_id": block["image_id"][::-1].copy()}

    job = _job(TinyModel(), data, OCC, digest=None)
    monkeypatch.setattr(ray_engine, "_dispatch", _in_process({0: swapped}))
    with pytest.raises(ray_engine.RayEngineError, match="the merge would be wrong"):
        ray_engine.embed_pass(job, EmbeddingCache(tmp_path / "cache"), {})


# ----- 4. the gate ----------------------------------------------------------------------------------------------
def test_the_gate_with_the_ray_engine_gives_the_local_grid(local_ray: Any, tmp_path: Path) -> None:
    model = "tests.test_ray_engine:build_tiny"
    runs = {}
    for engine in ("local", "ray"):
        options = GateOptions(models=(model,), phantom_studies=24, ratios=(0.25,), ks=(1, 5, 10), batch_size=16,
                              engine=engine, cache_dir=str(tmp_path / engine), report_dir=str(tmp_path / engine),
                              summaries=False, allow_missing_baseline=True)
        run = GateSession(options, rootdir=tmp_path).run(model)
        assert run.error is None, run.error
        assert run.result is not None and run.result.meta["engine"] == engine
        assert run.result.meta["image_encodings"] == run.result.n_queries == 42  # computed, not read from a cache
        runs[engine] = run.result
    assert runs["ray"].grid() == runs["local"].grid() and set(runs["ray"].grid()) == {OCC}
    assert np.array_equal(runs["ray"].counts[OCC].above, runs["local"].counts[OCC].above)
    # Not a degenerate grid that any embedding would reproduce: the queries' ranks differ.
    assert len(np.unique(runs["ray"].counts[OCC].above)) > 5 and not runs["ray"].counts[OCC].ties.any()


# ----- 5. errors ------------------------------------------------------------------------------------------------
def test_without_ray_the_error_says_how_to_install_it(data: RetrievalSet, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ray_engine.RayUnavailableError, match=r"pip install 'cxr-robust\[ray\]'"):
        ray_engine.embed_pass(_job(TinyModel(), data, OCC, None), EmbeddingCache(tmp_path), {})
    config = SweepConfig(conditions=(OCC,), ks=(1,), engine="ray")
    with pytest.raises(ImportError, match=r"pip install 'cxr-robust\[ray\]'"):  # before any work
        run_sweep(TinyModel(), data, config, EmbeddingCache(tmp_path))


class NaNModel(TinyModel):
    name = "tiny-nan"

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = super().encode_images(pixels)
        out[-1, 0] = float("nan")
        return out


def test_a_model_error_on_a_worker_reaches_the_caller_as_itself(local_ray: Any, data: RetrievalSet, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Data loses the cause of a worker's exception on the way (only its traceback text survives), so the
    worker carries the error in its message and the driver raises the local engine's exception again."""
    monkeypatch.setattr(ray_engine, "_dispatch", _in_process({}))
    first = data.image_ids[BATCH - 1]  # the last row of the first batch
    with pytest.raises(NonFiniteEmbeddingError, match=re.escape(f"model 'tiny-nan' produced NaN/Inf image (25% "
                                                                f"occlusion) embeddings for 1 item(s), first: {first};")):
        ray_engine.embed_pass(_job(NaNModel(), data, OCC, None), EmbeddingCache(tmp_path), {})
    bad = BadImageError("image x-1 (/data/x-1.jpg) is truncated", reason="truncated", image_id="x-1",
                        path="/data/x-1.jpg")
    wrapped = RuntimeError(f"ray::MapWorker.submit()\n  File ...\n{ray_engine._carry(bad)}\n\nUDF failed")
    back = ray_engine._unwrap(wrapped)
    assert isinstance(back, BadImageError) and str(back) == str(bad)
    assert (back.reason, back.image_id, back.path) == ("truncated", "x-1", "/data/x-1.jpg")
    assert ray_engine._unwrap(RuntimeError("an actor died")) is None


class Unpicklable(TinyModel):
    name = "tiny-with-a-lock"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def test_a_model_that_cannot_be_pickled_is_named(local_ray: Any, data: RetrievalSet, tmp_path: Path) -> None:
    with pytest.raises(ray_engine.RayEngineError, match="model 'tiny-with-a-lock' cannot be sent to Ray workers.*"
                                                        "--cxr-engine local"):
        ray_engine.embed_pass(_job(Unpicklable(), data, OCC, None), EmbeddingCache(tmp_path), {})
