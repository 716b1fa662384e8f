"""Safe checkpoint reading: malicious, truncated and wrong files; OmegaConf stand-ins; key remapping.

Everything here uses small files, so the module runs in a few seconds.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from cxr_robust.models import MissingWeightsError, load_model
from cxr_robust.models.checkpoints import (
    CheckpointError,
    check_checkpoint_family,
    guess_checkpoint_format,
    load_state_strict,
    load_torch_file,
    omegaconf_to_plain,
    read_training_checkpoint,
    reconcile_derived_buffers,
    remap_swin_keys,
    unwrap_state_dict,
    weights_sha256,
)

from tests import model_fixtures as mf

pytestmark = pytest.mark.filterwarnings("ignore:.*entries, not Bio_ClinicalBERT:UserWarning")

PAPER_VARIANTS = ["clip", "cxr-repair", "medclip-vit", "medclip-resnet", "cxr-clip-swint", "cxr-clip-r50"]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.write_vocab(tmp_path_factory.mktemp("vocab"))


# --------------------------------------------------------------------------------------------------
# Malicious files: refused, nothing executed

def _evil_files(tmp: Path, marker: Path) -> dict[str, Path]:
    """The same payload (create ``marker``) hidden in each container format the readers accept."""
    files = {}
    for proto in (2, 4):
        files[f"raw-pickle-p{proto}"] = tmp / f"evil_p{proto}.pt"
        files[f"raw-pickle-p{proto}"].write_bytes(pickle.dumps({"w": mf.EvilShell(marker)}, protocol=proto))
    files["torch-zip"] = tmp / "evil_zip.pt"
    torch.save({"visual.proj": torch.zeros(2), "x": mf.EvilShell(marker)}, files["torch-zip"])
    files["torch-zip-open"] = tmp / "evil_open.bin"
    torch.save({"model": mf.EvilOpen(marker)}, files["torch-zip-open"])
    files["zip-member"] = mf.write_zip(tmp / "evil.zip", {"medclip-vit/pytorch_model.bin": files["torch-zip"]})
    # a TorchScript-looking archive whose data.pkl carries the payload
    genuine = mf.write_openai_torchscript({"visual.proj": torch.zeros(2, 2)}, tmp / "genuine.pt")
    files["torchscript"] = tmp / "ViT-B-32-evil.pt"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(files["torchscript"], "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):
                data = pickle.dumps(mf.EvilShell(marker), protocol=2)
            dst.writestr(name, data)
    files["cxrclip-config"] = mf.write_cxrclip_tar({"logit_scale": torch.zeros(())}, tmp / "evil_cfg.tar",
                                                   config=None, extra={"config": {"x": mf.EvilShell(marker)}})
    return files


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Sanity check of the test itself: an ordinary unpickler does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(mf.EvilOpen(marker)))
    assert marker.exists()


@pytest.mark.parametrize("model", PAPER_VARIANTS)
def test_malicious_pickles_are_refused_without_running(model: str, tmp_path: Path, vocab_dir: Path) -> None:
    marker = tmp_path / "PWNED"
    for kind, path in _evil_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError) as info:
            load_model(model, weights=path, bert_vocab=vocab_dir)
        message = str(info.value)
        assert model in message and path.name in message, (kind, message)
        assert not marker.exists(), f"{kind}: the payload ran"
    assert not marker.exists()


def test_refusal_names_the_global_and_says_nothing_ran(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"x": mf.EvilShell(marker)}, path)
    with pytest.raises(CheckpointError, match=r"(posix|os)\.system.*Nothing in it was executed"):
        load_torch_file(path, model_name="clip")
    assert not marker.exists()


def test_unknown_omegaconf_class_is_refused(tmp_path: Path) -> None:
    """Only the omegaconf names a YAML config uses have stand-ins; anything else is refused."""

    class EnumNode(mf._OmegaLike):
        pass

    EnumNode.__qualname__ = "EnumNode"
    mf._FAKE_MODULES["omegaconf.nodes"] = (mf.AnyNode, EnumNode)
    try:
        path = mf.write_cxrclip_tar({"logit_scale": torch.zeros(())}, tmp_path / "enum.tar", config=None,
                                    extra={"config": {"mode": EnumNode({"_val": 1})}})
    finally:
        mf._FAKE_MODULES["omegaconf.nodes"] = mf.AnyNode
    with pytest.raises(CheckpointError, match="omegaconf.nodes.EnumNode"):
        read_training_checkpoint(path, model_name="cxr-clip-swint")


# --------------------------------------------------------------------------------------------------
# Damaged and wrong files

@pytest.fixture()
def good_zip(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.save({"visual.proj": torch.randn(64, 32), "logit_scale": torch.zeros(())}, path)
    return path


@pytest.mark.parametrize("model", PAPER_VARIANTS)
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_files_name_file_model_and_remedy(model: str, damage: str, good_zip: Path, tmp_path: Path,
                                                  vocab_dir: Path) -> None:
    path = tmp_path / f"{damage}.bin"
    data = good_zip.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"<html>404</html>\n" * 20}[damage])
    with pytest.raises(CheckpointError) as info:
        load_model(model, weights=path, bert_vocab=vocab_dir)
    message = str(info.value)
    assert path.name in message and model in message
    assert "download" in message  # says what to do
    if damage == "truncated":
        assert "truncated" in message


def test_truncated_zip_member(tmp_path: Path, good_zip: Path) -> None:
    zpath = mf.write_zip(tmp_path / "m.zip", {"medclip/pytorch_model.bin": good_zip})
    data = zpath.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[:-200])  # central directory gone: not a readable zip any more
    with pytest.raises(CheckpointError, match="cut.zip"):
        load_torch_file(cut, model_name="medclip-vit")


def test_missing_weights_file_is_reported_by_the_registry(tmp_path: Path, vocab_dir: Path) -> None:
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_model("cxr-clip-r50", weights=tmp_path / "nope.tar", bert_vocab=vocab_dir)


def _signature_state(fmt: str) -> dict[str, torch.Tensor]:
    """A few keys of a published format (enough to be recognised), small tensors."""
    keys = list(mf.manifest(fmt))
    return {k: torch.zeros(1) for k in keys}


@pytest.mark.parametrize(("model", "fmt", "other"), [
    ("cxr-clip-swint", "medclip_vit_pytorch_model_bin", "medclip-vit"),
    ("cxr-clip-r50", "cxrclip_swint_tar_model", "cxr-clip-swint"),
    ("medclip-vit", "clip_vit_b32_openai_state_dict", "clip"),
    ("medclip-resnet", "medclip_vit_pytorch_model_bin", "medclip-vit"),
    ("clip", "medclip_resnet_pytorch_model_bin", "medclip-resnet"),
    ("cxr-repair", "cxrclip_r50_tar_model", "cxr-clip-r50"),
])
def test_wrong_model_file_is_recognised(model: str, fmt: str, other: str, tmp_path: Path, vocab_dir: Path) -> None:
    path = tmp_path / "file.bin"
    torch.save(_signature_state(fmt), path)
    if fmt.startswith("medclip"):  # as downloaded: inside the zip
        path = mf.write_zip(tmp_path / "medclip-pretrained.zip", {"pretrained/pytorch_model.bin": path})
    with pytest.raises(CheckpointError) as info:
        load_model(model, weights=path, bert_vocab=vocab_dir)
    message = str(info.value)
    assert path.name in message and repr(other) in message and model in message


def test_strict_loading_lists_missing_and_unexpected_keys() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = dict(module.state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(module, state, model_name="m", source="f.pt")
    text = str(info.value)
    assert "1 missing key(s): 1.bias" in text and "1 unexpected key(s): 2.weight" in text
    assert "0.weight: file (5, 5) vs model (3, 2)" in text and "f.pt" in text


def test_fp16_tensors_are_accepted() -> None:
    module = torch.nn.Linear(4, 2)
    half = {k: (torch.randn_like(v) * 3).half() for k, v in module.state_dict().items()}
    load_state_strict(module, half, model_name="m", source="f.pt")
    assert module.weight.dtype == torch.float32
    assert torch.equal(module.weight, half["weight"].float())


# --------------------------------------------------------------------------------------------------
# Containers

def test_unwrap_state_dict_variants() -> None:
    state = {"a.weight": torch.zeros(2), "b": torch.ones(1)}
    assert unwrap_state_dict(state, model_name="m", source="f") == state
    for wrapper in ("state_dict", "model", "model_state_dict"):
        got = unwrap_state_dict({wrapper: {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
                                model_name="m", source="f")
        assert set(got) == set(state)
    with pytest.raises(CheckpointError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3}, model_name="m", source="f")
    with pytest.raises(CheckpointError, match="list"):
        unwrap_state_dict([1, 2], model_name="m", source="f")


def test_zip_and_directory_members(tmp_path: Path, good_zip: Path) -> None:
    expected = torch.load(good_zip, weights_only=True)
    zpath = mf.write_zip(tmp_path / "medclip-vit-pretrained.zip",
                         {"medclip-vit/pytorch_model.bin": good_zip, "medclip-vit/readme.txt": b"hi"})
    got = load_torch_file(zpath, model_name="medclip-vit")
    assert set(got) == set(expected) and torch.equal(got["visual.proj"], expected["visual.proj"])
    folder = tmp_path / "unzipped" / "medclip-vit"
    folder.mkdir(parents=True)
    (folder / "pytorch_model.bin").write_bytes(good_zip.read_bytes())
    assert set(load_torch_file(folder.parent, model_name="medclip-vit")) == set(expected)
    two = mf.write_zip(tmp_path / "two.zip", {"a/pytorch_model.bin": good_zip, "b/pytorch_model.bin": good_zip})
    with pytest.raises(CheckpointError, match="2 members"):
        load_torch_file(two, model_name="medclip-vit")


def test_torchscript_archive_gives_its_state_dict(tmp_path: Path) -> None:
    state = {"visual.proj": torch.randn(4, 3), "transformer.resblocks.0.attn.in_proj_weight": torch.randn(6, 2)}
    path = mf.write_openai_torchscript(state, tmp_path / "ViT-B-32.pt")
    got = load_torch_file(path, model_name="clip")
    assert got["visual.proj"].dtype == torch.float16
    assert torch.equal(got["visual.proj"], state["visual.proj"].half())
    assert int(got["vocab_size"]) == 49408


def test_weights_sha256_is_cached_per_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    first = weights_sha256(path)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert weights_sha256(path) == first
    path.write_bytes(b"abcd")
    os.utime(path, ns=(10**18, 10**18))
    assert weights_sha256(path) != first


# --------------------------------------------------------------------------------------------------
# OmegaConf config (CXR-CLIP)

def test_cxrclip_config_becomes_plain_python(tmp_path: Path) -> None:
    state = {"image_encoder.resnet.conv1.weight": torch.randn(2, 2)}
    config = mf.cxrclip_config("r50")
    path = mf.write_cxrclip_tar(state, tmp_path / "r50_m.tar", config=config)
    assert b"omegaconf.listconfig" in zipfile.ZipFile(path).read("r50_m/data.pkl")  # the real thing's layout
    imported_before = "omegaconf" in sys.modules
    got_state, got_config = read_training_checkpoint(path, model_name="cxr-clip-r50")
    assert torch.equal(got_state["image_encoder.resnet.conv1.weight"], state["image_encoder.resnet.conv1.weight"])
    assert got_config == config
    assert type(got_config["optimizer"]["config"]["betas"]) is list
    assert ("omegaconf" in sys.modules) == imported_before  # reading it imported nothing


def test_real_omegaconf_pickle_is_read_the_same_way(tmp_path: Path) -> None:
    """With omegaconf installed, a genuine ListConfig/DictConfig pickle converts the same way."""
    omegaconf = pytest.importorskip("omegaconf")
    config = mf.cxrclip_config("swint")
    cfg = omegaconf.OmegaConf.create(config)

    def convert(c: object) -> object:  # cxrclip's convert_dictconfig_to_dict: lists stay ListConfig
        return {k: convert(v) for k, v in c.items()} if isinstance(c, omegaconf.DictConfig) else c

    path = tmp_path / "swint_m.tar"
    torch.save({"model": {"logit_scale": torch.zeros(())}, "config": convert(cfg)}, path)
    assert read_training_checkpoint(path, model_name="cxr-clip-swint")[1] == config


def test_omegaconf_to_plain_passes_plain_values_through() -> None:
    value = {"a": [1, (2, 3)], "b": None, "c": "x"}
    assert omegaconf_to_plain(value) == value


# --------------------------------------------------------------------------------------------------
# Key remapping

SWIN_V4 = {
    "p.encoder.layers.0.blocks.1.attention.self.query.weight": "p.encoder.layers.0.blocks.1.attention.q_proj.weight",
    "p.encoder.layers.0.blocks.1.attention.self.key.bias": "p.encoder.layers.0.blocks.1.attention.k_proj.bias",
    "p.encoder.layers.0.blocks.1.attention.self.value.weight": "p.encoder.layers.0.blocks.1.attention.v_proj.weight",
    "p.encoder.layers.2.blocks.5.attention.output.dense.weight": "p.encoder.layers.2.blocks.5.attention.o_proj.weight",
    "p.encoder.layers.2.blocks.5.output.dense.bias": "p.encoder.layers.2.blocks.5.mlp.fc2.bias",
    "p.encoder.layers.3.blocks.0.intermediate.dense.weight": "p.encoder.layers.3.blocks.0.mlp.fc1.weight",
    "p.encoder.layers.3.blocks.0.attention.self.relative_position_bias_table":
        "p.encoder.layers.3.blocks.0.attention.relative_position_bias.relative_position_bias_table",
    "p.encoder.layers.1.downsample.reduction.weight": "p.encoder.layers.1.downsample.reduction.weight",
    "p.layernorm.weight": "p.layernorm.weight",
    # BERT keys share names with Swin's 4.x ones and must never be touched
    "t.encoder.layer.0.attention.output.dense.weight": "t.encoder.layer.0.attention.output.dense.weight",
    "t.encoder.layer.0.output.dense.weight": "t.encoder.layer.0.output.dense.weight",
    "t.encoder.layer.0.attention.self.query.weight": "t.encoder.layer.0.attention.self.query.weight",
}


def test_swin_remap_both_directions() -> None:
    v4 = {k: torch.tensor(float(i)) for i, k in enumerate(SWIN_V4)}
    v5 = remap_swin_keys(v4, prefix="p.", style="v5")
    assert {SWIN_V4[k]: v for k, v in v4.items()} == v5
    assert remap_swin_keys(v5, prefix="p.", style="v4") == v4
    assert remap_swin_keys(v5, prefix="p.", style="v5") == v5  # already in the target style
    with pytest.raises(ValueError):
        remap_swin_keys(v4, prefix="p.", style="v6")


def test_derived_buffers_are_checked_and_dropped() -> None:
    class WithIndex(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))
            self.register_buffer("position_ids", torch.arange(6), persistent=False)

    module = WithIndex()
    kept, ignore = reconcile_derived_buffers(module, {"w": torch.ones(2), "position_ids": torch.arange(6).view(2, 3)},
                                             model_name="m", source="f")
    assert set(kept) == {"w"} and ignore == []
    with pytest.raises(CheckpointError, match="position_ids"):
        reconcile_derived_buffers(module, {"w": torch.ones(2), "position_ids": torch.arange(6) + 1},
                                  model_name="m", source="f")


def test_format_guess_and_family_check() -> None:
    for fmt, model in [("clip_vit_b32_openai_state_dict", "'clip'"), ("medclip_vit_pytorch_model_bin", "'medclip-vit'"),
                       ("medclip_resnet_pytorch_model_bin", "'medclip-resnet'"),
                       ("cxrclip_swint_tar_model", "'cxr-clip-swint'"), ("cxrclip_r50_tar_model", "'cxr-clip-r50'")]:
        guess = guess_checkpoint_format(mf.manifest(fmt))
        assert guess is not None and model in guess
    assert guess_checkpoint_format(["foo.weight"]) is None
    check_checkpoint_family(mf.manifest("clip_vit_b32_openai_state_dict"), model_name="cxr-repair", source="f",
                            advice="x")  # same format: fine
    with pytest.raises(CheckpointError, match="medclip-vit"):
        check_checkpoint_family(mf.manifest("medclip_vit_pytorch_model_bin"), model_name="cxr-clip-swint",
                                source="f", advice="x")


def test_in_memory_buffer_is_not_a_file(tmp_path: Path) -> None:
    """A BytesIO source reports its label, not a size, on failure."""
    from cxr_robust.models.checkpoints import _torch_load

    with pytest.raises(CheckpointError, match="label!member"):
        _torch_load(io.BytesIO(b"not a checkpoint"), label="label!member", model_name="m", advice="x", mmap=False)
