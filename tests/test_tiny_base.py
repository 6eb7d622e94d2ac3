"""The shipped tiny base: one safetensors file of at most 30 MB that loads into a working generator."""
import torch

from anomalign.generator.model import MaskGenerator
from anomalign.generator.model import TINY_BASE


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


def test_shipped_base_follows_the_mask():
    """The base denoises built-in defect images best with their own mask (a moved or an empty mask explains them
    worse): the property every fine-tuning starts from. Fixed seeds, so the same verdict every run."""
    import numpy as np
    from anomalign.data.procedural import DEFECTS, MATERIALS, render_sample
    from anomalign.data.transforms import to_model_range
    from anomalign.synthesis.scoring import free_lunch
    gen = MaskGenerator.load(TINY_BASE).eval()
    images, masks, prompts = [], [], []
    for i in range(8):
        material, defect = MATERIALS[i % len(MATERIALS)], DEFECTS[i % len(DEFECTS)]
        image, mask = render_sample(np.random.default_rng(100 + i), 128, material, defect)
        images.append(to_model_range(image))
        masks.append(torch.from_numpy(mask.astype(np.float32))[None])
        prompts.append(f"a photo of a {material} with a {defect} defect")
    with torch.no_grad():
        r = free_lunch(gen, torch.stack(images), torch.stack(masks), prompts, shift=32, seed=0)
    assert r["frac_true_lt_both"] >= 0.75 and r["true"].mean() < r["moved"].mean()
