"""Model protocol, registry and the built-in models (paper models + the shipped demo model).

Registering is cheap: each spec names its factory as a ``"module:attr"`` string, imported only when the
model is built.
"""

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models.registry import (
    BERT_VOCAB_ENV,
    WEIGHTS_DIR_ENV,
    MissingWeightsError,
    ModelSpec,
    UnknownModelError,
    available,
    get_spec,
    load_model,
    register,
)

PAPER_MODELS: tuple[str, ...] = ("clip", "cxr-repair", "medclip-vit", "cxr-clip-swint")
"""The registered models that Table 1's four rows correspond to, in the table's order."""

DEMO_MODEL = "phantom-clip"

CXRCLIP_PRE_RESIZE = 512
"""CXR-CLIP's shorter side before its ``Resize(224)``: the authors resized their datasets so offline
(docs/models.md, "Faithful by default"); a model option (``pre_resize``, ``None`` skips it)."""

_BUILTINS = [
    ModelSpec(
        name=DEMO_MODEL,
        factory="cxr_robust.models.demo:load_phantom_clip",
        description="small open_clip CLIP trained on the phantom train split; weights ship in the package",
        baseline_row="phantom-clip",
        builtin_weights=True,
        builtin_file="weights/phantom_clip.safetensors",
        weights_env="CXR_ROBUST_PHANTOM_CLIP_WEIGHTS",
    ),
    ModelSpec(
        name="clip",
        factory="cxr_robust.models.clip_family:load_openai_clip",
        description="OpenAI CLIP ViT-B/32 (QuickGELU), TorchScript archive ViT-B-32.pt",
        baseline_row="CLIP",
        weight_files=("ViT-B-32.pt",),
        weights_env="CXR_ROBUST_CLIP_WEIGHTS",
        source_url="https://openaipublic.azureedge.net/clip/models/"
                   "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    ),
    ModelSpec(
        name="cxr-repair",
        factory="cxr_robust.models.clip_family:load_cxr_repair",
        description="CXR-RePaiR: CLIP ViT-B/32 fine-tuned on MIMIC-CXR impressions",
        baseline_row="CXR-RePaiR",
        default_text_policy=TextPolicy.IMPRESSION,
        weight_files=("clip-imp-pretrained_128_6_after_4.pt",),
        weights_env="CXR_ROBUST_CXR_REPAIR_WEIGHTS",
        source_url="https://stanfordmedicine.box.com/s/dbebk0jr5651dj8x1cu6b6kqyuuvz3ml "
                   "(linked from https://github.com/rajpurkarlab/CXR-RePaiR)",
    ),
    ModelSpec(
        name="medclip-vit",
        factory="cxr_robust.models.medclip:load_medclip_vit",
        description="MedCLIP with Swin-T image tower (the paper's 'ViT-based MedCLIP')",
        baseline_row="MedCLIP",
        weight_files=("medclip-vit-pretrained.zip", "medclip-vit/pytorch_model.bin"),
        weights_env="CXR_ROBUST_MEDCLIP_VIT_WEIGHTS",
        source_url="https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
        needs_bert_vocab=True,
    ),
    ModelSpec(
        name="medclip-resnet",
        factory="cxr_robust.models.medclip:load_medclip_resnet",
        description="MedCLIP with ResNet-50 image tower",
        weight_files=("medclip-pretrained.zip", "medclip-resnet/pytorch_model.bin"),
        weights_env="CXR_ROBUST_MEDCLIP_RESNET_WEIGHTS",
        source_url="https://storage.googleapis.com/pytrial/medclip-pretrained.zip",
        needs_bert_vocab=True,
    ),
    ModelSpec(
        name="cxr-clip-swint",
        factory="cxr_robust.models.cxrclip:load_cxrclip_swint",
        description="CXR-CLIP with Swin-T image tower",
        baseline_row="CXR-CLIP",
        default_text_policy=TextPolicy.LONGEST,
        weight_files=("swint_mcc.tar", "swint_mc.tar", "swint_m.tar"),
        weights_env="CXR_ROBUST_CXR_CLIP_SWINT_WEIGHTS",
        options={"pre_resize": CXRCLIP_PRE_RESIZE},
        source_url="https://twg.kakaocdn.net/brainrepo/models/cxr-clip/a25ce760064591c899f67c97ed7790de/swint_mcc.tar "
                   "(all six checkpoints: README table of https://github.com/Soombit-ai/cxr-clip)",
        needs_bert_vocab=True,
    ),
    ModelSpec(
        name="cxr-clip-r50",
        factory="cxr_robust.models.cxrclip:load_cxrclip_r50",
        description="CXR-CLIP with ResNet-50 image tower",
        default_text_policy=TextPolicy.LONGEST,
        weight_files=("r50_mcc.tar", "r50_mc.tar", "r50_m.tar"),
        weights_env="CXR_ROBUST_CXR_CLIP_R50_WEIGHTS",
        options={"pre_resize": CXRCLIP_PRE_RESIZE},
        source_url="https://twg.kakaocdn.net/brainrepo/models/cxr-clip/de4b5e4ae2047c1fb7960ddcd8d861cb/r50_mcc.tar "
                   "(all six checkpoints: README table of https://github.com/Soombit-ai/cxr-clip)",
        needs_bert_vocab=True,
    ),
]

for _spec in _BUILTINS:
    register(_spec)

__all__ = [
    "BERT_VOCAB_ENV", "DEMO_MODEL", "PAPER_MODELS", "WEIGHTS_DIR_ENV", "MissingWeightsError", "ModelSpec",
    "UnknownModelError", "available", "get_spec", "load_model", "register",
]
