"""Pretrained encoders from any ``transformers`` checkpoint: a text encoder, an image encoder,
or both towers of a dual encoder (CLIP) from one checkpoint.

A checkpoint is a model-hub name (``"openai/clip-vit-base-patch32"``, ``"bert-base-uncased"``)
or a folder written by ``save_pretrained``. Everything comes through the Auto classes with the
checkpoint's own tokenizer and image processor, so any BERT, RoBERTa, MiniLM, ViT, CLIP... works:

    text = TextTower("bert-base-uncased")          # token ids -> (token features, mask)
    image = ImageTower("openai/clip-vit-base-patch32")  # pictures -> (patch features, mask)

A dual encoder's checkpoint holds both towers: ``TextTower`` takes its ``text_model`` and
``ImageTower`` its ``vision_model``. The image processor's settings (size, rescaling, mean and
standard deviation) are applied with tensor operations on the model's device, so pictures kept
as uint8 tensors are never round-tripped through PIL in a training loop.

Loading is offline when the checkpoint is a folder, when ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) is set, or with ``local_files_only=True``; a name that cannot be
found is an error that says what to do.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("model", "tokenizer", "image_processor")


def offline(checkpoint: str, local_files_only: bool | None = None) -> bool:
    """Whether to look only on this machine: a folder, the offline variables, or as asked."""
    if local_files_only is not None:
        return local_files_only
    return Path(checkpoint).expanduser().is_dir() or any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=8)
def _load(kind: str, checkpoint: str, local_files_only: bool):
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one bar per loaded file would flood a notebook
    auto = {"model": transformers.AutoModel, "tokenizer": transformers.AutoTokenizer,
            "image_processor": transformers.AutoImageProcessor}[kind]
    path = Path(checkpoint).expanduser()
    try:
        return auto.from_pretrained(str(path) if path.is_dir() else checkpoint, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        what = {"model": "config.json and the weights", "tokenizer": "the tokenizer's files (tokenizer_config.json, "
                "its vocabulary)", "image_processor": "preprocessor_config.json"}[kind]
        where = (f"the folder holds no such files ({what}: write them with save_pretrained)" if path.is_dir() else
                 "not a folder here, and not found in the local cache" if local_files_only else
                 "not a folder here, and the model hub could not give it")
        raise OSError(f"checkpoint {checkpoint!r} ({kind}): {where}. Pass a folder written by save_pretrained, or a "
                      f"model-hub name (e.g. 'openai/clip-vit-base-patch32', 'bert-base-uncased') on a machine with "
                      f"network access, or download it there first (huggingface-cli download NAME) and set "
                      f"HF_HUB_OFFLINE=1 here. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def load(kind: str, checkpoint: str, local_files_only: bool | None = None) -> Any:
    """The checkpoint's model (a fresh copy each call), tokenizer or image processor."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint).strip():
        raise ValueError(f"a checkpoint is a model-hub name or a folder, got {checkpoint!r}")
    # loading may initialise weights before reading them: the caller's random numbers must not depend on
    # whether this checkpoint was loaded before in this process (a model built twice with one seed is one model)
    with torch.random.fork_rng(devices=[]):
        loaded = _load(kind, str(checkpoint), offline(str(checkpoint), local_files_only))
    return copy.deepcopy(loaded) if kind == "model" else loaded  # each expert trains its own copy


def tower(model: nn.Module, side: str) -> nn.Module:
    """The ``"text"`` or ``"vision"`` tower of a dual encoder (CLIP's ``text_model`` and
    ``vision_model``); any other model is its own tower."""
    return getattr(model, f"{side}_model", None) or model


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.hidden_sizes[-1])  # ViT-like, or ConvNeXt-like


class TextTower(nn.Module):
    """A pretrained text encoder: token ids ``(B, L)`` -> ``((B, L, d) features, (B, L) mask of real tokens)``."""

    def __init__(self, checkpoint: str, pad_id: int, local_files_only: bool | None = None):
        super().__init__()
        self.checkpoint = str(checkpoint)
        self.model = tower(load("model", checkpoint, local_files_only), "text")
        self.pad_id = pad_id
        self.width = hidden_size(self.model)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != self.pad_id
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask

    def extra_repr(self) -> str:
        return f"checkpoint={self.checkpoint!r}"


def processor_settings(processor: Any) -> dict[str, Any]:
    """What a checkpoint's image processor does to a picture: its size, rescale factor, mean and std."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or processor.size
    get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
    side = get("height") or get("shortest_edge")
    width = get("width") or side
    if not side:
        raise ValueError(f"image processor {type(processor).__name__}: no size to resize to ({size})")
    rescale = processor.rescale_factor if getattr(processor, "do_rescale", True) else 1.0
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0, 0.0, 0.0]
    std = list(processor.image_std) if normalize else [1.0, 1.0, 1.0]
    return {"size": (int(side), int(width)), "rescale": float(rescale), "mean": mean, "std": std}


class ImageTower(nn.Module):
    """A pretrained image encoder: pictures ``(B, 3, H, W)`` (uint8 0-255, or floats 0-1) ->
    ``((B, N, d) patch or region features, (B, N) mask)``, preprocessed as the checkpoint's
    image processor does (resized to its size, rescaled, normalised)."""

    def __init__(self, checkpoint: str, local_files_only: bool | None = None):
        super().__init__()
        self.checkpoint = str(checkpoint)
        self.settings = processor_settings(load("image_processor", checkpoint, local_files_only))
        self.model = tower(load("model", checkpoint, local_files_only), "vision")
        self.register_buffer("mean", torch.tensor(self.settings["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.settings["std"]).view(1, 3, 1, 1), persistent=False)
        self.width = hidden_size(self.model)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The processor's ``pixel_values`` for ``image``, computed on its device."""
        # uint8 pictures are 0-255 as the processor's input; floats in [0, 1] are scaled to it first
        pixels = image.float() if image.dtype == torch.uint8 else image.float() * 255
        if tuple(pixels.shape[-2:]) != self.settings["size"]:
            pixels = F.interpolate(pixels, size=self.settings["size"], mode="bicubic", align_corners=False,
                                   antialias=True)
        return (pixels * self.settings["rescale"] - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=self.preprocess(image)).last_hidden_state
        if out.ndim == 4:  # a convolutional backbone: (B, d, h, w) cells as regions
            out = out.flatten(2).transpose(1, 2)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    def extra_repr(self) -> str:
        return f"checkpoint={self.checkpoint!r}, settings={self.settings}"
