"""Generator: mask- and prompt-conditioned latent diffusion (backends ``tiny`` and ``sd``) and the
dual-branch Alignment Regularization loss (paper §3.2, Eq. 1-5, in ``losses``)."""
from anomalign.generator.model import MaskGenerator

__all__ = ["MaskGenerator"]
