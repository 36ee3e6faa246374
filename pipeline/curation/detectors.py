"""Mask R-CNN detectors for the object filter (stage 20), loaded from the real weight formats by path.

torchvision's `maskrcnn_resnet50_fpn` / `_v2` built without downloads and filled from a local state dict
(`torch.load(..., weights_only=True)`), or detectron2's model from its YAML config and a `.pth` state dict.
Both answer `detect(frames)` with (score, class name, mask area) per detection per frame; the rule that
turns detections into a keep/drop decision lives in pipeline.curation.object_filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError

Detection = tuple[float, str, float]  # (score, class name, mask area as a fraction of the frame)


def load_state_dict(path: Path) -> dict:
    """A tensor state dict from a .pth file, read without full pickle; errors name the file."""
    import torch

    if not path.is_file():
        raise ConfigError(f"Mask R-CNN weights not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise ConfigError(f"{path}: not a loadable tensor state dict with weights_only=True ({type(e).__name__}: "
                          f"{e}); detectron2 .pkl model-zoo files must be converted to a .pth state dict") from e
    for key in ("model", "state_dict"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


class TorchvisionMaskRCNN:
    """torchvision Mask R-CNN from a local state dict; `detect` gives (score, class, mask area) per frame."""

    def __init__(self, architecture: str, weights: Path, device, *, num_classes: int = 91, min_size: int = 800,
                 max_size: int = 1333, score_floor: float = 0.05, max_detections: int = 100, proposals: int = 1000):
        import torch
        from torchvision.models import detection

        build = getattr(detection, architecture)
        model = build(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
                      max_size=max_size, box_score_thresh=score_floor, box_detections_per_img=max_detections,
                      rpn_post_nms_top_n_test=proposals, rpn_pre_nms_top_n_test=max(proposals, 1000))
        fit = f"check filter.architecture ({architecture}) and filter.num_classes ({num_classes})"
        try:
            result = model.load_state_dict(load_state_dict(weights), strict=False)
        except RuntimeError as e:  # tensors of other shapes
            raise ConfigError(f"{weights}: does not fit the model ({str(e).splitlines()[-1].strip()}); {fit}") from e
        if result.missing_keys or result.unexpected_keys:
            raise ConfigError(f"{weights}: does not fit the model (missing {_few(result.missing_keys)}, unexpected "
                              f"{_few(result.unexpected_keys)}); {fit}")
        self.model = model.eval().to(device)
        self.device = device
        self.categories = (list(detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
                           if num_classes == 91 else [f"class_{i}" for i in range(num_classes)])
        self._torch = torch

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        torch = self._torch
        with torch.inference_mode():
            batch = [torch.from_numpy(np.ascontiguousarray(f)).to(self.device).permute(2, 0, 1).float().div_(255)
                     for f in frames]
            outputs = self.model(batch)
        result = []
        for f, out in zip(frames, outputs):
            masks = out["masks"]
            areas = (masks > 0.5).flatten(1).sum(1).float().div_(f.shape[0] * f.shape[1]) if len(masks) else masks
            result.append([(float(s), self.categories[int(c)], float(a)) for s, c, a in
                           zip(out["scores"].cpu(), out["labels"].cpu(), areas.cpu())])
        return result


class Detectron2MaskRCNN:
    """A detectron2 Mask R-CNN from its YAML config and a .pth state dict (no pickle)."""

    def __init__(self, config_file: Path, weights: Path, device, *, score_floor: float = 0.05,
                 max_detections: int = 100, proposals: int = 1000):
        import torch
        from detectron2.config import get_cfg
        from detectron2.data import MetadataCatalog
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_floor
        cfg.TEST.DETECTIONS_PER_IMAGE = max_detections
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = proposals
        model = build_model(cfg)
        result = model.load_state_dict(load_state_dict(weights), strict=False)
        if result.missing_keys:
            raise ConfigError(f"{weights}: does not fit the detectron2 model of {config_file} (missing "
                              f"{_few(result.missing_keys)})")
        self.model = model.eval()
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        names = cfg.DATASETS.TEST
        self.categories = list(getattr(MetadataCatalog.get(names[0]), "thing_classes", [])) if names else []
        self._torch = torch

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        torch = self._torch
        inputs = []
        for f in frames:
            img = f[:, :, ::-1] if self.bgr else f
            img = self.resize.get_transform(img).apply_image(np.ascontiguousarray(img))
            inputs.append({"image": torch.as_tensor(img.astype("float32").transpose(2, 0, 1)),
                           "height": f.shape[0], "width": f.shape[1]})
        with torch.inference_mode():
            outputs = self.model(inputs)
        result = []
        for f, out in zip(frames, outputs):
            inst = out["instances"].to("cpu")
            areas = inst.pred_masks.flatten(1).sum(1).float() / (f.shape[0] * f.shape[1])
            result.append([(float(s), self._name(int(c)), float(a)) for s, c, a in
                           zip(inst.scores, inst.pred_classes, areas)])
        return result

    def _name(self, c: int) -> str:
        return self.categories[c] if c < len(self.categories) else f"class_{c}"


def _few(keys: Sequence[str]) -> str:
    return f"{list(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
