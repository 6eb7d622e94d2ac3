"""anomalign: mask-aligned anomaly image generation and segmentation.

Implements "Free Lunch of Image-mask Alignment for Anomaly Image Generation and Segmentation":
a mask-conditioned diffusion generator trained with dual-branch Alignment Regularization, synthetic
image/mask datasets, and a segmenter trained with Generative Feedback.
"""
from anomalign.errors import AnomalignError, ConfigError, DataError

__version__ = "0.1.0"
__all__ = ["AnomalignError", "ConfigError", "DataError", "MaskGenerator", "RunResult", "Segmenter", "run",
           "__version__"]

# The Python API (README, "Python API"), imported on first use so that `anomalign --help` stays fast.
_API = {"Segmenter": "anomalign.segmenter.model", "MaskGenerator": "anomalign.generator.model",
        "run": "anomalign.pipeline", "RunResult": "anomalign.pipeline"}


def __getattr__(name: str):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'anomalign' has no attribute {name!r}")
