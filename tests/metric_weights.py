"""Random metric networks saved in their public file formats (what users download, made here tiny or random).

Inception-v3 as torchvision's state dict (1000 classes, AuxLogits) and pytorch-fid's (1008 classes,
FID blocks), I3D as pytorch-i3d's `rgb_imagenet.pt` state dict, and CLIP as a transformers directory
(save_pretrained + vocab.json/merges.txt). The networks are the real architectures with random
weights; BatchNorm statistics are calibrated on random input so that features are of order one
(plain random init shrinks them towards zero). tests/conftest.py makes them once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.evaluation.metrics.i3d import InceptionI3d
from pipeline.evaluation.metrics.inception import InceptionFeatures, build_inception3
from pipeline.formats.text_tokenizer import _byte_symbols

SMALL = 75  # Inception-v3's smallest input


def calibrate_bn(module, run):
    """Set every BatchNorm's running statistics to those of one random batch."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    module.train()
    with torch.no_grad():
        run()
    module.eval()


def random_inception(num_classes, aux, fid_blocks):
    torch.manual_seed(0)
    net = build_inception3(num_classes, aux_logits=aux, fid_blocks=fid_blocks)
    feats = InceptionFeatures(net, "calibration", input_size=SMALL)
    calibrate_bn(net, lambda: feats._trunk(torch.rand(4, 3, SMALL, SMALL) * 2 - 1))
    return net


def write_weights(d: Path) -> Path:
    """pt_inception-fid.pth, inception_v3_google.pth and rgb_imagenet.pt in folder `d`."""
    torch.save(random_inception(1008, aux=False, fid_blocks=True).state_dict(), d / "pt_inception-fid.pth")
    torch.save(random_inception(1000, aux=True, fid_blocks=False).state_dict(), d / "inception_v3_google.pth")
    torch.manual_seed(1)
    i3d = InceptionI3d()
    calibrate_bn(i3d, lambda: i3d(torch.rand(2, 3, 8, 32, 32) * 2 - 1))
    torch.save(i3d.state_dict(), d / "rgb_imagenet.pt")
    return d


def write_clip(d: Path) -> Path:
    """A tiny random CLIP as a transformers directory in folder `d`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    chars = _byte_symbols()  # the byte-level BPE alphabet, as CLIP's tokenizer files use it
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"gr": 512, "green</w>": 513, "<|startoftext|>": 514, "<|endoftext|>": 515})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\ng r\n")
    special = {"bos_token_id": 514, "eos_token_id": 515, "pad_token_id": 515}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(2)
    CLIPModel(config).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d
