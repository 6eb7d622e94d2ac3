"""The segmenter: Segformer (transformers) with 2 classes (background, anomaly), logits upsampled to the input.

Presets give MiT b0…b5 shapes (random init) plus ``tiny`` for CPU; ``pretrained`` loads a Segformer
from a local folder or the hub (e.g. ``nvidia/mit-b0``) and replaces its head with a 2-class one.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomalign.errors import AnomalignError
from anomalign.files import is_hub_id
from anomalign.weights import read_weights, write_weights

_B_HEADS = [1, 2, 5, 8]
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 2, 4],
                 decoder_hidden_size=64),
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=_B_HEADS, decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], num_attention_heads=_B_HEADS, decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
}
WEIGHTS_NAME = "segmenter.safetensors"
SPEC_KEY = "anomalign_segmenter"
# Segformer checkpoints were trained on ImageNet-normalised inputs; we normalise inside the model.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Segmenter(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> logits [B, 2, H, W] (upsampled from Segformer's 1/4 grid)."""

    def __init__(self, preset: str = "tiny", pretrained: str | None = None):
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        self.preset, self.pretrained, self.size = preset, pretrained, None
        self.crop_size, self.scale = None, 1.0
        if pretrained:
            hub = is_hub_id(pretrained)
            source = pretrained if hub else str(Path(pretrained).expanduser())
            if not hub and not Path(source).is_dir():  # a mistyped folder must not become a hub download
                raise AnomalignError(f"{pretrained}: no such Segformer folder (pass a folder or a hub id such as "
                                     "nvidia/mit-b0)")
            try:
                self.net = SegformerForSemanticSegmentation.from_pretrained(
                    source, num_labels=2, ignore_mismatched_sizes=True)
            except Exception as e:  # OSError, ValueError, UnpicklingError (a pickled .bin is refused), ...
                text = str(e).splitlines()[0] if str(e) else ""
                raise AnomalignError(f"{pretrained}: cannot load a Segformer from this {'hub id' if hub else 'folder'} "
                                     f"({type(e).__name__}: {text}); anomalign loads safetensors weights and never "
                                     "unpickles pytorch_model.bin files") from None
        else:
            if preset not in PRESETS:
                raise AnomalignError(f"unknown segmenter preset {preset!r}; choose one of {list(PRESETS)}")
            self.net = SegformerForSemanticSegmentation(SegformerConfig(num_labels=2, **PRESETS[preset]))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images + 1) / 2 - self.mean) / self.std
        logits = self.net(pixel_values=x).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly probability [B, 1, H, W]."""
        return self(images).softmax(1)[:, 1:2]

    def save(self, folder: Path, extra: dict | None = None) -> Path:
        spec = {"preset": self.preset, "config": self.net.config.to_dict(), **(extra or {})}
        return write_weights(Path(folder) / WEIGHTS_NAME, self.net.state_dict(), SPEC_KEY, spec)

    @classmethod
    def load(cls, source: Path, device: str | torch.device = "cpu") -> "Segmenter":
        """Load a segmenter run folder (or its ``segmenter.safetensors``)."""
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        spec, state, file = read_weights(source, WEIGHTS_NAME, SPEC_KEY,
                                         "not a segmenter folder; train one with `anomalign train-segmenter`")
        config = SegformerConfig.from_dict(spec["config"])
        if config.num_labels != 2:
            raise AnomalignError(f"{file}: segmenter has {config.num_labels} classes; anomalign needs 2 "
                                 "(background, anomaly)")
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.preset, model.pretrained, model.size = spec.get("preset", "custom"), None, spec.get("size")
        # trained on crops at native resolution: predict with sliding windows of this size, at this scale
        model.crop_size, model.scale = spec.get("crop_size"), spec.get("scale", 1.0)
        model.net = SegformerForSemanticSegmentation(config)
        try:
            model.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise AnomalignError(f"{file}: weights do not fit the model ({str(e).splitlines()[0]})") from None
        model.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        model.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        return model.to(device).eval()
