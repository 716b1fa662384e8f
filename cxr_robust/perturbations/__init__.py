"""Perturbations: a protocol (:class:`Perturbation`), a registry, the chest X-ray image suite, and report-side
perturbations of the candidate texts (:class:`ReportPerturbation`, ``side == "report"``).

Adding one is a file with a :class:`Perturbation` subclass plus :func:`register` (or an entry point in the
``cxr_robust.perturbations`` group); see ``examples/custom_perturbation`` and docs/perturbations.md.
"""

from cxr_robust.perturbations.base import (CLEAN_CACHE_ENTRY, LEVELS, Condition, Params, Perturbation,
                                           as_condition, derive_seed, image_rngs, params_to, to_uint8)
from cxr_robust.perturbations.registry import (DEFAULT_PERTURBATIONS, ENTRY_POINT_GROUP, UnknownPerturbationError,
                                               available, conditions_for, get_perturbation, parse_perturbations,
                                               parse_severities, register)
from cxr_robust.perturbations.report import ReportPerturbation

__all__ = ["CLEAN_CACHE_ENTRY", "Condition", "DEFAULT_PERTURBATIONS", "ENTRY_POINT_GROUP", "LEVELS", "Params",
           "Perturbation", "ReportPerturbation", "UnknownPerturbationError", "as_condition", "available",
           "conditions_for", "derive_seed", "get_perturbation", "image_rngs", "params_to", "parse_perturbations",
           "parse_severities", "register", "to_uint8"]
