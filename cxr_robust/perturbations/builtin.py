"""Registers the built-in suite, in the order the report shows it (the paper's occlusion first, the report-side
perturbations after the image suite)."""

from cxr_robust.perturbations.blur import GaussianBlur, MotionBlur
from cxr_robust.perturbations.digital import JpegCompression, Pixelate
from cxr_robust.perturbations.geometry import Collimation, LateralFlip, Rotation
from cxr_robust.perturbations.intensity import (BrightnessDown, BrightnessUp, ContrastDown, ContrastUp, GammaDown,
                                                GammaUp)
from cxr_robust.perturbations.noise import GaussianNoise, ImpulseNoise, ShotNoise, SpeckleNoise
from cxr_robust.perturbations.occlusion import Occlusion
from cxr_robust.perturbations.overlay import BurnIn
from cxr_robust.perturbations.registry import register
from cxr_robust.perturbations.report import REPORT_SUITE

SUITE = (Occlusion, GaussianNoise, ShotNoise, SpeckleNoise, ImpulseNoise, GaussianBlur, MotionBlur, Pixelate,
         JpegCompression, BrightnessUp, BrightnessDown, ContrastUp, ContrastDown, GammaUp, GammaDown, Rotation,
         Collimation, LateralFlip, BurnIn)

for _cls in (*SUITE, *REPORT_SUITE):
    register(_cls)
