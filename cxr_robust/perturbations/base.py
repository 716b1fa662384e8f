"""The perturbation protocol: a named corruption with a severity axis, pure seeded parameters, batched apply.

Every perturbation splits, like torchvision's v2 transforms, into

* :meth:`Perturbation.sample_params`: pure and seeded. Each image's random draws come from a stream derived
  from (run seed, image id, perturbation name, severity) alone, so they never depend on batch size, order,
  device or worker count.
* :meth:`Perturbation.apply`: deterministic, on a ``uint8 (B, C, H, W)`` batch on its own device, with no
  Python loop over images. It returns a new ``uint8`` tensor of the same shape on the same device and reads
  nothing from other images of the batch.

Severity 0 is the identity for every perturbation (the clean images); the engine encodes the clean images
once per sweep whichever perturbations are measured.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

Params = dict[str, Any]
"""What :meth:`Perturbation.sample_params` returns: arrays whose first axis is the image of the batch."""

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
"""The severity levels of a levelled perturbation (ImageNet-C and MedMNIST-C use 1-5); 0 is the clean image."""


def canonical_severity(severity: float) -> float:
    """A severity as a float rounded to 10 decimals, so equal severities are equal dictionary keys."""
    return round(float(severity), 10) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True, order=True)
class Condition:
    """One measured condition of a sweep: a perturbation at a severity (severity 0: the clean images)."""

    perturbation: str
    severity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", canonical_severity(self.severity))

    @property
    def is_clean(self) -> bool:
        """True for severity 0, the identity of every perturbation."""
        return self.severity == 0.0

    def spec(self) -> "Perturbation":
        """The registered perturbation of this condition."""
        from cxr_robust.perturbations.registry import get_perturbation

        return get_perturbation(self.perturbation)

    @property
    def label(self) -> str:
        """Human label, e.g. ``25% occlusion`` or ``gaussian_noise s3``."""
        return self.spec().label(self.severity)

    @property
    def token(self) -> str:
        """The part of a test id, e.g. ``occ25`` or ``gauss_noise-s3``."""
        return self.spec().id_token(self.severity)

    @property
    def key(self) -> str:
        """A stable string key (results files, ranks files): ``<perturbation>@<severity>``."""
        return f"{self.perturbation}@{self.severity!r}"

    @classmethod
    def from_key(cls, key: str) -> "Condition":
        """Inverse of :attr:`key`."""
        name, sep, sev = key.rpartition("@")
        if not sep or not name:
            raise ValueError(f"condition key {key!r} is not '<perturbation>@<severity>'")
        return cls(name, float(sev))


CLEAN_CACHE_ENTRY: dict[str, Any] = {"ratio": 0.0, "fill": 0}
"""Cache fields of the clean images (every severity 0): those of occlusion ratio 0 before perturbations
existed, so a cache written then still serves the clean pass."""


def as_condition(value: "Condition | float") -> Condition:
    """``value`` as a condition; a bare number is an occlusion ratio (how the gate keyed cells before
    perturbations existed, kept for backward compatibility)."""
    return value if isinstance(value, Condition) else Condition("occlusion", float(value))


class ConditionMap(dict):
    """A dict keyed by :class:`Condition` that also takes a bare number as an occlusion ratio on lookup
    (``counts[0.25]``), as results keyed by ratio did before perturbations existed."""

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(as_condition(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(as_condition(key))  # type: ignore[arg-type]

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(as_condition(key), default)


def derive_seed(run_seed: int, image_id: str, perturbation: str, severity: float) -> int:
    """A 64-bit seed from (run seed, image id, perturbation, severity), stable across processes and platforms."""
    key = f"{int(run_seed)}|{image_id}|{perturbation}|{canonical_severity(severity):.12g}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def image_rngs(image_ids: Sequence[str], run_seed: int, perturbation: str,
               severity: float) -> list[np.random.Generator]:
    """One independent NumPy generator per image, seeded by :func:`derive_seed`."""
    return [np.random.default_rng(derive_seed(run_seed, iid, perturbation, severity)) for iid in image_ids]


class Perturbation:
    """Base class of an image perturbation; subclasses set the class attributes and the two methods.

    A subclass is registered with :func:`cxr_robust.perturbations.register` (or the ``cxr_robust.perturbations``
    entry-point group) and from then on is a ``--cxr-perturbations`` choice, a test-id token, a baseline key
    and a section of the report, with no change anywhere else.
    """

    name: ClassVar[str] = ""
    """Registry name, e.g. ``gaussian_noise``."""
    short: ClassVar[str] = ""
    """Test-id token, e.g. ``gauss_noise`` (ids look like ``<model>-gauss_noise-s3-k10``)."""
    side: ClassVar[str] = "image"
    """What it perturbs: ``image`` (the query films) or ``report`` (the candidate texts)."""
    group: ClassVar[str] = "other"
    """Family group for the report's summary: noise, blur, digital, intensity, geometry, overlay, occlusion."""
    description: ClassVar[str] = ""
    unit: ClassVar[str] = "level"
    """What a severity number means (``level`` for 1-5 levels; ``fraction of the image area`` for occlusion)."""
    parameter_name: ClassVar[str] = ""
    """The physical parameter each level sets, e.g. ``sigma (intensity in [0, 1])``."""
    levels: ClassVar[dict[int, Any]] = {}
    """Parameter value per level 1-5 (the table in docs/perturbations.md)."""
    source: ClassVar[str] = ""
    """Where the parameters come from (MedMNIST-C, ImageNet-C, or "this project" with the reason)."""
    version: ClassVar[int] = 1
    """Bump when the pixels a severity produces change: it is part of every cache key."""
    default_severities: ClassVar[tuple[float, ...]] = LEVELS

    # ----- the severity axis -------------------------------------------------------------------------------
    def check_severity(self, severity: float) -> float:
        """``severity`` as a canonical float if valid for this perturbation, else ``ValueError`` naming it."""
        try:
            value = float(severity)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: severity {severity!r} is not a number; use a level 0-5") from None
        if not math.isfinite(value) or value not in (0, *LEVELS):
            raise ValueError(f"{self.name}: severity {severity!r} is not a level; use an integer 0-5 "
                             "(0 is the clean image)")
        return canonical_severity(value)

    def parameter(self, severity: float) -> Any:
        """The physical parameter at ``severity`` (None at 0, the identity)."""
        level = int(self.check_severity(severity))
        return None if level == 0 else self.levels[level]

    def format_severity(self, severity: float) -> str:
        """How a severity is printed in reports: ``s3``."""
        return f"s{int(canonical_severity(severity))}"

    def label(self, severity: float) -> str:
        """How a condition reads in messages and reports: ``gaussian_noise s3``."""
        return f"{self.name} {self.format_severity(severity)}"

    def id_token(self, severity: float) -> str:
        """Test-id token of a severity: ``<short>-s<level>``."""
        return f"{self.short or self.name}-{self.format_severity(severity)}"

    def parse_severity(self, text: str) -> float:
        """A severity as written on a command line (``3`` or ``s3``) for this perturbation."""
        text = str(text).strip()
        return self.check_severity(text[1:] if text[:1] in "sS" else text)

    def cache_key(self) -> dict[str, Any]:
        """What determines the pixels of every severity: name, version and the level table."""
        return {"perturbation": self.name, "version": self.version,
                "levels": {str(k): repr(v) for k, v in sorted(self.levels.items())}}

    def cache_entry(self, severity: float) -> dict[str, Any]:
        """The image-cache fields of one severity (the engine shares one entry for every clean condition)."""
        return {**self.cache_key(), "severity": self.check_severity(severity)}

    # ----- the two halves ----------------------------------------------------------------------------------
    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        """Pure, seeded parameters for a batch (first axis = image); default: none (deterministic families)."""
        return {}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        """The perturbed batch: ``uint8 (B, C, H, W)`` in, a new ``uint8`` tensor of the same shape out."""
        raise NotImplementedError

    def __call__(self, pixels: "torch.Tensor", image_ids: Sequence[str], severity: float,
                 run_seed: int) -> "torch.Tensor":
        """Sample and apply in one call; severity 0 returns a copy of the input (the identity)."""
        check_batch(pixels, image_ids)
        severity = self.check_severity(severity)
        if severity == 0:
            return pixels.clone()
        _, _, h, w = pixels.shape
        return self.apply(pixels, self.sample_params(list(image_ids), severity, run_seed, h, w), severity)

    def __repr__(self) -> str:
        return f"<perturbation {self.name}>"


def check_batch(pixels: "torch.Tensor", image_ids: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``pixels`` is a ``uint8 (B, C, H, W)`` batch with one id per image."""
    import torch

    if pixels.ndim != 4 or pixels.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {pixels.dtype} {tuple(pixels.shape)}")
    if pixels.shape[0] != len(image_ids):
        raise ValueError(f"{len(image_ids)} image ids for a batch of {pixels.shape[0]} images")


def params_to(params: Params, device: "torch.device | str") -> Params:
    """``params`` with every array as a tensor on ``device`` (scalars and strings pass through)."""
    import torch

    out: Params = {}
    for key, value in params.items():
        if isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device)
        else:
            out[key] = value
    return out


def to_uint8(values: "torch.Tensor") -> "torch.Tensor":
    """Round a float tensor in grey levels (0-255 scale) to ``uint8``, clipping to [0, 255]."""
    import torch

    return values.round().clamp_(0, 255).to(torch.uint8)
