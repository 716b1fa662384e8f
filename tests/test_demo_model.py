"""The shipped demo model: it loads through the strict open_clip path, retrieves far above chance, and its
training script runs (a smoke run, not a full training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, run_sweep
from cxr_robust.models import load_model
from cxr_robust.models.checkpoints import CheckpointError
from cxr_robust.models.demo import WEIGHTS_FILE, load_phantom_clip, weights_metadata
from cxr_robust.train_demo import encode_text_trimmed, main as train_main

from tests.fidelity import gate_vs_exact


def test_shipped_weights_are_small_and_documented() -> None:
    assert WEIGHTS_FILE.stat().st_size <= 20 * 1024 * 1024
    meta = weights_metadata()
    assert meta["recipe"]["steps"] >= 100 and meta["seed_used"] in meta["seeds_tried"]
    assert meta["final_loss"] < 5.0  # left the ln(batch) plateau


def test_shipped_model_beats_chance_by_far_on_a_small_eval_subset(tmp_path: Path) -> None:
    data = phantom("eval", num_studies=150)
    model = load_model("phantom-clip")
    result = run_sweep(model, data, SweepConfig(ratios=(0.0,), ks=(10,)), EmbeddingCache(tmp_path))
    chance = 10 / data.num_studies
    assert result.recall(0.0, 10) > 5 * chance, result.grid()
    emb = model.encode_texts(["FINDINGS: Heart size is normal. IMPRESSION: Normal."])
    assert torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)


def test_wrong_or_truncated_weights_give_a_clear_error(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(WEIGHTS_FILE.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="short.safetensors"):
        load_phantom_clip(short)
    with pytest.raises(CheckpointError, match="missing"):
        load_phantom_clip(tmp_path / "absent.safetensors")


def test_trimmed_text_encoding_equals_open_clip(tmp_path: Path) -> None:
    model = load_phantom_clip().model
    tokens = load_phantom_clip().tokenize(["No effusion.", "Large right pleural effusion and an 8 mm nodule."])
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), encode_text_trimmed(model, tokens))


@pytest.mark.slow
def test_training_script_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    rc = train_main(["--steps", "2", "--train-studies", "24", "--batch-size", "8", "--warmup", "1",
                     "--threads", "1", "--out", str(out), "--plateau-step", "1000"])
    assert rc == 0 and out.exists()
    assert weights_metadata(out)["recipe"]["steps"] == 2
    reloaded = load_phantom_clip(out)
    assert np.isfinite(reloaded.encode_texts(["No effusion."]).numpy()).all()


def test_the_gate_default_path_embeds_exactly_what_the_adapter_does(tmp_path: Path) -> None:
    """Full JPEG decoding by default; ``--cxr-draft-decode`` is the measured, inexact speed option (issue 19)."""
    model = load_model("phantom-clip")
    assert gate_vs_exact(model, tmp_path / "default", "phantom-clip") <= 1e-6
    assert gate_vs_exact(model, tmp_path / "draft", "phantom-clip", draft_decode=True) > 1e-3
