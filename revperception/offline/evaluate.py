"""Detection accuracy (P, R, mAP50, mAP50-95) of any network with Ultralytics' (B, 4 + nc, anchors) eval output.

The protocol follows yolov5's val.py, so figures compare with the release models' published ones:
Ultralytics' YOLODataset in val mode, as its build_yolo_dataset makes it (rectangular batches sorted
by aspect ratio, shapes padded by 0.5 stride, centred letterbox without upscaling, grey 114 padding),
multi-label class-aware NMS, boxes scaled back to each original image (clipped) before matching,
yolov5's IoU-ordered matching at IoU 0.50:0.95, and Ultralytics' DetMetrics / ap_per_class for AP, P, R.
The one known difference is image loading: Ultralytics resizes to rounded-up sizes and shrinks with
INTER_LINEAR (yolov5: truncated sizes, INTER_AREA); only images whose long side is not `imgsz` differ.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from ultralytics.data.build import build_dataloader
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils import DEFAULT_CFG, YAML, colorstr
from ultralytics.utils.metrics import DetMetrics, box_iou
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes, xywh2xyxy

_IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


class CachelessDataset(YOLODataset):
    """A YOLODataset that never writes its label cache beside the labels: datasets may be shared or read-only."""

    def cache_labels(self, path: Path = Path("./labels.cache")) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return super().cache_labels(Path(tmp) / path.name)


def read_data(data: str | Path, split: str) -> tuple[dict[str, Any], list[str]]:
    """The data.yaml dict and the image paths of `split`; a relative `path:` is taken from the yaml's folder."""
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"no such dataset yaml: {data}")
    cfg = YAML.load(data)
    if split not in cfg:
        raise ValueError(f"{data} has no {split!r} split")
    root = data.parent / cfg.get("path", ".")
    splits = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
    if isinstance(cfg.get("names"), list):
        cfg["names"] = dict(enumerate(cfg["names"]))
    cfg["nc"] = len(cfg["names"])
    return cfg, [str(root / s) for s in splits]


def _match(pred: torch.Tensor, cls: torch.Tensor, boxes: torch.Tensor) -> np.ndarray:
    """yolov5 val.py's process_batch: (detections, 10) true positives, one label per detection and vice versa
    at each IoU threshold, highest IoU first (Ultralytics now matches greedily by confidence instead)."""
    correct = np.zeros((len(pred), len(_IOU_THRESHOLDS)), dtype=bool)
    if not len(pred) or not len(cls):
        return correct
    iou = box_iou(boxes, pred[:, :4])
    same_class = cls[:, None] == pred[:, 5]
    for t, threshold in enumerate(_IOU_THRESHOLDS.tolist()):
        label_idx, det_idx = torch.where((iou >= threshold) & same_class)
        if not len(label_idx):
            continue
        matches = torch.stack((label_idx, det_idx), 1).numpy()
        matches = matches[iou[label_idx, det_idx].numpy().argsort()[::-1]]
        matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
        matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1], t] = True
    return correct


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    data: str | Path,
    *,
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    rect: bool = True,
    split: str = "val",
    device: str | torch.device = "cpu",
    names: dict[int, str] | None = None,
    workers: int = 0,
) -> dict[str, float | int]:
    """Evaluate `model` on the `split` of the Ultralytics data.yaml `data` (defaults: yolov5 val.py's).

    Returns precision, recall, map50, map50_95, images and instances. A torch model is moved to `device` and
    put in eval mode for the run, then handed back in the training mode it came in; any other callable (a
    compiled level) is called as it is. `workers` is the
    number of loader processes; 0 loads in this process and leaves the cores to the network.
    """
    cfg, image_dirs = read_data(data, split)
    names = dict(names) if names is not None else cfg["names"]
    stride = int(model.stride.max()) if hasattr(model, "stride") else 32
    # What Ultralytics' build_yolo_dataset makes in val mode, with yolov5 val.py's pad of 0.5 stride spelled out.
    dataset = CachelessDataset(
        img_path=image_dirs, imgsz=imgsz, batch_size=batch, augment=False, hyp=DEFAULT_CFG, rect=rect, stride=stride,
        pad=0.5, prefix=colorstr(f"{split}: "), task="detect", data=cfg,
    )
    loader = build_dataloader(dataset, batch, workers, shuffle=False, device=device)

    device = torch.device(device)
    module = model if isinstance(model, nn.Module) else None  # a compiled level is a plain callable
    was_training = module is not None and module.training
    if module is not None:
        module.to(device).eval()
    metrics = DetMetrics(names=names)
    images = instances = 0
    try:
        for b in tqdm(loader, total=len(loader), desc="evaluate", unit="batch"):
            img = b["img"].to(device).float() / 255
            raw = model(img)
            preds = non_max_suppression(
                raw[0] if isinstance(raw, (tuple, list)) else raw, conf, iou, multi_label=True, max_det=max_det,
                max_time_img=math.inf,  # a slow CPU must never truncate NMS; nc comes from the output's rows
            )
            for i, pred in enumerate(p.cpu() for p in preds):
                in_image = b["batch_idx"] == i
                cls = b["cls"][in_image].view(-1)
                boxes = xywh2xyxy(b["bboxes"][in_image]) * torch.tensor(img.shape[2:])[[1, 0, 1, 0]]
                ori_shape, ratio_pad = b["ori_shape"][i], b["ratio_pad"][i]
                boxes = scale_boxes(img.shape[2:], boxes, ori_shape, ratio_pad=ratio_pad)
                pred[:, :4] = scale_boxes(img.shape[2:], pred[:, :4], ori_shape, ratio_pad=ratio_pad)
                metrics.update_stats({
                    "tp": _match(pred, cls, boxes),
                    "conf": pred[:, 4].numpy(),
                    "pred_cls": pred[:, 5].numpy(),
                    "target_cls": cls.numpy(),
                    "target_img": np.unique(cls.numpy()),
                    "im_name": Path(b["im_file"][i]).stem,
                })
                images += 1
                instances += len(cls)
    finally:
        if module is not None:
            module.train(was_training)
    metrics.process()
    precision, recall, map50, map50_95 = metrics.mean_results()
    return {
        "precision": float(precision), "recall": float(recall), "map50": float(map50), "map50_95": float(map50_95),
        "images": images, "instances": instances,
    }
