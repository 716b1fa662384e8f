"""Offline Bio_ClinicalBERT and Swin-T pieces shared by the MedCLIP and CXR-CLIP adapters.

Both papers build their text tower with ``from_pretrained("emilyalsentzer/Bio_ClinicalBERT")`` and their
Swin tower with ``from_pretrained("microsoft/swin-tiny-patch4-window7-224")``. Every weight is then
overwritten by the checkpoint, so here the architectures are built from configs written out in code and
nothing is fetched. The one thing a config cannot give is the wordpiece vocabulary: the user supplies
Bio_ClinicalBERT's ``vocab.txt`` (``bert_vocab=`` option, ``$CXR_ROBUST_BERT_VOCAB``, or an existing
Hugging Face cache of that repo), see :func:`find_bert_vocab`.

:class:`BertTowerAdapter` is the :class:`~cxr_robust.models.base.RetrievalModel` both families share:
geometry to ``uint8`` pixels, per-channel normalisation, wordpiece tokens into a two-tower model.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models.base import RetrievalModel, l2_normalise
from cxr_robust.models.checkpoints import sha256_file
from cxr_robust.models.openclip import Normalisation
from cxr_robust.models.registry import BERT_VOCAB_ENV, MissingWeightsError

if TYPE_CHECKING:
    import torch
    from PIL import Image

BIO_CLINICAL_BERT_REPO = "emilyalsentzer/Bio_ClinicalBERT"
BIO_CLINICAL_BERT_VOCAB_URL = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT/resolve/main/vocab.txt"
BIO_CLINICAL_BERT_VOCAB_SIZE = 28996

# The hub config.json of emilyalsentzer/Bio_ClinicalBERT (MODELS.md section 0.4).
BIO_CLINICAL_BERT_CONFIG: dict[str, Any] = dict(
    vocab_size=BIO_CLINICAL_BERT_VOCAB_SIZE, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
)

# microsoft/swin-tiny-patch4-window7-224, written out rather than relying on SwinConfig()'s defaults staying put.
SWIN_TINY_CONFIG: dict[str, Any] = dict(
    image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
    window_size=7, mlp_ratio=4.0, qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    drop_path_rate=0.1, hidden_act="gelu", use_absolute_embeddings=False, initializer_range=0.02,
    layer_norm_eps=1e-5,
)


def build_bert(*, add_pooling_layer: bool = True) -> "torch.nn.Module":
    """A randomly initialised Bio_ClinicalBERT-shaped ``BertModel`` (weights come from the checkpoint)."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**BIO_CLINICAL_BERT_CONFIG), add_pooling_layer=add_pooling_layer)


def build_swin_tiny() -> "torch.nn.Module":
    """A randomly initialised Swin-T ``SwinModel`` (patch 4, window 7, 224 px)."""
    from transformers import SwinConfig, SwinModel

    return SwinModel(SwinConfig(**SWIN_TINY_CONFIG))


# --------------------------------------------------------------------------------------------------
# Finding vocab.txt

def _hf_cache_roots() -> list[Path]:
    """Hugging Face hub cache directories, in the order huggingface_hub would pick them."""
    env = os.environ
    roots = [Path(env[v]) for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE") if env.get(v)]
    if env.get("HF_HOME"):
        roots.append(Path(env["HF_HOME"]) / "hub")
    if env.get("XDG_CACHE_HOME"):
        roots.append(Path(env["XDG_CACHE_HOME"]) / "huggingface" / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(p.expanduser() for p in roots))


def _from_hf_cache(root: Path) -> Path | None:
    """``vocab.txt`` of a cached Bio_ClinicalBERT snapshot under ``root`` (the ``main`` ref first)."""
    repo = root / ("models--" + BIO_CLINICAL_BERT_REPO.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip() / "vocab.txt"
        if candidate.is_file():
            return candidate
    found = sorted(snapshots.glob("*/vocab.txt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def _vocab_in(path: Path) -> Path | None:
    """``path`` itself if it is a file, ``path/vocab.txt`` if it is a directory holding one."""
    if path.is_file():
        return path
    if path.is_dir() and (path / "vocab.txt").is_file():
        return path / "vocab.txt"
    return None


def find_bert_vocab(explicit: str | Path | None = None, *, model_name: str = "this model") -> Path:
    """The Bio_ClinicalBERT ``vocab.txt`` to use, without touching the network.

    Looks at ``explicit`` (a file or a directory holding ``vocab.txt``), then ``$CXR_ROBUST_BERT_VOCAB``,
    then an existing Hugging Face cache of ``emilyalsentzer/Bio_ClinicalBERT``. A value that is given but
    wrong is an error (never silently replaced by another source).
    """
    for label, value in (("bert_vocab", explicit), (f"${BERT_VOCAB_ENV}", os.environ.get(BERT_VOCAB_ENV))):
        if value:
            found = _vocab_in(Path(value).expanduser())
            if found is None:
                raise MissingWeightsError(f"{model_name}: {label}={value} is neither a vocab.txt file nor a directory "
                                          f"holding vocab.txt (get it from {BIO_CLINICAL_BERT_VOCAB_URL})")
            return found
    searched = _hf_cache_roots()
    for root in searched:
        found = _from_hf_cache(root)
        if found is not None:
            return found
    raise MissingWeightsError(
        f"{model_name} needs the Bio_ClinicalBERT wordpiece vocabulary (vocab.txt, {BIO_CLINICAL_BERT_VOCAB_SIZE} "
        f"entries). Set the bert_vocab= option (pytest --cxr-bert-vocab) or ${BERT_VOCAB_ENV} to that file or to a "
        f"directory holding it; download it from {BIO_CLINICAL_BERT_VOCAB_URL}. No Hugging Face cache of "
        f"{BIO_CLINICAL_BERT_REPO} was found under: {', '.join(map(str, searched))}.")


# --------------------------------------------------------------------------------------------------
# Tokenizer

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class WordPieceTokenizer:
    """BERT wordpiece tokenizer from a local ``vocab.txt``, as ``AutoTokenizer`` builds it for Bio_ClinicalBERT.

    That hub repo has no ``tokenizer_config.json``, so the official code gets ``do_lower_case=True`` (which
    also strips accents) although the vocabulary is cased; this reproduces that. Built on the ``tokenizers``
    library directly: under transformers 5.x, ``BertTokenizer(vocab_file=...)`` was seen to ignore the file.

    ``pad_to_max_length`` pads every text to ``max_length`` (MedCLIP: its pooling averages over padding,
    so a fixed length keeps embeddings batch-independent); otherwise batches are padded to their longest
    text (CXR-CLIP, whose [SEP] pooling ignores padding).
    """

    def __init__(self, vocab_file: str | Path, *, max_length: int, pad_to_max_length: bool,
                 lowercase: bool = True) -> None:
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = Path(vocab_file)
        # vocab.txt is one token per line, the id is the line number (as transformers' load_vocab reads it)
        tokens = self.vocab_file.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        absent = [t for t in _SPECIAL_TOKENS if t not in vocab]
        if absent:
            raise ValueError(f"{self.vocab_file} lacks the BERT special token(s) {', '.join(absent)}: it is not a "
                             f"BERT vocab.txt (get Bio_ClinicalBERT's from {BIO_CLINICAL_BERT_VOCAB_URL})")
        self.vocab_size = len(tokens)
        self.max_length = int(max_length)
        self.pad_to_max_length = pad_to_max_length
        self.lowercase = lowercase
        self.pad_id = vocab["[PAD]"]
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        # strip_accents=None follows lowercase, as BertTokenizer(do_lower_case=True) does
        tok = BertWordPieceTokenizer(str(self.vocab_file), unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]",
                                     pad_token="[PAD]", clean_text=True, handle_chinese_chars=True,
                                     strip_accents=None, lowercase=lowercase, wordpieces_prefix="##")
        tok.enable_truncation(max_length=self.max_length)  # counts [CLS] and [SEP]: like truncation=True
        if pad_to_max_length:
            tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=self.max_length)
        else:
            tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        self._tok = tok
        self._vocab_sha256 = sha256_file(self.vocab_file)

    def __call__(self, texts: list[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(input_ids, attention_mask)``, both ``int64 (B, L)``."""
        import torch

        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}")
        if not texts:
            width = self.max_length if self.pad_to_max_length else 0
            return torch.zeros(0, width, dtype=torch.long), torch.zeros(0, width, dtype=torch.long)
        encodings = self._tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def tokens(self, text: str) -> list[str]:
        """The wordpieces of one text (with [CLS]/[SEP], without padding): for inspection and tests."""
        enc = self._tok.encode(text)
        return [t for t, m in zip(enc.tokens, enc.attention_mask) if m]

    def settings(self) -> dict[str, Any]:
        """What identifies this tokenizer's output (for fingerprints)."""
        return {"kind": "bert-wordpiece", "vocab_sha256": self._vocab_sha256, "vocab_size": self.vocab_size,
                "lowercase": self.lowercase, "strip_accents": self.lowercase, "max_length": self.max_length,
                "truncation": True, "padding": "max_length" if self.pad_to_max_length else "longest"}


def bio_clinical_bert_tokenizer(bert_vocab: str | Path | None, *, model_name: str, max_length: int,
                                pad_to_max_length: bool) -> WordPieceTokenizer:
    """The lower-casing Bio_ClinicalBERT tokenizer from the user's ``vocab.txt`` (see :func:`find_bert_vocab`).

    A vocabulary larger than the model's embedding table is an error (its ids would index past it); one of
    a different size than Bio_ClinicalBERT's 28996 gets a warning, since it is probably not that vocabulary.
    """
    import warnings

    path = find_bert_vocab(bert_vocab, model_name=model_name)
    try:
        tokenizer = WordPieceTokenizer(path, max_length=max_length, pad_to_max_length=pad_to_max_length)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise MissingWeightsError(f"{model_name}: cannot use {path} as the BERT vocabulary: {exc}") from None
    if tokenizer.vocab_size > BIO_CLINICAL_BERT_VOCAB_SIZE:
        raise MissingWeightsError(f"{model_name}: {path} has {tokenizer.vocab_size} entries, more than "
                                  f"Bio_ClinicalBERT's {BIO_CLINICAL_BERT_VOCAB_SIZE}; it is a different vocabulary "
                                  f"(get the right one from {BIO_CLINICAL_BERT_VOCAB_URL})")
    if tokenizer.vocab_size != BIO_CLINICAL_BERT_VOCAB_SIZE:
        warnings.warn(f"{model_name}: {path} has {tokenizer.vocab_size} entries, not Bio_ClinicalBERT's "
                      f"{BIO_CLINICAL_BERT_VOCAB_SIZE}: text embeddings will not match the published model",
                      UserWarning, stacklevel=3)
    return tokenizer


# --------------------------------------------------------------------------------------------------
# The adapter

class BertTowerAdapter(RetrievalModel):
    """A two-tower model with a BERT text encoder behind the :class:`RetrievalModel` interface.

    ``model`` provides ``encode_image(float (B, C, S, S)) -> (B, D)`` and
    ``encode_text(input_ids, attention_mask) -> (B, D)`` (unnormalised). ``geometry`` maps a PIL image to
    ``uint8 (S, S)``; ``geometry_params`` (JSON-able) says how, for fingerprints and pixel sharing.
    """

    def __init__(self, model: "torch.nn.Module", tokenizer: WordPieceTokenizer, *, name: str,
                 geometry: Callable[["Image.Image", int], np.ndarray], geometry_params: dict[str, Any],
                 input_size: int, input_channels: int, normalisation: Normalisation,
                 default_text_policy: TextPolicy, baseline_row: str | None, fingerprint_extra: dict[str, Any]) -> None:
        if len(normalisation.mean) != input_channels or len(normalisation.std) != input_channels:
            raise ValueError(f"{name}: normalisation has {len(normalisation.mean)} channel(s), input has {input_channels}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.geometry = geometry
        self.geometry_params = dict(geometry_params)
        self.input_size = input_size
        self.input_channels = input_channels
        self.normalisation = normalisation
        self.default_text_policy = default_text_policy
        self.baseline_row = baseline_row
        self.embed_dim = 512
        self._fingerprint_extra = dict(fingerprint_extra)

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """The family's geometry, as ``uint8 (C, S, S)``."""
        plane = self.geometry(image, self.input_size)
        if plane.shape != (self.input_size, self.input_size) or plane.dtype != np.uint8:
            raise ValueError(f"{self.name}: preprocessing gave {plane.dtype} {plane.shape}, "
                             f"expected uint8 {(self.input_size, self.input_size)}")
        return np.repeat(plane[None], self.input_channels, axis=0)

    def normalise(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """``uint8 (B, C, S, S)`` -> ``(x * scale - mean) / std`` per channel, float32."""
        return self.normalisation.apply(pixels)

    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """L2-normalised image embeddings of a ``uint8`` batch."""
        import torch

        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != self.input_channels:
            raise ValueError(f"{self.name}: expected uint8 (B, {self.input_channels}, S, S) pixels, got "
                             f"{pixels.dtype} {tuple(pixels.shape)}")
        with torch.inference_mode():
            return l2_normalise(self.model.encode_image(self.normalise(pixels.to(self.device))))

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """L2-normalised text embeddings."""
        import torch

        if not texts:
            return torch.zeros(0, self.embed_dim)
        ids, mask = self.tokenizer(texts)
        with torch.inference_mode():
            return l2_normalise(self.model.encode_text(ids.to(self.device), mask.to(self.device)))

    def fingerprint(self) -> dict[str, Any]:
        """Weights identity, preprocessing and tokenizer settings."""
        return {"adapter": type(self).__name__, "name": self.name, "input_size": self.input_size,
                "input_channels": self.input_channels,
                "geometry": {"function": self.geometry.__name__, **self.geometry_params},
                "normalisation": asdict(self.normalisation), "tokenizer": self.tokenizer.settings(),
                **self._fingerprint_extra}

    def preprocess_key(self) -> str:
        """Models with the same geometry (function and parameters) share decoded pixels."""
        params = ",".join(f"{k}={v}" for k, v in sorted(self.geometry_params.items()))
        return f"{self.geometry.__name__}({params}):{self.input_channels}x{self.input_size}"

    def torch_modules(self) -> list["torch.nn.Module"]:
        """The wrapped two-tower model."""
        return [self.model]
