"""The shipped tiny base: one safetensors file of at most 30 MB that loads into a working generator."""
import torch

from anomalign.generator.model import MaskGenerator
from anomalign.generator.train import TINY_BASE


def test_shipped_base_loads_and_predicts():
    assert TINY_BASE.is_file(), "run `anomalign pretrain-base --config configs/tiny_base_v1.yaml --out runs/tiny_base_v1 --install`"
    assert TINY_BASE.stat().st_size <= 30 * 2**20
    gen = MaskGenerator.load(TINY_BASE).eval()
    assert gen.spec["backend"] == "tiny" and gen.resolution == 64 and gen.factor == 4
    with torch.no_grad():
        m = torch.zeros(1, 1, 64, 64)
        eps = gen.predict_noise(torch.randn(1, 4, 16, 16), torch.tensor([500]),
                                gen.encode_prompts(["a photo of a wood with a scratch defect"]), gen.condition(m))
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()
