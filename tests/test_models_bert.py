"""Offline Bio_ClinicalBERT pieces: the wordpiece tokenizer, finding vocab.txt, the configs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cxr_robust.models import BERT_VOCAB_ENV, MissingWeightsError, load_model
from cxr_robust.models.bert import (
    BIO_CLINICAL_BERT_CONFIG,
    SWIN_TINY_CONFIG,
    WordPieceTokenizer,
    bio_clinical_bert_tokenizer,
    find_bert_vocab,
)

from tests import model_fixtures as mf

TEXT = "The HEART size is normal. No pneumothorax, lungs clear; Éffusion stable."


@pytest.fixture()
def vocab_dir(tmp_path: Path) -> Path:
    return mf.write_vocab(tmp_path / "vocab")


@pytest.fixture()
def no_vocab_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env var and an empty home/HF cache, so only what a test sets up can be found."""
    monkeypatch.delenv(BERT_VOCAB_ENV, raising=False)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# --------------------------------------------------------------------------------------------------
# Tokenizer

def test_wordpieces_lower_case_and_strip_accents(vocab_dir: Path) -> None:
    tok = WordPieceTokenizer(vocab_dir / "vocab.txt", max_length=77, pad_to_max_length=True)
    pieces = tok.tokens(TEXT)
    assert pieces == ["[CLS]", "the", "heart", "size", "is", "normal", ".", "no", "pneumo", "##thorax", ",", "lung",
                      "##s", "clear", "[UNK]", "effusion", "stable", ".", "[SEP]"]
    ids, mask = tok([TEXT])
    assert ids.shape == mask.shape == (1, 77)
    assert int(mask.sum()) == len(pieces) and ids[0, len(pieces):].eq(tok.pad_id).all()
    # the transformers-5 pitfall: a vocab silently ignored maps every word to [UNK]
    assert (ids[0, 1:len(pieces) - 1] == tok.unk_id).sum() == 1  # only ';'


def test_matches_transformers_bert_tokenizer(vocab_dir: Path) -> None:
    """Oracle: transformers' BertTokenizer loaded from the same directory, as the official code calls it."""
    from transformers import BertTokenizer

    reference = BertTokenizer.from_pretrained(str(vocab_dir), do_lower_case=True)
    texts = [TEXT, "", "mild cardiomegaly " * 60, "Left pleural effusion; chest tube."]
    for max_length, pad_to_max in [(77, True), (256, False), (8, False)]:
        ours = WordPieceTokenizer(vocab_dir / "vocab.txt", max_length=max_length, pad_to_max_length=pad_to_max)
        ids, mask = ours(texts)
        ref = reference(texts, truncation=True, max_length=max_length,
                        padding="max_length" if pad_to_max else "longest")
        assert ids.tolist() == ref["input_ids"] and mask.tolist() == ref["attention_mask"]


def test_truncation_keeps_sep_last(vocab_dir: Path) -> None:
    tok = WordPieceTokenizer(vocab_dir / "vocab.txt", max_length=77, pad_to_max_length=False)
    ids, mask = tok(["heart " * 200, "heart"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tok.cls_id and ids[0, -1] == tok.sep_id and mask[0].all()
    assert mask[1].sum() == 3 and ids[1, 2] == tok.sep_id


def test_tokenizer_rejects_non_bert_vocab(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"\[PAD\].*not a BERT vocab"):
        WordPieceTokenizer(path, max_length=77, pad_to_max_length=True)


def test_tokenizer_settings_identify_the_vocab(vocab_dir: Path, tmp_path: Path) -> None:
    a = WordPieceTokenizer(vocab_dir / "vocab.txt", max_length=77, pad_to_max_length=True).settings()
    other = mf.write_vocab(tmp_path / "other", [*mf.VOCAB_WORDS, "extra"])
    b = WordPieceTokenizer(other / "vocab.txt", max_length=77, pad_to_max_length=True).settings()
    assert a["vocab_sha256"] != b["vocab_sha256"] and a["padding"] == "max_length" and a["lowercase"]


def test_vocab_size_checks(vocab_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="not Bio_ClinicalBERT's 28996"):
        bio_clinical_bert_tokenizer(vocab_dir, model_name="medclip-vit", max_length=77, pad_to_max_length=True)
    big = mf.write_vocab(tmp_path / "big", [f"w{i}" for i in range(29000)])
    with pytest.raises(MissingWeightsError, match="more than Bio_ClinicalBERT's 28996"):
        bio_clinical_bert_tokenizer(big, model_name="medclip-vit", max_length=77, pad_to_max_length=True)
    exact = mf.write_vocab(tmp_path / "exact", [f"w{i}" for i in range(28996 - 6)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bio_clinical_bert_tokenizer(exact, model_name="medclip-vit", max_length=77, pad_to_max_length=True)


# --------------------------------------------------------------------------------------------------
# Finding vocab.txt

def test_explicit_file_or_directory(vocab_dir: Path, no_vocab_sources: Path) -> None:
    assert find_bert_vocab(vocab_dir) == vocab_dir / "vocab.txt"
    assert find_bert_vocab(vocab_dir / "vocab.txt") == vocab_dir / "vocab.txt"


def test_env_var(vocab_dir: Path, no_vocab_sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BERT_VOCAB_ENV, str(vocab_dir))
    assert find_bert_vocab(None) == vocab_dir / "vocab.txt"


def test_existing_hf_cache_is_found_offline(no_vocab_sources: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = no_vocab_sources / ".cache" / "huggingface" / "hub" / "models--emilyalsentzer--Bio_ClinicalBERT"
    mf.write_vocab(snapshots / "snapshots" / "abc123")
    (snapshots / "refs").mkdir()
    (snapshots / "refs" / "main").write_text("abc123")
    assert find_bert_vocab(None) == snapshots / "snapshots" / "abc123" / "vocab.txt"
    # HF_HOME moves the cache
    moved = tmp_path / "hf"
    mf.write_vocab(moved / "hub" / "models--emilyalsentzer--Bio_ClinicalBERT" / "snapshots" / "def")
    monkeypatch.setenv("HF_HOME", str(moved))
    assert find_bert_vocab(None).parent.name == "def"


def test_given_but_wrong_value_is_an_error(no_vocab_sources: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingWeightsError, match="bert_vocab=.*neither"):
        find_bert_vocab(tmp_path / "nothing-here")
    monkeypatch.setenv(BERT_VOCAB_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(MissingWeightsError, match=BERT_VOCAB_ENV):
        find_bert_vocab(None)


def test_missing_vocab_names_what_to_set(no_vocab_sources: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        find_bert_vocab(None, model_name="cxr-clip-swint")
    message = str(info.value)
    assert "cxr-clip-swint" in message and BERT_VOCAB_ENV in message and "bert_vocab=" in message
    assert "huggingface.co/emilyalsentzer/Bio_ClinicalBERT" in message


def test_registry_refuses_before_reading_weights(no_vocab_sources: Path, tmp_path: Path) -> None:
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match=BERT_VOCAB_ENV):
        load_model("medclip-vit", weights=weights)


# --------------------------------------------------------------------------------------------------
# Configs written in code

def test_configs_match_the_published_architectures() -> None:
    from transformers import BertConfig, SwinConfig

    bert = BertConfig(**BIO_CLINICAL_BERT_CONFIG)
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers, bert.max_position_embeddings) == (28996, 768, 12, 512)
    # microsoft/swin-tiny-patch4-window7-224 equals SwinConfig() defaults (MODELS.md 0.5)
    ours, default = SwinConfig(**SWIN_TINY_CONFIG), SwinConfig()
    for field in ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
                  "qkv_bias", "layer_norm_eps", "hidden_size", "hidden_act", "use_absolute_embeddings"):
        a, b = getattr(ours, field), getattr(default, field)
        assert (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b), field
    assert ours.hidden_size == 768
