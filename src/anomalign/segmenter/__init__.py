"""Segmenter: a U-Net (or Segformer) with Eq. 6 (real + synthetic CE) and Generative Feedback (Eq. 7-11) in ``losses``."""
from anomalign.segmenter.model import Segmenter

__all__ = ["Segmenter"]
