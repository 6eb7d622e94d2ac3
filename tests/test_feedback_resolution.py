"""Generative Feedback at the generator's resolution (issue 36, item 2): the frozen generator encodes the
original pixels read at its own resolution, never the segmenter's smaller tensors upsampled; a training crop
smaller than the generator's input is seen inside a generator-size window of the same image."""
import pytest
import torch

from anomalign.data.crops import CropPairs
from anomalign.data.dataset import PairDataset
from anomalign.data.sample import Sample
from anomalign.segmenter.model import Segmenter
from anomalign.segmenter.task import (CropFeedback, SegPairs, SegStepOptions, feedback_latents, resize_to,
                                      segmenter_batch, segmenter_step)
from dummy_data import pair, save
from tiny_models import dummy_tiny_generator


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Four 48 x 64 anomalous pairs (PNG: read back exactly)."""
    root = tmp_path_factory.mktemp("fbres")
    out = []
    for i in range(4):
        image, mask = pair(i, size=(48, 64))
        save(root / f"{i}.png", image)
        save(root / f"{i}_mask.png", mask.astype("uint8") * 255)
        out.append(Sample(image=root / f"{i}.png", mask=root / f"{i}_mask.png", defect="scratch", category="part",
                          normal=False))
    return out


@pytest.fixture(scope="module")
def gen():
    return dummy_tiny_generator().requires_grad_(False).eval()  # resolution 32


def test_feedback_latents_encode_the_original_image_at_the_generators_resolution(samples, gen):
    real = SegPairs(samples, 16, ["hflip"], 0)  # the segmenter trains at 16 px, the generator runs at 32
    fb = feedback_latents(gen, real, ["hflip"], 0)
    originals, _ = PairDataset(samples, size=32).tensors()
    keys = [(0, 0), (2, 1), (3, 0)]
    z0, _ = fb.latents(keys)
    with torch.no_grad():
        want = gen.encode(torch.stack([originals[0], originals[2].flip(-1), originals[3]])).float()
        upsampled = gen.encode(resize_to(real.images[[0, 2, 3]], 32)).float()
    assert torch.allclose(z0, want, atol=1e-5)
    assert not torch.allclose(z0, upsampled, atol=1e-2)  # what feedback encoded before: a blurred image


def test_a_crop_smaller_than_the_generator_is_seen_in_a_window_of_the_generators_size(samples):
    gen = dummy_tiny_generator().requires_grad_(False).eval()
    gen.spec["resolution"] = 64  # 32-px crops (the tiny Segformer's smallest input) in 64-px windows
    real = CropPairs(samples, 32, 1.0, ["hflip", "rot90"], seed=3, anomaly_fraction=1.0)
    fb = CropFeedback(gen, real)
    batch = segmenter_batch(real, None, 4, 0, 3, 5, 0, 1)
    windows, masks, square = fb.windows(batch["keys"], batch["seeds"])
    assert windows.shape == (4, 3, 64, 64) and masks.shape == (4, 1, 64, 64)
    for j in range(4):  # the crop's square of each window holds exactly the segmenter's (viewed) crop
        inside = square[j, 0].bool()
        assert int(inside.sum()) == 32 * 32
        assert torch.equal(windows[j][:, inside].view(3, 32, 32), batch["image"][j])
        assert torch.equal(masks[j][:, inside].view(1, 32, 32), batch["mask"][j])
    # the step: z0 = E(window), m̃ pasted on the square, L_fb over the crop's latent cells, gradient to the segmenter
    torch.manual_seed(0)
    model = Segmenter("tiny")
    out = segmenter_step(model, batch, SegStepOptions(), fb)
    assert torch.isfinite(out["l_fb"]) and out["l_fb"] > 0
    out["l_fb"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_windows_are_real_regions_of_the_image_and_reflected_only_beyond_a_small_one(samples, gen):
    small = CropPairs(samples[:1], 8, 1.0, [], seed=0)  # 8-px crops of a 48 x 64 image, 32-px windows
    fb = CropFeedback(gen, small)
    image = torch.from_numpy(small.sampler.images[0]).permute(2, 0, 1).float() / 127.5 - 1
    for draw in range(20):  # crops near the border too: the window is shifted inside the image, not reflected
        top, left = small.sampler.box(0, draw)
        windows, _, square = fb.windows([(0, None)], [draw])
        rows, cols = square[0, 0].amax(1).nonzero(), square[0, 0].amax(0).nonzero()
        wt, wl = top - int(rows[0]), left - int(cols[0])
        assert 0 <= wt <= 48 - 32 and 0 <= wl <= 64 - 32
        assert torch.allclose(windows[0], image[:, wt:wt + 32, wl:wl + 32], atol=1e-6)
    big = dummy_tiny_generator().requires_grad_(False).eval()
    big.spec["resolution"] = 96  # a window larger than the image: reflected beyond its border
    windows, _, square = CropFeedback(big, small).windows([(0, None)], [3])
    top, left = small.sampler.box(0, 3)
    inside = square[0, 0].bool()
    assert torch.allclose(windows[0][:, inside].view(3, 8, 8), image[:, top:top + 8, left:left + 8], atol=1e-6)
