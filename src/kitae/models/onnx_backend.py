"""A kitae ONNX export (`kitae export --for onnx`) run by ONNX Runtime, in the classifier's place:
`Classifier` and `kitae serve` drive it exactly as they drive the torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kitae.errors import KitaeError


class OnnxClassifier(nn.Module):
    """Same call as `SequenceClassifier` (input_ids, attention_mask[, token_type_ids]) -> logits;
    pooling positions are computed inside the graph from the mask, so `pool_positions` is unused."""

    def __init__(self, path: Path, pooling: str, is_decoder: bool, device: str = "cpu") -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise KitaeError(f"{path}: an ONNX export needs onnxruntime: pip install 'kitae[onnx]'") from None
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.pooling, self.is_decoder = pooling, is_decoder

    def run(self, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(logits, outputs) of a padded batch."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids")
        if ids.shape[1] < 2:  # the graph's sequence axis starts at 2: one padding column changes nothing
            ids = torch.nn.functional.pad(ids, (0, 1), value=0)
            mask = torch.nn.functional.pad(mask, (0, 1), value=0)
            types = None if types is None else torch.nn.functional.pad(types, (0, 1), value=0)
        feeds: dict[str, Any] = {"input_ids": ids.cpu().numpy().astype(np.int64),
                                 "attention_mask": mask.cpu().numpy().astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = (np.zeros_like(feeds["input_ids"]) if types is None
                                       else types.cpu().numpy().astype(np.int64))
        logits, outputs = self.session.run(["logits", "outputs"], feeds)
        return logits, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_positions: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return torch.from_numpy(self.run(batch)[0])
