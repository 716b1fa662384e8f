"""``cxr-robust models`` reads in a 100-column terminal: a short row per model, then wrapped detail lines that
still say whether its weights are found, where they are, or where to put them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cxr_robust.cli import EXIT_OK, EXIT_USAGE, main
from cxr_robust.models import available, get_spec

pytestmark = pytest.mark.usefixtures("clean_cxr_env")  # tests/conftest.py


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hugging Face cache holding Bio_ClinicalBERT: the vocabulary is missing unless a test gives one."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def listing(capsys: pytest.CaptureFixture[str], *args: str, code: int = EXIT_OK) -> str:
    assert main(["models", "--no-pyproject", *args]) == code
    return capsys.readouterr().out


def rows(out: str) -> dict[str, str]:
    """Model name -> its row's weights state (the rows are the unindented lines naming a model)."""
    names = set(available())
    return {line.split()[0]: line.split(None, 3)[3] for line in out.splitlines()
            if line and not line.startswith(" ") and line.split()[0] in names}


def flat(out: str) -> str:
    """The output with line breaks and indents folded into single spaces (wrapping undone)."""
    return " ".join(out.split())


@pytest.mark.parametrize("columns", [100, 80])
def test_every_line_fits_the_terminal_and_the_key_facts_stay(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    from cxr_robust.models.demo import WEIGHTS_FILE

    monkeypatch.setenv("COLUMNS", str(columns))
    out = listing(capsys, "--project", str(tmp_path))
    too_long = [line for line in out.splitlines() if len(line) > columns]
    assert not too_long, too_long
    states = rows(out)
    assert set(states) == set(available())  # one row per registered model
    assert states["phantom-clip"] == "found" and str(WEIGHTS_FILE) in re.sub(r"\n +", "", out)
    text = flat(out)
    for name in available():
        spec = get_spec(name)
        if spec.builtin_weights:
            continue
        assert states[name] == "NOT FOUND"
        # where to put it: the file names, the folder option and the per-model options
        assert f"put {' or '.join(spec.weight_files)} in --cxr-weights-dir DIR" in text, name
        assert f"--cxr-weights {name}=PATH, or set ${spec.weights_env}" in text, name
    assert text.count("Bio_ClinicalBERT's vocab.txt (MedCLIP, CXR-CLIP): pass --cxr-bert-vocab PATH") == 1
    assert "published at https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip" in text


def test_the_old_rows_were_too_long_for_a_terminal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--json keeps every reason whole (what the table used to print on one 300-800 character line)."""
    data = json.loads(listing(capsys, "--project", str(tmp_path), "--json"))
    by_name = {r["name"]: r for r in data}
    assert len(by_name["cxr-clip-swint"]["reason"]) > 300 and by_name["cxr-clip-swint"]["vocab_missing"]
    assert by_name["clip"]["weights_missing"] and by_name["clip"]["source_url"].startswith("https://")
    assert by_name["clip"]["weight_files"] == ["ViT-B-32.pt"]


def test_found_weights_and_vocab_are_listed_with_their_paths(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "ViT-B-32.pt").write_bytes(b"x")
    (weights / "swint_mcc.tar").write_bytes(b"x")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n")
    out = listing(capsys, "--project", str(tmp_path), "--weights-dir", str(weights), "--bert-vocab", str(vocab))
    assert all(len(line) <= 100 for line in out.splitlines())
    states = rows(out)
    assert states["clip"] == states["cxr-clip-swint"] == "found" and states["cxr-repair"] == "NOT FOUND"
    text = flat(out)
    assert f"{weights / 'ViT-B-32.pt'} (weights dir {weights})" in text and f"vocab: {vocab}" in text
    assert "pass --cxr-bert-vocab PATH" not in text  # the vocabulary is found: no note about it


def test_a_wrong_path_is_shown_and_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    absent = tmp_path / "absent.pt"
    assert main(["models", "--no-pyproject", "--project", str(tmp_path), "--weights", f"clip={absent}"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert rows(captured.out)["clip"] == "WRONG PATH"
    assert all(len(line) <= 100 for line in captured.out.splitlines())
    assert f"{absent} does not exist" in flat(captured.out) and f"{absent} does not exist" in captured.err
