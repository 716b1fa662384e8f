from cxr_robust.perturbations.occlusion import Occlusion
from cxr_robust.perturbations.registry import register
register(Occlusion)
