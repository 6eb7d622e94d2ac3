"""Native resolution: crop sampling (data layer) and sliding-window prediction (segmenter)."""
import numpy as np
import pytest
import torch

from anomalign.config import build_config
from anomalign.data.crops import CropOptions, CropSampler, components, rescale_pair
from anomalign.errors import ConfigError, DataError
from anomalign.segmenter.sliding import predict_native, sliding_window_proba, window_starts


def image_with(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask * 200 + 30).astype(np.uint8)[:, :, None], 3, axis=2)


def test_a_one_pixel_defect_is_in_every_anomaly_centred_crop():
    mask = np.zeros((300, 500), bool)
    mask[17, 480] = True  # near a corner, so clamping to the image is exercised too
    s = CropSampler([image_with(mask)], [mask], crop=64, anomaly_fraction=1.0, jitter=0.45)
    for seed in range(300):
        img, m, (top, left) = s.crop_pair(0, seed)
        assert img.shape == (64, 64, 3) and m.sum() == 1 and m[17 - top, 480 - left]
    assert s.crop_pair(0, 7)[2] == s.crop_pair(0, 7)[2]  # deterministic in the seed
    assert len({s.crop_pair(0, k)[2] for k in range(50)}) > 10  # jittered


def test_small_components_are_drawn_as_often_as_large_ones():
    mask = np.zeros((400, 400), bool)
    mask[50:150, 50:150] = True   # 10 000 px
    mask[350, 350] = True         # 1 px
    assert sorted(len(c) for c in components(mask)) == [1, 10_000]
    s = CropSampler([image_with(mask)], [mask], crop=32, anomaly_fraction=1.0, jitter=0.0)
    small = sum(bool(s.crop_pair(0, k)[1][-32:, -32:].any()) and s.crop_pair(0, k)[1].sum() == 1
                for k in range(400))
    assert 150 < small < 250  # about half, not 1 in 10 001


def test_uniform_crops_cover_the_image_and_normals_get_them():
    mask = np.zeros((100, 120), bool)
    s = CropSampler([image_with(mask)], [mask], crop=40, anomaly_fraction=1.0)
    boxes = {s.box(0, k) for k in range(500)}
    assert min(b[0] for b in boxes) == 0 and max(b[0] for b in boxes) == 60
    assert min(b[1] for b in boxes) == 0 and max(b[1] for b in boxes) == 80


def test_rescale_keeps_masks_binary_and_aligned():
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    img, m = rescale_pair(image_with(mask), mask, 0.5)
    assert img.shape == (30, 40, 3) and m.dtype == bool and m.shape == (30, 40)
    assert m.sum() == 10 * 15 and m[5:15, 10:25].all()


def test_bad_crop_values_are_clear_errors(tmp_path):
    mask = np.zeros((50, 60), bool)
    with pytest.raises(DataError, match=r"part.png: the largest image is 60x50 px at this scale, smaller than the "
                                        r"crop of 64"):
        CropSampler([image_with(mask)], [mask], crop=64, names=["part.png"])
    # a narrow image among larger ones is reflect-padded, image and mask together
    narrow = np.zeros((100, 30), bool)
    narrow[40:45, 3:6] = True
    s = CropSampler([image_with(narrow), image_with(np.zeros((100, 100), bool))], [narrow, np.zeros((100, 100), bool)],
                    crop=64, anomaly_fraction=1.0)
    img, m, _ = s.crop_pair(0, 3)
    assert s.padded == 1 and img.shape == (64, 64, 3) and m.any()
    assert np.array_equal(img[..., 0] > 100, m)  # the padded mask still marks exactly the bright pixels
    for bad in (dict(scale=0), dict(scale=-1), dict(crop_size=4), dict(crop_jitter=0.5), dict(anomaly_fraction=2)):
        with pytest.raises(ConfigError):
            build_config(CropOptions, bad).validate_crops()


def test_window_starts_cover_every_pixel():
    assert window_starts(100, 100, 50) == [0]
    assert window_starts(60, 100, 50) == [0]
    assert window_starts(250, 100, 50) == [0, 50, 100, 150]
    assert window_starts(260, 100, 50) == [0, 50, 100, 150, 160]


@pytest.mark.parametrize("shape", [(3, 97, 203), (3, 40, 30), (3, 64, 64)])
def test_sliding_windows_of_a_constant_or_per_pixel_model_equal_one_pass(shape):
    x = torch.rand(*shape) * 2 - 1

    def constant(b):
        return torch.full((b.shape[0], 1, *b.shape[-2:]), 0.3)

    def per_pixel(b):  # output at a pixel depends on that pixel only: windows must reproduce it exactly
        return torch.sigmoid(3 * b[:, :1])

    assert torch.allclose(sliding_window_proba(constant, x, 64), torch.full((1, *shape[1:]), 0.3), atol=1e-6)
    assert torch.allclose(sliding_window_proba(per_pixel, x, 64, overlap=0.5), per_pixel(x[None])[0], atol=1e-6)
    assert torch.allclose(sliding_window_proba(per_pixel, x, 32, overlap=0.0), per_pixel(x[None])[0], atol=1e-6)


def test_predict_native_returns_the_image_size_at_any_scale():
    x = torch.rand(3, 90, 130) * 2 - 1
    seen = []

    def model(b):
        seen.append(b.shape)
        return torch.full((b.shape[0], 1, *b.shape[-2:]), 0.7)

    p = predict_native(model, x, patch=32, scale=0.5)
    assert p.shape == (1, 90, 130) and torch.allclose(p, torch.full_like(p, 0.7))
    assert all(s[-2:] == (32, 32) for s in seen)
