"""The ``ray`` engine: a sweep's image passes on Ray Data workers (``--cxr-engine ray``).

How it works. :func:`~cxr_robust.engine.run_sweep` keeps everything but the image passes on the driver (report
texts, the cache, scoring). Before scoring, it hands :func:`embed_passes` one
:class:`~cxr_robust.engine.ImagePass` per condition whose embeddings are not cached yet. The driver splits the
M query rows into the local engine's batches, rows ``[s, s + batch_size)`` in order, and makes a Ray Data
dataset with one descriptor ``(batch, start, stop, passes)`` per batch. ``map_batches`` runs a stateful
callable class on one fixed-size actor pool for the whole sweep (``ActorPoolStrategy(size=workers)``,
``num_gpus=1`` per actor on CUDA). The model and the data set are put in the object store once (``ray.put``).
Each actor builds the model once. For every descriptor it decodes and preprocesses the batch's images once,
then perturbs and encodes them at each of the descriptor's conditions through the local engine's own
:func:`~cxr_robust.engine.encode_perturbed` with ``batch_size = stop - start``, so the finiteness check and
the unit-norm contract are the same. Rows stream back to the driver one image per row (pass, batch index,
row, image id, embedding) and are merged by pass, batch index and row.

What is exact. Every Ray task encodes exactly the rows of one local batch, so every tensor an encoder sees is
the one the local engine builds. The perturbation parameters depend only on (seed, image id, severity), so
the embeddings are bit-identical to the local engine when the workers run the same builds with the same
number of intra-op threads. That is why CPU actors reserve, and use, the driver's
``torch.get_num_threads()`` (CPU results change in the last bits with the thread count: measured 7e-8).
GPU results are as reproducible as the GPU kernels themselves. The merge checks that every query row arrives,
with its own image id, and that none is missing. The device kind the workers use is the one in the cache key:
:func:`resolve_devices` decides it before the key is made.

Resume. With a cache entry to fill (``digest`` given), the driver writes each finished batch atomically to
``<cache>/shards/<digest>/rows-<start>-<stop>.npz``: embeddings, image-id hash, checksum and the count of
non-unit rows. A pass that starts again loads the valid shards (right rows, ids, shape, dtype and
checksum) and dispatches only the other batches. Shards with other rows (another batch size) are not used.
When the pass completes, the shard folder is removed; the caller stores the full result in the cache.
``--cxr-refresh-cache`` discards the shards too.

Retries. Ray restarts a dead actor and retries its task (Ray Data's actor-pool defaults,
``max_restarts=-1``, ``max_task_retries=-1``). A batch that arrives twice is kept once. The second copy must
be bit-identical, else the pass fails naming the batch. Errors raised by the model or the data
(:class:`~cxr_robust.data.images.BadImageError`, :class:`~cxr_robust.engine.NonFiniteEmbeddingError`) are
not retried. They reach the caller unwrapped.

Limits.

* Workers read the data set as the driver sees it: in-memory images travel in the object store, while
  on-disk images must be on a path every node can read.
* ``on_bad_image=skip`` still decodes every image once on the driver, to decide which images are queries.
  That status is cached, so a rerun does not decode again.
* A model that cannot be pickled cannot run here. :func:`embed_pass` names it and points to the local
  engine.
* Each sweep starts one actor pool: worker processes, their imports (torch, and open_clip for the
  CLIP-family models) and the model. On 2 CPU cores that costs about 15 s for the demo model. Small sets
  are much faster on the local engine (``benchmarks/ray_scaling.py`` measures it).
* The driver merges every batch and writes its shard (with an fsync) one after another. At a few ms per
  batch, that limits a pass on a large cluster (the benchmark shows where).

Workers per sweep: one actor per GPU of the cluster. On CPU, one actor per ``threads`` CPUs, where
``threads`` is the driver's ``torch.get_num_threads()`` capped at the largest node. The environment variables
``CXR_ROBUST_RAY_WORKERS`` and ``CXR_ROBUST_RAY_THREADS`` (or :func:`embed_pass`'s arguments) override them.
A thread count that differs from the local run's gives embeddings that are equal only to float tolerance.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from cxr_robust.atomic import atomic_open

if TYPE_CHECKING:
    from cxr_robust.cache import EmbeddingCache
    from cxr_robust.engine import ImagePass, SweepConfig

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cxr-robust[ray]'"
WORKERS_ENV = "CXR_ROBUST_RAY_WORKERS"
THREADS_ENV = "CXR_ROBUST_RAY_THREADS"
SHARD_FORMAT = 1


class RayUnavailableError(ImportError):
    """Ray (with Ray Data) is not installed; the message says how to install it."""


class RayEngineError(RuntimeError):
    """The ray engine cannot run this pass, or its results do not add up; the message says what and why."""


def _import_ray() -> Any:
    """The ``ray`` module with Ray Data imported, or :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray Core)
    except ImportError as exc:
        raise RayUnavailableError(f"--cxr-engine ray needs Ray Data, which is not installed: {INSTALL_HINT} "
                                  "(or run with the local engine, --cxr-engine local)") from exc
    return ray


def init_ray(address: str | None = None) -> Any:
    """The ``ray`` module, connected: an initialised Ray is reused. Otherwise Ray joins ``address`` if given,
    else ``$RAY_ADDRESS`` or the latest local cluster (Ray's own rules), else it starts a local Ray."""
    ray = _import_ray()
    if not ray.is_initialized():
        log.info("cxr-robust: starting Ray (%s)", address or os.environ.get("RAY_ADDRESS") or "local or latest")
        # include_dashboard applies only when Ray starts a cluster here. When Ray joins one, it ignores it.
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def _cluster_gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def resolve_devices(config: "SweepConfig") -> tuple[str, str]:
    """``(driver device, worker device)`` for a sweep with ``engine="ray"``.

    The driver encodes the texts and scores. The workers encode the images, and the worker device's kind goes
    into the image cache key. An explicit ``config.device`` fixes the workers' kind (its index means nothing
    on a worker, because Ray gives each GPU actor its own ``cuda``). With ``None``, the workers use CUDA when
    the cluster has GPUs, and the driver uses whatever it has. Only this case starts Ray here.
    """
    import torch

    from cxr_robust.engine import pick_device

    if config.device:
        kind = config.device.split(":")[0]
        local_ok = kind != "cuda" or torch.cuda.is_available()
        return pick_device(config.device if local_ok else None), kind
    ray = init_ray(config.ray_address)
    return pick_device(None), "cuda" if _cluster_gpus(ray) else "cpu"


# ----- shards ------------------------------------------------------------------------------------------------
def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


def shard_dir(cache: "EmbeddingCache", digest: str) -> Path:
    """Where the finished batches of the pass that fills cache entry ``digest`` are kept until it completes."""
    return Path(cache.root) / "shards" / digest


def _shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"rows-{start:09d}-{stop:09d}.npz"


def _write_shard(folder: Path, start: int, stop: int, emb: np.ndarray, ids: Sequence[str], not_unit: int) -> None:
    """Store one finished batch atomically: a run killed here leaves the old state or the whole shard."""
    header = {"format": SHARD_FORMAT, "start": start, "stop": stop, "ids_sha256": _ids_hash(ids),
              "sha256": hashlib.sha256(emb.tobytes()).hexdigest(), "shape": list(emb.shape),
              "dtype": str(emb.dtype), "not_unit": int(not_unit)}
    with atomic_open(_shard_path(folder, start, stop), "wb") as fh:
        np.savez(fh, emb=emb, header=np.array(json.dumps(header)))


def _read_shard(folder: Path, start: int, stop: int, ids: Sequence[str]) -> tuple[np.ndarray, int] | None:
    """``(embeddings, non-unit rows)`` of a valid shard of rows ``[start, stop)``, else None (a bad one is removed)."""
    path = _shard_path(folder, start, stop)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            emb = npz["emb"]
        ok = (header.get("format") == SHARD_FORMAT and header.get("start") == start and header.get("stop") == stop
              and header.get("ids_sha256") == _ids_hash(ids) and emb.dtype == np.float32 and emb.ndim == 2
              and emb.shape[0] == stop - start and list(emb.shape) == header.get("shape")
              and header.get("sha256") == hashlib.sha256(emb.tobytes()).hexdigest())
    except Exception:  # noqa: BLE001 - any damage (truncated zip, bad header) means "compute it again"
        ok = False
    if not ok:
        log.warning("cxr-robust: ray engine: ignoring the damaged or foreign shard %s (recomputing its batch)", path)
        path.unlink(missing_ok=True)
        return None
    return emb, int(header.get("not_unit", 0))


# ----- the workers -----------------------------------------------------------------------------------------
class BatchEncoder:
    """The Ray Data actor: loads the model once; per descriptor it decodes one local batch once, then perturbs
    and encodes it at each of the descriptor's conditions.

    ``refs`` holds the object-store references of the model and the data set. They are nested in a dict so
    that nobody resolves them before :meth:`__init__` does.
    """

    def __init__(self, refs: dict[str, Any], queries: np.ndarray, query_ids: list[str], conditions: list[Any],
                 config: "SweepConfig", device: str, threads: int | None) -> None:
        import ray
        import torch

        if threads:  # the local run's thread count: CPU kernels reduce in another order with another count
            torch.set_num_threads(threads)
        self.model = ray.get(refs["model"])
        self.data = ray.get(refs["data"])
        self.model.to(device)
        for module in self.model.torch_modules():
            module.eval()
        self.queries, self.query_ids = queries, query_ids
        self.conditions, self.device = conditions, device
        self.config = replace(config, progress=False)

    def __call__(self, descriptors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embeddings of every row of every descriptor's batch at each of its passes, one output row per image."""
        from cxr_robust.data.images import BadImageError
        from cxr_robust.engine import NonFiniteEmbeddingError, encode_perturbed, preprocess_images

        cols: dict[str, list[Any]] = {"job": [], "batch": [], "pos": [], "image_id": [], "emb": [], "not_unit": []}
        for b, s, e, jobs in zip(descriptors["batch"], descriptors["start"], descriptors["stop"],
                                 descriptors["jobs"]):
            b, s, e = int(b), int(s), int(e)
            ids = self.query_ids[s:e]
            try:
                # decoded once for all of this batch's conditions, as the local engine decodes once per sweep
                pixels = preprocess_images(self.data, self.model, self.config.decode_workers, False,
                                           self.config.draft_decode, self.queries[s:e])
                for j in (int(x) for x in str(jobs).split(",")):
                    contract: dict[str, int] = {}
                    # One local batch exactly: the same rows, the same code path, the same checks.
                    emb = encode_perturbed(self.model, pixels, ids, self.conditions[j],
                                           replace(self.config, batch_size=e - s), self.device, contract)
                    cols["job"] += [j] * (e - s)
                    cols["batch"] += [b] * (e - s)
                    cols["pos"] += list(range(s, e))
                    cols["image_id"] += ids
                    cols["emb"].append(emb)
                    cols["not_unit"] += [contract.get("image", 0)] * (e - s)
            except (BadImageError, NonFiniteEmbeddingError) as exc:
                raise _carry(exc) from exc
        return {"job": np.asarray(cols["job"], dtype=np.int64), "batch": np.asarray(cols["batch"], dtype=np.int64),
                "pos": np.asarray(cols["pos"], dtype=np.int64),
                "image_id": np.asarray(cols["image_id"], dtype=object), "emb": np.concatenate(cols["emb"]),
                "not_unit": np.asarray(cols["not_unit"], dtype=np.int64)}


@dataclass(frozen=True)
class Plan:
    """How a sweep's passes run on the cluster."""

    workers: int
    threads: int | None
    """Intra-op threads (and CPUs reserved) per CPU actor; None on GPU actors."""
    gpus: int


def _env_count(name: str) -> int | None:
    """A positive integer from the environment variable ``name``, None when unset; else a ValueError naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${name}={raw!r}: expected a positive integer (or unset it for the default)")
    return int(raw)


def plan(ray: Any, device: str, workers: int | None = None, threads: int | None = None) -> Plan:
    """Actors and threads for a pass on ``device`` (see the module docstring)."""
    import torch

    workers = workers or _env_count(WORKERS_ENV)
    threads = threads or _env_count(THREADS_ENV)
    if device.startswith("cuda"):
        gpus = _cluster_gpus(ray)
        if not gpus:
            raise RayEngineError("the image pass is to run on CUDA but the Ray cluster has no GPU; start GPU "
                                 "workers, or pass --cxr-device cpu")
        return Plan(workers=workers or gpus, threads=None, gpus=1)
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    largest = max(node_cpus or [1])
    wanted = threads or torch.get_num_threads()
    if wanted > largest:
        log.warning("cxr-robust: ray engine: the local engine would use %d threads, but the largest Ray node has "
                    "%d CPUs; using %d (embeddings then equal the local engine's only to float tolerance)",
                    wanted, largest, largest)
    threads = max(1, min(wanted, largest))
    return Plan(workers=workers or max(1, sum(c // threads for c in node_cpus)), threads=threads, gpus=0)


def _put(ray: Any, job: "ImagePass") -> dict[str, Any]:
    """Model and data set in the object store once per sweep. A model that cannot be pickled is named."""
    model = job.model
    where = getattr(model, "device", "cpu")
    if where != "cpu":  # workers without the driver's GPU must be able to unpickle the weights
        model.to("cpu")
    try:
        model_ref = ray.put(model)
    except Exception as exc:  # noqa: BLE001 - Ray reports pickling failures as TypeError, PicklingError...
        raise RayEngineError(f"model {model.name!r} cannot be sent to Ray workers, because it cannot be pickled "
                             f"({_reason(exc)}); run it with the local engine (--cxr-engine local)") from exc
    finally:
        if where != "cpu":
            model.to(where)
    try:
        data_ref = ray.put(job.data)
    except Exception as exc:  # noqa: BLE001
        raise RayEngineError(f"data set {job.data.name!r} cannot be sent to Ray workers ({_reason(exc)}); run "
                             "with the local engine (--cxr-engine local)") from exc
    return {"model": model_ref, "data": data_ref}


def _reason(exc: BaseException) -> str:
    """The pickling error itself, in one line (Ray wraps it in a long, coloured serializability report)."""
    inner = exc.__cause__ or exc
    first = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {first[0] if first else ''}"


Descriptor = tuple[int, int, int, tuple[int, ...]]
"""``(batch, start, stop, jobs)``: rows ``[start, stop)`` of the queries, to embed at each pass of ``jobs``."""


def _dispatch(ray: Any, jobs: Sequence["ImagePass"], descriptors: list[Descriptor], refs: dict[str, Any],
              how: Plan) -> Iterator[dict[str, np.ndarray]]:
    """Run ``descriptors`` on one actor pool; yield the output blocks as they arrive (in no particular order)."""
    first = jobs[0]
    items = [{"batch": b, "start": s, "stop": e, "jobs": ",".join(map(str, js))} for b, s, e, js in descriptors]
    try:  # one block per descriptor, so one task is one batch (``parallelism`` before Ray 2.10)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
    except TypeError:
        ds = ray.data.from_items(items, parallelism=len(items))
    resources = {"num_gpus": 1} if how.gpus else {"num_cpus": how.threads}
    ds = ds.map_batches(BatchEncoder, batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=min(how.workers, len(items))),
                        fn_constructor_kwargs={"refs": refs, "queries": np.asarray(first.queries),
                                               "query_ids": list(first.query_ids),
                                               "conditions": [j.condition for j in jobs],
                                               "config": first.config, "device": first.device,
                                               "threads": how.threads},
                        **resources)
    it = ds.iter_batches(batch_size=None, batch_format="numpy")
    try:
        yield from it
    finally:  # an interrupted driver stops the pipeline now, not when the iterator is collected
        close = getattr(it, "close", None)
        if close is not None:
            close()


@contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars or per-dataset INFO lines (the engine reports its own progress)."""
    ctx = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    bars, level = ctx.enable_progress_bars, logger.level
    ctx.enable_progress_bars = False
    logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        logger.setLevel(level)


_CARRIED = re.compile(r"cxr-robust-error:([A-Za-z0-9+/=]+):end")


class WorkerError(RuntimeError):
    """A model or data error on a worker; its message carries the original (Ray Data re-raises it wrapped in a
    ``UserCodeException`` whose cause is lost on the way, and only the text of the traceback survives)."""


def _carry(exc: BaseException) -> WorkerError:
    """``exc`` as a :class:`WorkerError` whose message holds its type and fields (JSON, base64: no pickle)."""
    info = {"type": type(exc).__name__, "message": str(exc),
            **{k: str(getattr(exc, k)) for k in ("reason", "image_id", "path") if hasattr(exc, k)}}
    token = base64.b64encode(json.dumps(info).encode()).decode()
    return WorkerError(f"{exc} [cxr-robust-error:{token}:end]")


def _unwrap(exc: BaseException) -> BaseException | None:
    """The model's or the data's own error (:class:`~cxr_robust.data.images.BadImageError`,
    :class:`~cxr_robust.engine.NonFiniteEmbeddingError`) carried by :func:`_carry` inside Ray's wrappers."""
    from cxr_robust.data.images import BadImageError
    from cxr_robust.engine import NonFiniteEmbeddingError

    found = _CARRIED.search(str(exc))
    if not found:
        return None
    try:
        info = json.loads(base64.b64decode(found.group(1)))
    except ValueError:
        return None
    if info.get("type") == "BadImageError":
        return BadImageError(info["message"], reason=info.get("reason", "undecodable"),
                             image_id=info.get("image_id", ""), path=info.get("path", ""))
    if info.get("type") == "NonFiniteEmbeddingError":
        return NonFiniteEmbeddingError(info["message"])
    return None


# ----- the passes -------------------------------------------------------------------------------------------
def embed_pass(job: "ImagePass", cache: "EmbeddingCache", contract: dict[str, int], *,
               workers: int | None = None, threads: int | None = None) -> np.ndarray:
    """One pass: :func:`embed_passes` of ``[job]``."""
    return embed_passes([job], cache, contract, workers=workers, threads=threads)[0]


def embed_passes(jobs: Sequence["ImagePass"], cache: "EmbeddingCache", contract: dict[str, int], *,
                 workers: int | None = None, threads: int | None = None) -> list[np.ndarray]:
    """Float32 ``(M, D)`` embeddings of the query ids of each pass in ``jobs``, in order, on Ray Data workers.

    The passes are the uncached conditions of one sweep (same model, data, queries, config and device). They
    run on one actor pool, and each task decodes its batch once for all of them. Each result equals
    :func:`~cxr_robust.engine.encode_perturbed`'s (see the module docstring for when it is bit-identical).
    Non-unit rows are counted in ``contract["image"]``. ``workers`` and ``threads`` override the pool size and
    the threads per CPU actor.
    """
    from cxr_robust.engine import _progress

    if not jobs:
        return []
    first = jobs[0]
    if any(j.model is not first.model or j.data is not first.data or j.config != first.config
           or j.device != first.device or not np.array_equal(j.queries, first.queries) for j in jobs[1:]):
        raise ValueError("embed_passes: the passes of one call must share model, data, queries, config and device")
    ray = init_ray(first.config.ray_address)
    m, size = len(first.query_ids), first.config.batch_size
    if len(first.queries) != m:
        raise ValueError(f"ImagePass: {len(first.queries)} query indices but {m} query ids")
    batches = [(b, s, min(s + size, m)) for b, s in enumerate(range(0, m, size))]
    bounds = {b: (s, e) for b, s, e in batches}
    folders = [shard_dir(cache, j.digest) if j.digest else None for j in jobs]

    done: dict[tuple[int, int], np.ndarray] = {}  # (job, batch) -> embeddings
    not_unit: dict[tuple[int, int], int] = {}
    for j, folder in enumerate(folders):
        if folder is None:
            continue
        if getattr(cache, "refresh", False):
            shutil.rmtree(folder, ignore_errors=True)  # a refresh trusts nothing computed before, shards included
            continue
        found = {}
        for b, s, e in batches:
            got = _read_shard(folder, s, e, first.query_ids[s:e])
            if got is not None:
                found[b] = got
        if len({emb.shape[1] for emb, _ in found.values()}) > 1:  # cannot happen for one key: trust nothing
            log.warning("cxr-robust: ray engine: shards in %s disagree on the embedding size; recomputing", folder)
            shutil.rmtree(folder, ignore_errors=True)
            found = {}
        for b, (emb, nu) in found.items():
            done[(j, b)], not_unit[(j, b)] = emb, nu
    resumed = len(done)
    if resumed:
        log.info("cxr-robust: ray engine: %d of %d batch passes resumed from their shards", resumed,
                 len(batches) * len(jobs))
    descriptors: list[Descriptor] = []
    for b, s, e in batches:
        missing = tuple(j for j in range(len(jobs)) if (j, b) not in done)
        if missing:
            descriptors.append((b, s, e, missing))

    if descriptors:
        how = plan(ray, first.device, workers, threads)
        refs = _put(ray, first)
        partial: dict[tuple[int, int], dict[int, tuple[str, np.ndarray, int]]] = {}
        duplicates = 0

        def completed() -> Iterator[tuple[int, int]]:
            """Merge the streamed rows; yield each (job, batch) once all its rows are in (and shard it)."""
            stream = _dispatch(ray, jobs, descriptors, refs, how)
            try:
                yield from _merge(stream)
            finally:  # an error here (a failed shard write, an interrupt) stops the Ray pipeline at once
                stream.close()

        def _merge(stream: Iterator[dict[str, np.ndarray]]) -> Iterator[tuple[int, int]]:
            nonlocal duplicates
            for block in stream:
                for j, b, pos, iid, emb, nu in zip(block["job"], block["batch"], block["pos"], block["image_id"],
                                                   block["emb"], block["not_unit"]):
                    j, b, pos = int(j), int(b), int(pos)
                    s, e = bounds[b]
                    if not 0 <= j < len(jobs) or not s <= pos < e or str(iid) != first.query_ids[pos]:
                        raise RayEngineError(f"ray engine: batch {b} returned row {pos} of pass {j} as image "
                                             f"{iid!r}, expected rows {s}-{e - 1}; the merge would be wrong")
                    row = np.asarray(emb, dtype=np.float32)
                    if (j, b) in done:  # a retried task delivered this batch again: keep one, and it must agree
                        duplicates += 1
                        if not np.array_equal(done[(j, b)][pos - s], row):
                            raise RayEngineError(f"ray engine: batch {b} (rows {s}-{e - 1}) was computed twice "
                                                 f"with different results (image {iid}, {jobs[j].condition.label}); "
                                                 "the model is not deterministic on this cluster")
                        continue
                    rows = partial.setdefault((j, b), {})
                    if pos in rows:
                        duplicates += 1
                        if not np.array_equal(rows[pos][1], row):
                            raise RayEngineError(f"ray engine: row {pos} (image {iid}) of batch {b} arrived twice "
                                                 "with different embeddings")
                        continue
                    rows[pos] = (str(iid), row, int(nu))
                    if len(rows) == e - s:
                        emb_b = np.stack([rows[p][1] for p in range(s, e)])
                        done[(j, b)], not_unit[(j, b)] = emb_b, rows[s][2]
                        del partial[(j, b)]
                        if folders[j] is not None:
                            _write_shard(folders[j], s, e, emb_b, first.query_ids[s:e], not_unit[(j, b)])
                        yield j, b

        todo = sum(len(d[3]) for d in descriptors)
        label = first.condition.label if len(jobs) == 1 else f"{len(jobs)} conditions"
        with _quiet_ray_data(ray):
            try:
                for _ in _progress(completed(), todo, f"{first.model.name}: {label} (ray)", first.config.progress):
                    pass
            except Exception as exc:
                inner = _unwrap(exc)
                if inner is not None:  # the caller sees the error the local engine would have raised
                    raise inner from exc
                raise
        log.info("cxr-robust: ray engine: %s: %d batch passes on %d worker(s), %d resumed, %d duplicate row(s) "
                 "from retries ignored", label, todo, min(how.workers, len(descriptors)), resumed, duplicates)

    out = []
    for j, job in enumerate(jobs):
        missing_b = [b for b, _, _ in batches if (j, b) not in done]
        if missing_b:
            b = missing_b[0]
            raise RayEngineError(f"ray engine: {len(missing_b)} of {len(batches)} batches of "
                                 f"{job.condition.label} never came back (first: batch {b}, rows "
                                 f"{bounds[b][0]}-{bounds[b][1] - 1})")
        emb = np.concatenate([done[(j, b)] for b, _, _ in batches])
        assert emb.shape[0] == m, (emb.shape, m)  # every query exactly once, in order: rows were checked one by one
        out.append(emb)
    contract_rows = sum(not_unit.values())
    if contract_rows:
        contract["image"] = contract.get("image", 0) + contract_rows
    for folder in folders:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # only when no other pass keeps shards there
            except OSError:
                pass
    return out
