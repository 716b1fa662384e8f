"""Does the gate's default path embed exactly what the adapter's exact path embeds? (issue 19, part 1)

Every adapter test module checks that its adapter reproduces the authors' embeddings when called on a fully
decoded image. :func:`gate_vs_exact` closes the remaining gap: it runs the *gate* on JPEG files (whose
decoding can be approximated) with the gate's default options, reads the clean-image embeddings the gate
computed back from its cache, and compares them with the adapter called directly on ``PIL.Image.open(...)``
fully decoded. The JPEGs' sides are neither 224 nor 512 and large enough that draft decoding would engage,
so a default that drafts (the old one) or pre-resizes differently shows up as a difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

JPEG_SIZES = ((1100, 1300), (1240, 1030), (1500, 1500), (1090, 1601))
"""(width, height) of the test films: every side > 2 x 512, none equal to 224 or 512."""


def write_jpeg_manifest(directory: Path, seed: int = 3) -> Path:
    """A manifest of smooth random films (one per study) written as JPEGs of :data:`JPEG_SIZES`."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["image_path,study_id,report"]
    for i, (w, h) in enumerate(JPEG_SIZES):
        # low-frequency structure plus noise: draft decoding's reduced-scale IDCT changes it visibly
        base = rng.integers(0, 256, (h // 50 + 1, w // 50 + 1), dtype=np.uint8)
        film = np.asarray(Image.fromarray(base, mode="L").resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        film = np.clip(film + rng.integers(-40, 41, film.shape), 0, 255).astype(np.uint8)
        Image.fromarray(film, mode="L").save(directory / f"film{i}.jpg", quality=90)
        rows.append(f"film{i}.jpg,s{i},Study {i}: heart size is normal. No pleural effusion.")
    manifest = directory / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def exact_embeddings(adapter: Any, manifest: Path) -> np.ndarray:
    """The adapter called directly: each JPEG fully decoded by PIL, preprocessed, encoded as one batch."""
    import torch
    from PIL import Image

    pixels = []
    for i in range(len(JPEG_SIZES)):
        with Image.open(manifest.parent / f"film{i}.jpg") as im:
            pixels.append(adapter.preprocess(im.convert("L")))
    with torch.inference_mode():
        return adapter.encode_images(torch.from_numpy(np.stack(pixels))).float().numpy()


_GIVEN: list[Any] = []


def given_adapter(weights: Any = None, **_: Any) -> Any:
    """A model factory (``tests.fidelity:given_adapter``) returning the adapter under test, so the gate need not
    load its weights again: the registry's loading is tested by each adapter's own module."""
    return _GIVEN[-1]


def gate_embeddings(name: str, weights: Path | None, manifest: Path, cache_dir: Path, **options: Any) -> np.ndarray:
    """Clean-image embeddings as the gate computes them for model ``name`` with default options (+ ``options``)."""
    from cxr_robust.gate import GateOptions, GateSession

    session = GateSession(GateOptions(models=(name,), dataset="manifest", manifest=str(manifest),
                                      weights={name: str(weights)} if weights else {}, ratios=(0.0,), ks=(1,),
                                      cache_dir=str(cache_dir), baselines_dir=str(cache_dir / "no-baselines"),
                                      summaries=False, allow_missing_baseline=True,
                                      **options))
    run = session.run(name)
    if run.error is not None:
        raise run.error
    entries = sorted((cache_dir / "image").glob("*.npz"))
    assert len(entries) == 1, f"expected one image entry (clean only), found {len(entries)}"
    with np.load(entries[0], allow_pickle=False) as npz:
        return npz["array"]


def gate_vs_exact(adapter: Any, tmp_path: Path, name: str | None = None, weights: Path | None = None,
                  **options: Any) -> float:
    """Largest absolute difference between the gate's clean embeddings and ``adapter``'s exact path.

    With ``name`` the gate loads registered model ``name`` from ``weights`` itself (to test that a model
    option reaches the model); without, it runs ``adapter`` as given.
    """
    manifest = write_jpeg_manifest(tmp_path / "films")
    if name is None:
        _GIVEN.append(adapter)
        try:
            got = gate_embeddings(f"{__name__}:given_adapter", None, manifest, tmp_path / "cache", **options)
        finally:
            _GIVEN.pop()
    else:
        got = gate_embeddings(name, weights, manifest, tmp_path / "cache", **options)
    return float(np.abs(got - exact_embeddings(adapter, manifest)).max())
