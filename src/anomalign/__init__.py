"""anomalign: mask-aligned anomaly image generation and segmentation.

Implements "Free Lunch of Image-mask Alignment for Anomaly Image Generation and Segmentation":
a mask-conditioned diffusion generator trained with dual-branch Alignment Regularization, synthetic
image/mask datasets, and a segmenter trained with Generative Feedback.
"""
from anomalign.errors import AnomalignError, ConfigError, DataError

__version__ = "0.1.0"
__all__ = ["AnomalignError", "ConfigError", "DataError", "__version__"]
