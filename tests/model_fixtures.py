"""Helpers for the model tests: random-weight checkpoints written in each paper's published format.

The key names and shapes of those formats are in ``tests/fixtures/checkpoint_keys.json`` (a copy of the
reference manifest, produced by the authors' code under transformers 4.24). The helpers here convert an
in-memory model's state dict to those names with their **own** table (not the package's remapping code),
so a wrong rename in the package cannot be hidden by the same mistake made twice.

Nothing here downloads anything. The OmegaConf objects in CXR-CLIP's ``config`` are imitated with classes
that pickle under omegaconf's names and with omegaconf's state layout, so the package's reader meets the
same byte stream as a real checkpoint without omegaconf being installed.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import json
import os
import re
import shlex
import sys
import types
import typing
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

FIXTURES = Path(__file__).parent / "fixtures"

# transformers 5.x -> 4.x names inside a Swin block (MODELS.md section 0.2), written independently here.
SWIN_V5_TO_V4 = {
    "attention.q_proj.": "attention.self.query.",
    "attention.k_proj.": "attention.self.key.",
    "attention.v_proj.": "attention.self.value.",
    "attention.relative_position_bias.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_index": "attention.self.relative_position_index",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}

OPENAI_JIT_EXTRAS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}

VOCAB_WORDS = ["the", "heart", "size", "is", "normal", ".", ",", "no", "pneumo", "##thorax", "lung", "##s",
               "clear", "effusion", "there", "mild", "card", "##io", "##megaly", "focal", "consolidation",
               "left", "right", "pleural", "acute", "process", "stable", "chest", "tube"]


def manifest(fmt: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of one published format (see ``_about`` in the manifest for the names)."""
    data = json.loads((FIXTURES / "checkpoint_keys.json").read_text())
    return {k: tuple(v) for k, v in data[fmt].items()}


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def write_vocab(directory: Path, words: list[str] = VOCAB_WORDS) -> Path:
    """A small BERT ``vocab.txt`` (specials first, like BERT's) in ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory


def seeded(seed: int) -> None:
    """Seed torch's global generator before building a random model (tests only)."""
    torch.manual_seed(seed)


def randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every floating parameter and buffer fresh random values (and BN statistics non-trivial ones).

    Library initialisers leave some tensors constant (LayerNorm 1/0, biases 0), which would hide a
    swapped or dropped key; random values make every key matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # state_dict entries only: non-persistent buffers (CLIP's causal attn_mask) are not weights
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("logit_scale"):
                tensor.fill_(4.0)
            else:
                scale = 0.02 if tensor.ndim > 1 else 0.1
                base = 1.0 if re.search(r"(norm|LayerNorm|ln_|bn\d|downsample\.1)[^.]*\.weight$", name) else 0.0
                tensor.copy_(base + scale * torch.randn(tensor.shape, generator=gen))
    return module


# --------------------------------------------------------------------------------------------------
# Official-format state dicts

def to_v4_swin(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Rename transformers-5 Swin block keys under ``prefix`` to the 4.x names (the published checkpoints')."""
    block = re.compile("^(" + re.escape(prefix) + r"encoder\.layers\.\d+\.blocks\.\d+\.)(.*)$")
    out = {}
    for key, value in state.items():
        m = block.match(key)
        if m:
            for new, old in SWIN_V5_TO_V4.items():
                if m.group(2).startswith(new):
                    key = m.group(1) + old + m.group(2)[len(new):]
                    break
        out[key] = value
    return out


def official_hf_state(model: torch.nn.Module, *, swin_prefix: str | None, bert_prefix: str,
                      half: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict the authors' code would save (transformers 4.24 names and persistent buffers).

    Adds BERT's ``embeddings.position_ids`` and, for Swin, each block's ``relative_position_index``
    (persistent in 4.24), and renames Swin keys to 4.x names. Keys starting with any of ``half`` are
    stored as fp16 (published checkpoints may hold fp16 tensors).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    buffers = dict(model.named_buffers())
    state[bert_prefix + "embeddings.position_ids"] = buffers[bert_prefix + "embeddings.position_ids"].clone()
    if swin_prefix is not None:
        for name, buf in buffers.items():
            if name.startswith(swin_prefix) and name.endswith("relative_position_index"):
                side = int(round(buf.numel() ** 0.5))  # 4.x kept the (Wh*Ww, Wh*Ww) table unflattened
                state[name] = buf.clone().reshape(side, side)
        state = to_v4_swin(state, swin_prefix)
    return {k: (v.half() if v.is_floating_point() and k.startswith(half) else v) for k, v in state.items()}


def round_to_half_(module: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> torch.nn.Module:
    """Round floating tensors under ``prefixes`` through fp16, so an fp16 file holds exactly the same values."""
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_floating_point() and name.startswith(prefixes):
                tensor.copy_(tensor.half().float())
    return module


# --------------------------------------------------------------------------------------------------
# Writers

class _Holder(torch.nn.Module):
    """An empty module to hang parameters on, for building a TorchScript archive by key name."""


def write_openai_torchscript(state: dict[str, torch.Tensor], path: Path, *, with_extras: bool = True) -> Path:
    """A TorchScript archive whose state dict has ``state``'s keys in fp16, like OpenAI's ``ViT-B-32.pt``.

    Also carries OpenAI's ``input_resolution`` / ``context_length`` / ``vocab_size`` tensors.
    """
    import warnings

    root = _Holder()
    entries = dict(state)
    if with_extras:
        entries.update({k: torch.tensor(v) for k, v in OPENAI_JIT_EXTRAS.items()})
    for key, value in entries.items():
        *parents, leaf = key.split(".")
        node: torch.nn.Module = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        if value.is_floating_point():
            node.register_parameter(leaf, torch.nn.Parameter(value.detach().half().clone(), requires_grad=False))
        else:
            node.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))
    return path


def write_zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    """A plain (stored, uncompressed) zip such as MedCLIP's download."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    return path


# --------------------------------------------------------------------------------------------------
# OmegaConf imitation (CXR-CLIP config)

class _OmegaLike:
    """Pickles as ``NEWOBJ`` of an omegaconf class followed by ``BUILD`` with its state, as omegaconf does."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._fake_state = state

    def __reduce_ex__(self, protocol: int) -> tuple:
        return (copyreg.__newobj__, (type(self),), self._fake_state)


class DictConfig(_OmegaLike):
    pass


class ListConfig(_OmegaLike):
    pass


class AnyNode(_OmegaLike):
    pass


class Metadata(_OmegaLike):
    pass


class ContainerMetadata(_OmegaLike):
    pass


_FAKE_MODULES = {"omegaconf.dictconfig": DictConfig, "omegaconf.listconfig": ListConfig,
                 "omegaconf.nodes": AnyNode, "omegaconf.base": (Metadata, ContainerMetadata)}


@contextlib.contextmanager
def fake_omegaconf_modules() -> Iterator[None]:
    """Make the imitation classes picklable under omegaconf's module names, for the duration of a save."""
    saved = {name: sys.modules.get(name) for name in ("omegaconf", *_FAKE_MODULES)}
    originals = {}
    try:
        sys.modules["omegaconf"] = types.ModuleType("omegaconf")
        for modname, classes in _FAKE_MODULES.items():
            module = types.ModuleType(modname)
            for cls in classes if isinstance(classes, tuple) else (classes,):
                originals[cls] = (cls.__module__, cls.__qualname__)
                cls.__module__ = modname
                setattr(module, cls.__name__, cls)
            sys.modules[modname] = module
        yield
    finally:
        for cls, (mod, qual) in originals.items():
            cls.__module__, cls.__qualname__ = mod, qual
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _container_meta(key: Any, object_type: type) -> ContainerMetadata:
    return ContainerMetadata({"ref_type": typing.Any, "object_type": object_type, "optional": True, "key": key,
                              "flags": {}, "flags_root": False, "resolver_cache": collections.defaultdict(dict),
                              "key_type": int if object_type is list else typing.Any, "element_type": typing.Any})


def _node(value: Any, parent: Any, key: Any) -> Any:
    if isinstance(value, dict):
        node = DictConfig({"_metadata": _container_meta(key, dict), "_parent": parent, "_content": {}})
        node._fake_state["_content"] = {k: _node(v, node, k) for k, v in value.items()}
        return node
    if isinstance(value, list):
        node = ListConfig({"_metadata": _container_meta(key, list), "_parent": parent, "_content": []})
        node._fake_state["_content"] = [_node(v, node, i) for i, v in enumerate(value)]
        return node
    meta = Metadata({"ref_type": typing.Any, "object_type": None, "optional": True, "key": key, "flags": {},
                     "flags_root": False, "resolver_cache": collections.defaultdict(dict)})
    return AnyNode({"_metadata": meta, "_parent": parent, "_val": value})


def cxrclip_config_object(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as CXR-CLIP stores it: DictConfigs turned into dicts, lists left as ``ListConfig``.

    (cxrclip ``convert_dictconfig_to_dict`` recurses into DictConfig only, so every list keeps its
    OmegaConf parent chain, which reaches the whole original config.)
    """
    root = _node(config, None, None)

    def convert(node: Any) -> Any:
        if isinstance(node, DictConfig):
            return {k: convert(v) for k, v in node._fake_state["_content"].items()}
        if isinstance(node, AnyNode):
            return node._fake_state["_val"]
        return node  # ListConfig stays

    return convert(root)


def cxrclip_config(variant: str) -> dict[str, Any]:
    """A training config shaped like CXR-CLIP's ``configs/train.yaml`` after Hydra composition."""
    image_encoder = ({"source": "torchvision", "name": "resnet", "pretrained": True} if variant == "r50" else
                     {"source": "huggingface", "name": "microsoft/swin-tiny-patch4-window7-224", "pretrained": True,
                      "model_type": "swin"})
    return {
        "base": {"seed": 1234, "amp": True, "image_size": 224, "text_max_length": 256, "loss_best": "contrastive",
                 "data_frac": 1.0, "output": {"checkpoint": "./outputs/checkpoints/"}},
        "data_train": {"mimic_cxr": {"name": "mimic_cxr", "data_type": "imagetext",
                                      "data_path": ["datasets/mimic_cxr/train.csv"], "text_max_length": 256}},
        "tokenizer": {"source": "huggingface", "pretrained_model_name_or_path": "emilyalsentzer/Bio_ClinicalBERT",
                      "cache_dir": "huggingface/tokenizers"},
        "transform": {"train": {"Resize": {"size": 224}}, "valid": {"Resize": {"size": 224}, "CenterCrop": {"size": 224}}},
        "model": {"name": "clip_custom", "temperature": 0.07, "image_encoder": image_encoder,
                  "text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT",
                                   "pretrained": True, "gradient_checkpointing": False, "pooling": "eos",
                                   "cache_dir": "huggingface/", "trust_remote_code": True, "mlm_head": True},
                  "projection_head": {"name": "linear", "dropout": 0.1, "proj_dim": 512}},
        "optimizer": {"name": "adamw", "config": {"lr": 5e-5, "betas": [0.9, 0.999], "weight_decay": 1e-4}},
        "loss": {"cxr_clip": {"loss_ratio": 1.0}},
    }


def write_cxrclip_tar(state: dict[str, torch.Tensor], path: Path, *, config: dict[str, Any] | None,
                      extra: dict[str, Any] | None = None) -> Path:
    """A CXR-CLIP training checkpoint: ``torch.save`` dict with model, optimizer, scheduler, config, epoch."""
    payload: dict[str, Any] = {
        "model": state,
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-4,
                                        "amsgrad": False, "foreach": None, "params": [0]}]},
        "scheduler": {"tsteps": 15, "wsteps": 1, "base_lrs": [5e-5], "last_epoch": 10, "_step_count": 11,
                      "_last_lr": [4e-5], "lr_lambdas": [{}]},
        "epoch": 10,
        "train_loss": 0.25,
    }
    with fake_omegaconf_modules():
        payload["config"] = cxrclip_config_object(config) if config is not None else None
        payload.update(extra or {})
        torch.save(payload, path)
    return path


# --------------------------------------------------------------------------------------------------
# Malicious pickles

class EvilShell:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class EvilOpen:
    """Unpickling this creates MARKER with ``builtins.open`` (no shell needed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------------------------------
# Tampering with archives (for the "nothing in a weights file runs" tests)

def copy_zip_with(src: Path, dst: Path, transform: typing.Callable[[str, bytes], bytes | None]) -> Path:
    """Copy the zip ``src`` to ``dst`` passing each member through ``transform(name, data)``.

    ``transform`` returns the new bytes, or None to drop the member. Members are stored uncompressed,
    as torch writes them.
    """
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = transform(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def pickle_str(text: str) -> bytes:
    """The pickle opcode pushing ``text`` (BINUNICODE), for hand-built payloads."""
    raw = text.encode("utf-8")
    return b"X" + len(raw).to_bytes(4, "little") + raw


def pickle_call(module: str, name: str, *args: str | bool | int) -> bytes:
    """Opcodes that call ``module.name(*args)`` and drop the result (GLOBAL, MARK, args, TUPLE, REDUCE, POP).

    Spliced into a pickle right after its PROTO opcode, the call runs before anything else is read by an
    ordinary unpickler, and the rest of the stream is unchanged.
    """
    parts = [f"c{module}\n{name}\n".encode(), b"("]
    for arg in args:
        if isinstance(arg, bool):
            parts.append(b"\x88" if arg else b"\x89")
        elif isinstance(arg, int):
            parts.append(b"J" + arg.to_bytes(4, "little", signed=True))
        else:
            parts.append(pickle_str(arg))
    parts.append(b"tR0")
    return b"".join(parts)


def splice_after_proto(data: bytes, opcodes: bytes) -> bytes:
    """``data`` (a protocol-2+ pickle) with ``opcodes`` inserted right after its PROTO opcode."""
    if data[:1] != b"\x80":
        raise ValueError("not a protocol 2+ pickle")
    return data[:2] + opcodes + data[2:]


PAPER_ARCHITECTURES = ("clip", "cxr-repair", "medclip-vit", "medclip-resnet", "cxr-clip-swint", "cxr-clip-r50")
"""Registered models :func:`build_paper_model` can build with random weights."""


def build_paper_model(name: str, directory: Path, seed: int = 7, **options: Any) -> Any:
    """Registered model ``name`` loaded through the registry from random weights written in its published format.

    The checkpoint (and, for the BERT models, a synthetic vocabulary) is written under ``directory``;
    ``options`` are the model's factory options (e.g. CXR-CLIP's ``pre_resize``). Used by tests and benchmarks
    that need each paper architecture without its real weights; the per-model tests build their own, keeping
    the in-memory reference they compare against.
    """
    from cxr_robust.models import load_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name in ("clip", "cxr-repair"):
        from cxr_robust.models.clip_family import build_vit_b32_quickgelu

        state = round_to_half_(randomise_(build_vit_b32_quickgelu(), seed=seed)).state_dict()
        if name == "clip":
            weights = write_openai_torchscript(state, directory / "ViT-B-32.pt")
        else:  # CXR-RePaiR: torch.save of a CUDA fp16 state dict, no prefix
            weights = directory / "clip-imp-pretrained_128_6_after_4.pt"
            torch.save({k: (v.half() if v.ndim == 2 else v) for k, v in state.items()}, weights)
        return load_model(name, weights=weights, **options)
    vocab = write_vocab(directory)
    if name.startswith("medclip-"):
        from cxr_robust.models.medclip import MedClipModel

        variant = name.split("-", 1)[1]
        half = ("vision_model.projection_head.", "text_model.projection_head.")
        ref = round_to_half_(randomise_(MedClipModel(variant), seed=seed), half)
        official = official_hf_state(ref, swin_prefix="vision_model.model." if variant == "vit" else None,
                                     bert_prefix="text_model.model.", half=half)
        weights = directory / "pytorch_model.bin"
        torch.save(official, weights)
        return load_model(name, weights=weights, bert_vocab=vocab, **options)
    if name.startswith("cxr-clip-"):
        from cxr_robust.models.cxrclip import CxrClipModel

        variant = name.split("-", 2)[2]
        ref = round_to_half_(randomise_(CxrClipModel(variant), seed=seed), ("text_projection.",))
        official = official_hf_state(ref, swin_prefix="image_encoder.image_encoder." if variant == "swint" else None,
                                     bert_prefix="text_encoder.text_encoder.", half=("text_projection.",))
        weights = write_cxrclip_tar(official, directory / f"{variant}_mc.tar", config=cxrclip_config(variant))
        return load_model(name, weights=weights, bert_vocab=vocab, **options)
    raise ValueError(f"no random-weight builder for {name!r}; one of {', '.join(PAPER_ARCHITECTURES)}")
