"""The shipped tiny base: one safetensors file of at most 30 MB that loads into a working generator."""
import torch

from anomalign.generator.model import MaskGenerator
from anomalign.generator.train import TINY_BASE


def test_shipped_base_loads_and_predicts():
    assert TINY_BASE.is_file(), ("run `anomalign pretrain-base --config configs/tiny_base_v.yaml "
                                 "--codec ../shared/weights/taef2 --out runs/tiny_base_v --install`")
    assert TINY_BASE.stat().st_size <= 30 * 2**20
    gen = MaskGenerator.load(TINY_BASE).eval()
    # the TAEF2 v-prediction base of issue 16: 128 px, 8x downsampling, 32 latent channels, mask-aware
    assert gen.spec["backend"] == "tiny" and gen.spec["base_regime"] == "mask-aware"
    assert (gen.resolution, gen.factor, gen.latent_channels) == (128, 8, 32)
    assert gen.scheduler.config.prediction_type == "v_prediction"
    with torch.no_grad():
        m = torch.zeros(1, 1, 128, 128)
        m[..., 40:60, 30:90] = 1
        out = gen.predict_noise(torch.randn(1, 32, 16, 16), torch.tensor([500]),
                                gen.encode_prompts(["a photo of a wood with a scratch defect"]), gen.condition(m))
    assert out.shape == (1, 32, 16, 16) and torch.isfinite(out).all()
