"""Top-1 / top-5 accuracy and mean loss of a model over a loader (eval mode, no grad)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> dict[str, float]:
    was_training = model.training
    model.eval()
    n, loss, top1, top5 = 0, 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            pred = logits.topk(k, 1).indices
            hit = pred == y[:, None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(1).sum())
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation loader yielded no samples")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n}
