"""CLIP-SIM: cosine similarity between a CLIP image embedding and its prompt's text embedding.

The model is a transformers `CLIPModel` with its `CLIPProcessor`, from a local directory
(`from_pretrained(dir, local_files_only=True)`; e.g. openai/clip-vit-base-patch32 saved
beforehand). Nothing is downloaded.

Choices the paper leaves open: the score is the plain cosine of the projected embeddings,
averaged over images (the paper's 0.2807 is of that scale; CLIPScore's 2.5 * max(cos, 0)
and the x100 logit scale are not applied). Images go through the processor's own transform
(resize the short side to the model's size, centre crop), so a wide panorama is judged by its
centre square. Prompts longer than the text model's context are truncated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_clip(directory: str | os.PathLike):
    """(model, processor) from a local transformers directory, model in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: CLIP model directory not found")
    try:
        model = CLIPModel.from_pretrained(directory, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
    except Exception as e:
        raise ValueError(f"{directory}: cannot load a CLIPModel + CLIPProcessor "
                         f"({type(e).__name__}: {e})") from e
    return model.eval().requires_grad_(False), processor


def clip_weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files of a transformers model directory (what the result's sha256 covers)."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


@torch.no_grad()
def clip_similarities(model, processor, images: list[np.ndarray], prompts: list[str],
                      device: torch.device | str = "cpu") -> np.ndarray:
    """Cosine similarity of each uint8 RGB image [H, W, 3] with its prompt, as float64 [n]."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        return np.zeros(0, dtype=np.float64)
    max_len = int(model.config.text_config.max_position_embeddings)
    inputs = processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True,
                       truncation=True, max_length=max_len)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                pixel_values=inputs["pixel_values"])
    # CLIPModel's image_embeds / text_embeds are projected and L2-normalised already; normalise
    # again in float64 so the cosine does not depend on that detail.
    img = torch.nn.functional.normalize(out.image_embeds.double(), dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds.double(), dim=-1)
    return (img * txt).sum(dim=-1).cpu().numpy()
