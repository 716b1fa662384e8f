"""The sweep for one (model, dataset): texts once, images decoded once, one image pass per condition.

A condition is a perturbation at a severity (:class:`~cxr_robust.perturbations.Condition`; the paper's grid
is occlusion at its eight ratios). Unlike the paper's Algorithm 1 (one model call per image-report pair, a
fresh occlusion in the inner loop), each report is encoded once per model and cached on disk, each image is
decoded and preprocessed once, each (image, condition) is perturbed once from a seed derived from (run seed,
image id, perturbation, severity), the clean images are encoded once whichever perturbations are measured,
and all pairs are scored with one matrix product per condition. Every k comes from the same ranks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cxr_robust import PAPER_KS, PAPER_RATIOS, __version__
from cxr_robust.cache import EmbeddingCache, key_digest
from cxr_robust.data.images import BAD_IMAGE_REASONS, MAX_DECODED_BYTES, MAX_PIXELS, BadImageError
from cxr_robust.data.retrieval_set import RetrievalSet, check_on_bad, texts_fingerprint
from cxr_robust.data.text_policy import TextPolicy, report_text
from cxr_robust.metrics import RankCounts, check_ks, recall_at_k
from cxr_robust.perturbations.base import CLEAN_CACHE_ENTRY, Condition, ConditionMap, as_condition
from cxr_robust.precision import autocast, check_precision

if TYPE_CHECKING:
    import torch

    from cxr_robust.hard_negatives import NegationResult
    from cxr_robust.models.base import RetrievalModel

log = logging.getLogger(__name__)


CLEAN = Condition("occlusion", 0.0)
"""The clean images: every perturbation's severity 0 is this one pass (one cache entry, ``CLEAN_CACHE_ENTRY``)."""


class NonFiniteEmbeddingError(FloatingPointError):
    """A model produced NaN or Inf embeddings."""


ENGINES = ("local", "ray")
"""Where a sweep's image passes run (:attr:`SweepConfig.engine`)."""


def check_engine(engine: str) -> None:
    """Raise ValueError unless ``engine`` is one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep measures and how. ``device=None`` picks CUDA when present."""

    conditions: tuple[Condition, ...] = ()
    """What to measure, in order; empty: occlusion at ``ratios`` (the paper's grid)."""
    ratios: tuple[float, ...] = PAPER_RATIOS
    """Backward compatibility: occlusion ratios (fractions), used only when ``conditions`` is empty."""
    ks: tuple[int, ...] = PAPER_KS
    seed: int = 0
    batch_size: int = 64  # on 2 CPU cores 64 beat 16-1,024 by 3-30 % (cache-friendly); raise it on a GPU
    device: str | None = None
    precision: str = "fp32"
    """``fp32`` (default), or ``fp16`` / ``bf16`` autocast around the encoders (see :mod:`cxr_robust.precision`)."""
    text_policy: TextPolicy | None = None
    tie_policy: str = "expected"
    decode_workers: int = 0
    draft_decode: bool = False
    """``False`` (default): JPEGs are decoded in full, so the pixels equal the authors' pipelines (the faithful
    path, needed to compare with a published table). ``True``: JPEG draft decoding at the smallest scale covering
    the model's input, faster but it moves embeddings by up to ~5e-3 (docs/models.md, "Decoding")."""
    engine: str = "local"
    """``local``: this process. ``ray``: Ray Data workers (``pip install 'cxr-robust[ray]'``; :mod:`cxr_robust.ray_engine`)."""
    ray_address: str | None = None
    """The Ray cluster to join with ``engine="ray"`` (``None``: ``$RAY_ADDRESS``, else a local Ray started on demand)."""
    cache_images: bool = True
    progress: bool | None = None
    on_bad_image: str = "error"
    """``error``: an unusable image file stops the sweep, naming it. ``skip``: it is left out of the queries
    of every condition, counted by reason in ``SweepResult.meta["skipped_images"]`` (its report stays a candidate)."""
    negation: bool = False
    """Also measure the negation confusion rate: each study's negated twin joins the candidates
    (:mod:`cxr_robust.hard_negatives`); the result is :attr:`SweepResult.negation`."""
    label_match: str = "exact"
    """When two studies' findings labels match, for the label-aware metrics (:func:`cxr_robust.data.labels.parse_match_rule`)."""
    uncertain_labels: str = "positive"
    """How an uncertain (-1) label counts in a match: ``positive`` or ``negative`` (:mod:`cxr_robust.data.labels`)."""

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_on_bad("on_bad_image", self.on_bad_image)
        check_engine(self.engine)
        conditions = tuple(as_condition(c) for c in (self.conditions or self.ratios))
        for c in conditions:
            c.spec().check_severity(c.severity)  # an unknown name or a bad severity fails here, naming it
        if len(set(conditions)) != len(conditions):
            raise ValueError(f"conditions repeat: {[c.key for c in conditions]}")
        object.__setattr__(self, "conditions", conditions)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        from cxr_robust.data.labels import UNCERTAIN_POLICIES, parse_match_rule

        parse_match_rule(self.label_match)  # a bad rule fails here, before anything is encoded
        if self.uncertain_labels not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain_labels must be one of {', '.join(UNCERTAIN_POLICIES)}; got "
                             f"{self.uncertain_labels!r}")


@dataclass
class SweepResult:
    """Per-condition rank counts of every query, the Recall@k grid, and the run's metadata (ids and numbers only).

    Methods taking a condition also take a bare number, read as an occlusion ratio (backward compatibility).
    """

    model: str
    dataset: str
    baseline_row: str | None
    text_policy: str
    seed: int
    ks: tuple[int, ...]
    counts: dict[Condition, RankCounts]
    image_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    tie_policy: str = "expected"
    negation: "NegationResult | None" = None
    """The negation measurement (``SweepConfig.negation``), else None."""

    def __post_init__(self) -> None:
        self.counts = ConditionMap((as_condition(c), rc) for c, rc in self.counts.items())

    @property
    def n_queries(self) -> int:
        """M."""
        return len(self.image_ids)

    @property
    def n_candidates(self) -> int:
        """N."""
        return next(iter(self.counts.values())).n_candidates

    def recall(self, condition: Condition | float, k: int) -> float:
        """Recall@k (a fraction) at ``condition``."""
        return recall_at_k(self.counts[as_condition(condition)], [k], self.tie_policy)[k]

    def grid(self) -> dict[Condition, dict[int, float]]:
        """``{condition: {k: recall}}`` for every measured cell."""
        return {c: recall_at_k(rc, self.ks, self.tie_policy) for c, rc in self.counts.items()}

    def hits(self, condition: Condition | float, k: int) -> np.ndarray:
        """Per-query hits at depth ``k`` (expected value under ties): the input of paired tests."""
        return self.counts[as_condition(condition)].hits(k, self.tie_policy)

    def perturbations(self) -> list[str]:
        """The measured perturbations, in measurement order."""
        return list(dict.fromkeys(c.perturbation for c in self.counts))

    def metrics(self, names: Sequence[str]) -> dict[Condition, dict[str, Any]]:
        """``{condition: {metric: value or {k: value}}}`` of the registered metrics ``names`` (label-aware ones
        only where the data set has findings labels) from the same per-query ranks."""
        from cxr_robust.metric_registry import compute_metrics

        return {c: compute_metrics(rc, names, self.ks, self.tie_policy) for c, rc in self.counts.items()}


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` (one GPU per pytest-xdist worker) when available, else ``cpu``."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
        index = device.partition(":")[2]
        if device.startswith("cuda") and index.isdigit() and int(index) >= torch.cuda.device_count():
            # caught here, naming the option, rather than as a bare CUDA error when the model is moved
            raise RuntimeError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}); fix --cxr-device")
        return device
    if not torch.cuda.is_available():
        return "cpu"
    # Under pytest-xdist each worker (gw0, gw1, ...) takes its own GPU, so models sweep in parallel.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit() and torch.cuda.device_count() > 1:
        return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"
    return "cuda"


UNIT_NORM_TOLERANCE = 1e-3
"""An embedding whose L2 norm is further than this from 1 breaks the documented contract (it is normalised)."""


def normalise_checked(emb: "torch.Tensor", contract: dict[str, int], what: str) -> "torch.Tensor":
    """``emb`` with unit rows; rows that were not unit are counted in ``contract[what]``.

    The engine ranks by cosine similarity whatever the model returns: an adapter that forgets to normalise
    (or scales its embeddings) would otherwise rank by a dot product that favours long vectors.
    """
    from cxr_robust.models.base import l2_normalise

    norms = emb.norm(dim=-1)
    off = int(((norms - 1.0).abs() > UNIT_NORM_TOLERANCE).sum())
    if off:
        contract[what] = contract.get(what, 0) + off
        return l2_normalise(emb)
    return emb


def check_finite(emb: "torch.Tensor", ids: Sequence[str], model: str, what: str) -> None:
    """Raise naming the model and the first offending ids if ``emb`` has NaN or Inf rows."""
    import torch

    bad = (~torch.isfinite(emb).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(ids[i]) for i in bad[:5])
        raise NonFiniteEmbeddingError(f"model {model!r} produced NaN/Inf {what} embeddings for {len(bad)} item(s), "
                                      f"first: {shown}; check the weights file and the input data")


def _progress(iterable: Any, total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar only when stderr is a terminal (CI logs stay clean)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)


def preprocess_images(data: RetrievalSet, model: "RetrievalModel", workers: int = 0,
                      progress: bool | None = None, draft: bool = False,
                      indices: Sequence[int] | None = None) -> "torch.Tensor":
    """Decode and geometrically preprocess every image (or those of ``indices``) once: ``uint8 (M, C, S, S)``.

    Decoding runs in a thread pool (PIL releases the GIL while decoding). JPEGs are decoded in full, as the
    authors' pipelines do; ``draft=True`` decodes them at the smallest scale that still covers the model's
    ``decode_size`` (faster, not bit-faithful). An unusable image raises
    :class:`BadImageError` naming the first one and how many more there are.
    """
    import torch

    arrays, errors = decode_images(data, model, workers, progress, draft, indices)
    if errors:
        first = errors[min(errors)]
        count = f"{len(errors)} of {data.num_images} images of {data.name} are unusable; first: " \
            if len(errors) > 1 else ""
        raise BadImageError(f"{count}{first}", reason=first.reason, image_id=first.image_id,
                            path=first.path) from first
    if not arrays:
        raise ValueError(f"dataset {data.name} has no images")
    return torch.from_numpy(np.stack(arrays))


def decode_images(data: RetrievalSet, model: "RetrievalModel", workers: int = 0, progress: bool | None = None,
                  draft: bool = False, indices: Sequence[int] | None = None
                  ) -> tuple[list[np.ndarray], dict[int, BadImageError]]:
    """Preprocessed pixels of the usable images among ``indices`` (in order) and the errors of the others."""
    order = list(range(data.num_images)) if indices is None else [int(i) for i in indices]

    def one(i: int) -> np.ndarray | BadImageError:
        try:
            return model.preprocess(data.open_image(i, draft_size=model.decode_size if draft else None))
        except BadImageError as exc:
            return exc

    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        out = list(_progress(pool.map(one, order), len(order), f"{model.name}: decode", progress))
    errors = {i: r for i, r in zip(order, out) if isinstance(r, BadImageError)}
    return [r for r in out if not isinstance(r, BadImageError)], errors


@dataclass(frozen=True)
class ImagePass:
    """One condition's image pass: embed the query images ``queries`` (dataset indices, in row order) at ``condition``.

    Everything an engine needs; ``digest`` names the cache entry the result will be stored under (an engine may
    keep partial results under it so an interrupted pass resumes), ``None`` when images are not cached.
    """

    model: "RetrievalModel"
    data: RetrievalSet
    queries: np.ndarray
    query_ids: list[str]
    condition: Condition
    config: SweepConfig
    device: str
    digest: str | None = None


class SharedPixels:
    """Decoded, geometrically preprocessed pixels shared by the sweeps of one process.

    Models with the same geometry (equal :meth:`~cxr_robust.models.base.RetrievalModel.preprocess_key`) on the
    same images decode them once: checkpoints of one architecture along a training run, MedCLIP's two
    encoders, CXR-CLIP's two. The oldest entries are dropped beyond ``max_bytes``. Because a wrong key would
    silently feed one model another's pixels, a reused entry is spot-checked: its first image is preprocessed
    again by the asking model and must be identical, else the entry is rebuilt.
    """

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[tuple[Any, ...], "torch.Tensor"] = {}
        self.hits = 0
        """Entries reused (after their spot check) rather than decoded again."""

    def get(self, data: RetrievalSet, model: "RetrievalModel", config: SweepConfig,
            indices: Sequence[int] | None) -> "torch.Tensor":
        """``uint8 (M, C, S, S)`` pixels of the images ``indices`` (all when ``None``) as ``model`` sees them."""
        order = tuple(range(data.num_images)) if indices is None else tuple(int(i) for i in indices)
        key = (data.name, data.image_fingerprint(), type(model).__qualname__, model.preprocess_key(),
               config.draft_decode, model.decode_size, hashlib.sha256(np.asarray(order).tobytes()).hexdigest())
        pixels = self._entries.pop(key, None)
        if pixels is not None:
            first = data.open_image(order[0], draft_size=model.decode_size if config.draft_decode else None)
            if np.array_equal(model.preprocess(first), pixels[0].numpy()):
                self.hits += 1
            else:
                log.warning("model %r: pixels shared under preprocess key %r differ from its own preprocessing; "
                            "decoding again (give the model a preprocess_key that names its geometry)",
                            model.name, model.preprocess_key())
                pixels = None
        if pixels is None:
            pixels = preprocess_images(data, model, config.decode_workers, config.progress, config.draft_decode,
                                       indices)
        self._entries[key] = pixels  # most recently used last
        while sum(p.numel() for p in self._entries.values()) > self.max_bytes and len(self._entries) > 1:
            del self._entries[next(iter(self._entries))]
        return pixels


SHARED_PIXELS = SharedPixels()
"""The process's pixel store, used by :func:`run_sweep` unless it is given another one."""


def encode_texts(model: "RetrievalModel", texts: list[str], study_ids: list[str], batch_size: int,
                 progress: bool | None = None, device: str = "cpu", precision: str = "fp32",
                 contract: dict[str, int] | None = None) -> np.ndarray:
    """Embed report texts in batches (float32, L2-normalised), checking they are finite.

    Rows the model did not return with unit norm are normalised and counted in ``contract["text"]``.
    """
    contract = {} if contract is None else contract
    import torch

    out = []
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode(), autocast(device, precision):
        for s in _progress(starts, len(starts), f"{model.name}: texts", progress):
            emb = model.encode_texts(texts[s:s + batch_size]).float().cpu()
            check_finite(emb, study_ids[s:s + batch_size], model.name, "report")
            out.append(normalise_checked(emb, contract, "text"))
    return torch.cat(out).numpy()


def encode_perturbed(model: "RetrievalModel", pixels: "torch.Tensor", image_ids: list[str],
                     condition: Condition, config: SweepConfig, device: str,
                     contract: dict[str, int] | None = None) -> np.ndarray:
    """Perturb every image at ``condition`` (draws seeded per image id) and embed, batch by batch on ``device``.

    Parameters are sampled per batch on the CPU (they depend only on each image's id, so batching does not
    change them) and applied on ``device``. Rows the model did not return with unit norm are normalised and
    counted in ``contract["image"]``.
    """
    import torch

    contract = {} if contract is None else contract
    spec = condition.spec()
    _, _, h, w = pixels.shape
    out = []
    starts = range(0, pixels.shape[0], config.batch_size)
    with torch.inference_mode(), autocast(device, config.precision):
        for s in _progress(starts, len(starts), f"{model.name}: {condition.label}", config.progress):
            ids = image_ids[s:s + config.batch_size]
            batch = pixels[s:s + config.batch_size].to(device, non_blocking=True)
            if not condition.is_clean:  # severity 0 is the identity: skip a full pass over the pixels
                params = spec.sample_params(ids, condition.severity, config.seed, h, w)
                batch = spec.apply(batch, params, condition.severity)  # apply moves them to the batch's device
            emb = model.encode_images(batch).float().cpu()
            check_finite(emb, ids, model.name, f"image ({condition.label})")
            out.append(normalise_checked(emb, contract, "image"))
    return torch.cat(out).numpy()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"cxr_robust": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "open_clip_torch", "transformers", "numpy", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def run_sweep(model: "RetrievalModel", data: RetrievalSet, config: SweepConfig = SweepConfig(),
              cache: EmbeddingCache | None = None,
              on_condition: Callable[[Condition, RankCounts], None] | None = None,
              code_modules: Sequence[str] = (), shared_pixels: SharedPixels | None = None) -> SweepResult:
    """Measure Recall@k of ``model`` on ``data`` at every condition of ``config``.

    Text embeddings (and, with ``config.cache_images``, perturbed-image embeddings) are read from ``cache``
    when present, so a rerun encodes nothing that has not changed and an interrupted run resumes. The cache
    key holds the model's identity (:func:`~cxr_robust.models.identity.model_identity`: its weights as loaded
    and the source of its code, plus ``code_modules``, e.g. the registry factory's module).
    """
    from cxr_robust.models.identity import model_identity
    import torch

    from cxr_robust.scoring import score_ranks

    t_start = time.perf_counter()
    cache = cache or EmbeddingCache()
    if config.engine == "ray":  # texts and scores here; images where Ray's workers are (that kind is in the key)
        from cxr_robust.ray_engine import resolve_devices

        device, image_device = resolve_devices(config)
    else:
        device = image_device = pick_device(config.device)
    model.to(device)
    for module in model.torch_modules():
        module.eval()
    check_ks(config.ks, data.num_studies)
    policy = TextPolicy.parse(config.text_policy or model.default_text_policy)
    fp = model_identity(model, code_modules)
    contract: dict[str, int] = {}
    versions = _versions()
    timings: dict[str, float] = {}
    encoded = {"texts": 0, "images": 0}

    t0 = time.perf_counter()
    texts = data.texts(policy)
    empty = [sid for sid, t in zip(data.study_ids, texts) if not t.strip()]
    if empty:
        raise ValueError(f"dataset {data.name}: {len(empty)} report(s) are empty under text policy "
                         f"{policy.value!r}, e.g. study {empty[0]}; fix the reports or choose another policy")
    # Library versions that can change an embedding are part of every key: an upgrade re-encodes once.
    lib = {k: versions.get(k) for k in ("cxr_robust", "torch", "open_clip_torch", "transformers")}
    text_key = {"model": fp, "text_policy": policy.value, "texts": data.text_fingerprint(policy),
                "versions": lib, "device_kind": device.split(":")[0], "precision": config.precision}

    def compute_texts() -> np.ndarray:
        encoded["texts"] += len(texts)
        return encode_texts(model, texts, data.study_ids, config.batch_size, config.progress, device,
                            config.precision, contract)

    text_emb, _ = cache.get_or_compute("text", text_key, compute_texts)
    timings["texts_s"] = time.perf_counter() - t0
    text_t = torch.from_numpy(text_emb).to(device)

    def compose(findings: str, impression: str) -> str:
        """A (perturbed or twin) report as the model reads it: its text policy, or, when that leaves nothing
        (e.g. findings only under an impression policy), the sections that are left."""
        return report_text(findings, impression, policy) or report_text(findings, impression,
                                                                         TextPolicy.FINDINGS_IMPRESSION)

    def embed_other_texts(kind: str, other: list[str], ids: list[str]) -> "torch.Tensor":
        """Embeddings of texts other than the reports (perturbed reports, twins), keyed by their content."""
        def compute() -> np.ndarray:
            encoded["texts"] += len(other)
            return encode_texts(model, other, ids, config.batch_size, config.progress, device, config.precision,
                                contract)

        key = {**text_key, "texts": texts_fingerprint(ids, other), "kind": kind}
        emb, _ = cache.get_or_compute("text", key, compute)
        return torch.from_numpy(emb).to(device)

    not_applicable: dict[str, int] = {}

    def report_side_texts(condition: Condition) -> "torch.Tensor":
        """The candidate reports perturbed at ``condition`` (seeded per study id), embedded."""
        spec = condition.spec()
        new_f, new_i = spec.perturb_reports(data.findings, data.impressions, data.study_ids, condition.severity,
                                            config.seed)
        out, skipped_reports = [], 0
        for j, (text, f, i) in enumerate(zip(texts, new_f, new_i)):
            new = compose(f, i)
            if spec.not_applicable(data.findings[j], data.impressions[j]) or not new.strip():
                new, skipped_reports = text, skipped_reports + 1  # e.g. findings only, for a study without findings
            out.append(new)
        not_applicable[condition.key] = skipped_reports
        return embed_other_texts(f"report:{condition.key}", out, data.study_ids)

    label_kw: dict[str, Any] = {}
    labels_meta: dict[str, Any] = {"source": None}
    if data.labels is not None:
        from cxr_robust.data.labels import LabelMatch

        match = LabelMatch(data.labels, config.label_match, config.uncertain_labels)
        label_kw = {"relevance": match, "label_ks": tuple(config.ks)}
        labels_meta = {**data.labels.summary(), "match": match.describe()}

    pixels: "torch.Tensor | None" = None
    image_fp = data.image_fingerprint() if config.cache_images else None

    # Which images are queries: all of them, or (on_bad_image="skip") the usable ones, decided once for
    # every condition. The per-image status is cached, so a fully cached rerun decodes nothing.
    queries = np.arange(data.num_images)
    skipped = {reason: 0 for reason in BAD_IMAGE_REASONS}
    skipped_ids: list[str] = []
    if config.on_bad_image == "skip":
        def compute_status() -> np.ndarray:
            nonlocal pixels
            t_dec = time.perf_counter()
            arrays, errors = decode_images(data, model, config.decode_workers, config.progress, config.draft_decode)
            timings["decode_s"] = time.perf_counter() - t_dec
            if arrays:
                pixels = torch.from_numpy(np.stack(arrays))
            return np.array([0 if i not in errors else 1 + BAD_IMAGE_REASONS.index(errors[i].reason)
                             for i in range(data.num_images)], dtype=np.int8)

        if config.cache_images:
            status_key = {"images": image_fp, "preprocess": model.preprocess_key(), "draft": config.draft_decode,
                          "decode_size": model.decode_size, "max_pixels": MAX_PIXELS,
                          "max_decoded_bytes": MAX_DECODED_BYTES,
                          "pillow": versions.get("pillow")}
            status, _ = cache.get_or_compute("image_status", status_key, compute_status)
        else:
            status = compute_status()
        queries = np.flatnonzero(status == 0)
        for code in status[status > 0]:
            skipped[BAD_IMAGE_REASONS[int(code) - 1]] += 1
        skipped_ids = [data.image_ids[i] for i in np.flatnonzero(status > 0)]
        if not len(queries):
            raise BadImageError(f"dataset {data.name}: none of its {data.num_images} images is usable "
                                f"({ {k: v for k, v in skipped.items() if v} }), e.g. {skipped_ids[:3]}; "
                                "check the image files", reason="undecodable")
        if skipped_ids:
            log.warning("%s: skipped %d unusable image(s) of %s (on_bad_image='skip'): %s; first: %s",
                        model.name, len(skipped_ids), data.name, {k: v for k, v in skipped.items() if v},
                        ", ".join(skipped_ids[:5]))
    query_ids = [data.image_ids[i] for i in queries]
    query_study = data.image_study[queries]
    counts: dict[Condition, RankCounts] = {}
    clean_counts: RankCounts | None = None  # every severity 0 is the same clean pass: encoded and scored once

    def image_key(condition: Condition) -> dict[str, Any]:
        """Everything that computes ``condition``'s image embeddings: the cache key."""
        entry = CLEAN_CACHE_ENTRY if condition.is_clean else condition.spec().cache_entry(condition.severity)
        key = {"model": fp, "images": image_fp, "preprocess": model.preprocess_key(), **entry,
               "seed": config.seed, "draft": config.draft_decode,
               "decode_size": model.decode_size, "versions": {**lib, "pillow": versions.get("pillow")},
               "device_kind": image_device.split(":")[0], "precision": config.precision}
        if skipped_ids:  # fewer rows than the full set: never share an entry with a run that kept them
            key["skipped"] = hashlib.sha256("\0".join(skipped_ids).encode()).hexdigest()
        return key

    def job(condition: Condition) -> ImagePass:
        digest = key_digest(image_key(condition)) if config.cache_images else None
        return ImagePass(model, data, queries, query_ids, condition, config, image_device, digest)

    # Image passes: every image-side condition, and the clean images once (every severity 0 is the same
    # pass), also when only report-side conditions or the negation test need them.
    image_passes = [c for c in config.conditions if c.spec().side == "image" and not c.is_clean]
    if config.negation or any(c.is_clean or c.spec().side == "report" for c in config.conditions):
        image_passes.insert(0, CLEAN)

    # The ray engine runs every uncached image pass of the sweep on one actor pool, each batch decoded once
    # (one pool per condition would pay the workers' start-up, and decoding, once per condition).
    from_ray: dict[Condition, np.ndarray] = {}
    if config.engine == "ray":
        from cxr_robust.ray_engine import embed_passes

        todo = [c for c in image_passes if not (config.cache_images and cache.contains("image", image_key(c)))]
        from_ray = dict(zip(todo, embed_passes([job(c) for c in todo], cache, contract)))

    def compute_images(condition: Condition) -> np.ndarray:
        nonlocal pixels
        encoded["images"] += len(query_ids)
        if config.engine == "ray":  # decoded, perturbed and encoded on the Ray workers above
            done = from_ray.pop(condition, None)
            if done is not None:
                return done
            from cxr_robust.ray_engine import embed_pass  # its entry vanished meanwhile (another process)

            return embed_pass(job(condition), cache, contract)
        if pixels is None:
            t_dec = time.perf_counter()
            pixels = (shared_pixels or SHARED_PIXELS).get(data, model, config, queries if skipped_ids else None)
            timings["decode_s"] = time.perf_counter() - t_dec
        return encode_perturbed(model, pixels, query_ids, condition, config, device, contract)

    clean_images: "torch.Tensor | None" = None

    def image_embeddings(condition: Condition) -> "torch.Tensor":
        """The query images' embeddings at an image-side ``condition`` (the clean pass computed once)."""
        nonlocal clean_images
        if condition.is_clean:
            if clean_images is not None:
                return clean_images
            condition = CLEAN  # one key for every severity 0, also among the Ray engine's results
        if config.cache_images:
            emb, _ = cache.get_or_compute("image", image_key(condition), lambda: compute_images(condition))
        else:
            emb = compute_images(condition)
        out = torch.from_numpy(emb).to(device)
        if condition.is_clean:
            clean_images = out
        return out

    for condition in config.conditions:
        t0 = time.perf_counter()
        if condition.is_clean and clean_counts is not None:
            counts[condition] = clean_counts
            continue
        if condition.spec().side == "report" and not condition.is_clean:  # clean images against perturbed reports
            counts[condition] = score_ranks(image_embeddings(CLEAN), report_side_texts(condition), query_study,
                                            **label_kw)
        else:
            counts[condition] = score_ranks(image_embeddings(condition), text_t, query_study, **label_kw)
        if condition.is_clean:
            clean_counts = counts[condition]
        timings[f"{condition.key}_s"] = time.perf_counter() - t0
        if on_condition:
            on_condition(condition, counts[condition])

    negation: "NegationResult | None" = None
    negation_meta: dict[str, Any] = {}
    if config.negation:
        t0 = time.perf_counter()
        negation, negation_meta = _measure_negation(data, config.seed, texts, compose, embed_other_texts,
                                                    image_embeddings(CLEAN), text_t, query_study)
        timings["negation_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - t_start
    if contract:
        log.warning("model %r returned embeddings that are not unit-norm (%s rows, tolerance %g); they were "
                    "normalised (the engine ranks by cosine similarity). Its encoders should return L2-normalised "
                    "rows (RetrievalModel contract).", model.name,
                    ", ".join(f"{n} {what}" for what, n in sorted(contract.items())), UNIT_NORM_TOLERANCE)
    meta = {
        "model": model.name, "model_fingerprint": fp, "dataset": data.name, "dataset_counts": data.counts(),
        "dataset_meta": {k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, bool, dict, list))},
        "credentialed": data.credentialed, "device": device, "image_device": image_device,
        "precision": config.precision, "seed": config.seed,
        "conditions": [c.key for c in config.conditions],
        "batch_size": config.batch_size, "draft_decode": config.draft_decode, "engine": config.engine,
        "text_policy": policy.value,
        "tie_policy": config.tie_policy, "on_bad_image": config.on_bad_image,
        "skipped_images": skipped, "skipped_image_ids": skipped_ids,
        "studies_without_queries": int(data.num_studies - len(np.unique(query_study))),
        "text_encodings": encoded["texts"], "image_encodings": encoded["images"],
        "labels": labels_meta, "reports_not_applicable": not_applicable, "negation": negation_meta,
        "contract_violations": {"not_unit_norm": contract} if contract else {},
        "cache_dir": str(cache.root), "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": versions,
    }
    return SweepResult(model=model.name, dataset=data.name, baseline_row=model.baseline_row,
                       text_policy=policy.value, seed=config.seed, ks=tuple(config.ks), counts=counts,
                       image_ids=query_ids, meta=meta, tie_policy=config.tie_policy, negation=negation)


def _measure_negation(data: RetrievalSet, seed: int, texts: list[str], compose: Callable[[str, str], str],
                      embed: Callable[[str, list[str], list[str]], "torch.Tensor"], clean_images: "torch.Tensor",
                      text_t: "torch.Tensor", query_study: np.ndarray) -> tuple["NegationResult", dict[str, Any]]:
    """The negation measurement of a sweep: each study's twin (as the model reads it) against its report.

    A twin whose flipped finding lies in a section the model's text policy does not read would be the same text
    as its report: it is left out (and counted), because it would score a tie whatever the model is.
    """
    from cxr_robust.data.negation import negation_twins
    from cxr_robust.hard_negatives import measure_negation

    twins = negation_twins(data, seed=seed)
    studies, twin_texts, unseen = [], [], 0
    by_finding: dict[str, int] = {}
    for j, (f, i, finding) in enumerate(zip(twins.findings, twins.impressions, twins.finding)):
        if f is None or i is None:
            continue
        text = compose(f, i)
        if text == texts[j]:
            unseen += 1
            continue
        studies.append(j)
        twin_texts.append(text)
        by_finding[str(finding)] = by_finding.get(str(finding), 0) + 1
    ids = [data.study_ids[j] for j in studies]
    twin_emb = embed("negation-twins", twin_texts, ids) if studies else text_t[:0]
    result = measure_negation(clean_images, text_t, twin_emb, studies, query_study, twins.method, by_finding)
    meta = {"method": twins.method, "twins": len(studies), "studies": data.num_studies,
            "coverage": round(len(studies) / data.num_studies, 6), "twins_unseen_by_text_policy": unseen,
            "by_finding": dict(sorted(by_finding.items()))}
    return result, meta

