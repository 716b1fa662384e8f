"""An ad-hoc model for tests: the demo (phantom-clip) architecture with seeded random weights.

Usable wherever a model name is accepted, as ``tests.privacy_model:build`` (the registry's ad-hoc
``module:factory`` form), and directly as ``build(seed=...)``. It has no baseline row, so a gate run with it
measures without comparing.
"""

from __future__ import annotations

from typing import Any


def build(weights: Any = None, seed: int = 0, **_: Any) -> Any:
    """A random-weight phantom-clip adapter; the seed is part of its fingerprint (and so of cache keys)."""
    import torch

    from cxr_robust.models.demo import build_phantom_clip, wrap_phantom_clip

    with torch.random.fork_rng(devices=[]):  # no change to the caller's global RNG state
        torch.manual_seed(seed)
        net = build_phantom_clip()
    model = wrap_phantom_clip(net.float().eval(), {"random_init_seed": seed, "factory": "tests.privacy_model:build"},
                              name=f"random-phantom-clip-s{seed}")
    model.baseline_row = None
    return model
