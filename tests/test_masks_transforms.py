"""Mask binarization in every mode, preprocessing, and pixel alignment after each paired augmentation."""
import numpy as np
import pytest
import torch
from PIL import Image

from anomalign.data import from_model_range, load_mask, to_model_range
from anomalign.data.transforms import DihedralViews, hflip, resize_pair_pil, rot90, vflip
from anomalign.errors import ConfigError

TRUTH = np.zeros((16, 20), dtype=bool)
TRUTH[4:10, 5:15] = True


def write(tmp_path, name, array, mode=None):
    path = tmp_path / name
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path)
    return path


def test_mode_1(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(TRUTH).convert("1").save(path)
    assert Image.open(path).mode == "1"
    assert np.array_equal(load_mask(path), TRUTH)


def test_mode_L_anti_aliased_uses_threshold(tmp_path):
    soft = TRUTH.astype(np.float64) * 255
    soft[3, 5:15] = 100  # an anti-aliased edge row below half
    soft[10, 5:15] = 200  # and one above half
    path = write(tmp_path, "m.png", soft.astype(np.uint8))
    expected = TRUTH.copy()
    expected[10, 5:15] = True
    assert np.array_equal(load_mask(path), expected)
    low = load_mask(path, threshold=0.3)
    assert low[3, 5:15].all()  # threshold is configurable


def test_mode_P_palette_index(tmp_path):
    im = Image.fromarray(TRUTH.astype(np.uint8), mode="L").convert("P")
    im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC-like: index 1 is dark red
    path = tmp_path / "m.png"
    im.save(path)
    assert Image.open(path).mode == "P"
    assert np.array_equal(load_mask(path), TRUTH)


def test_mode_RGB_coloured_mask(tmp_path):
    rgb = np.zeros((*TRUTH.shape, 3), dtype=np.uint8)
    rgb[TRUTH] = (255, 0, 0)  # red on black: luminance would be 76 < 128
    assert np.array_equal(load_mask(write(tmp_path, "m.png", rgb)), TRUTH)


def test_16_bit_mask(tmp_path):
    arr = TRUTH.astype(np.uint16) * 65535
    path = tmp_path / "m.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.array_equal(load_mask(path), TRUTH)


def test_zero_one_png_reads_as_ids_but_jpeg_noise_does_not(tmp_path):
    assert np.array_equal(load_mask(write(tmp_path, "ids.png", TRUTH.astype(np.uint8))), TRUTH)
    noise = np.random.default_rng(0).integers(0, 4, TRUTH.shape).astype(np.uint8)  # JPEG-like noise near 0
    path = tmp_path / "noise.jpg"
    Image.fromarray(noise).save(path, quality=95)
    assert not load_mask(path).any()


def test_jpeg_mask_noise_binarizes_cleanly(tmp_path):
    path = tmp_path / "m.jpg"
    Image.fromarray(TRUTH.astype(np.uint8) * 255).save(path, quality=75)
    got = load_mask(path)
    assert (got != TRUTH).sum() <= 4  # only a few edge pixels may flip


def test_model_range_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    x = to_model_range(img)
    assert x.shape == (3, 8, 9) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_model_range(x), img)


def image_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Image whose every channel is 1 on the mask, -1 elsewhere, plus a ramp so flips are visible."""
    ramp = torch.linspace(0, 0.2, mask.shape[-1])
    return torch.cat([mask * 2 - 1, mask * 2 - 1 + ramp * 0, (mask * 2 - 1) * 0.5 + ramp])


def assert_aligned(image, mask, exact=True):
    assert torch.equal((image[0] > 0).float(), mask[0])
    if exact:  # geometric ops move pixels without mixing them
        assert torch.allclose(image[1], mask[0] * 2 - 1, atol=1e-6)


def make_pair():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(1, 24, 32, generator=g) > 0.7).float()
    return image_from_mask(m), m


@pytest.mark.parametrize("op", [hflip, vflip, lambda i, m: rot90(i, m, 1), lambda i, m: rot90(i, m, 2),
                                lambda i, m: rot90(i, m, 3)])
def test_exact_ops_keep_alignment(op):
    image, mask = make_pair()
    out_i, out_m = op(image, mask)
    assert_aligned(out_i, out_m)


def test_resize_keeps_alignment():
    # The PIL path used when loading (bicubic image, nearest mask): 8x8 blocks survive a 2x downscale.
    blocks = (torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    mask = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    img_u8 = ((mask[0] > 0).numpy()[..., None].repeat(3, 2) * 200 + 20).astype(np.uint8)
    ri, rm = resize_pair_pil(img_u8, mask[0].numpy() > 0, (16, 20))
    assert np.array_equal(ri[..., 0] > 110, rm)


def test_dihedral_views_keep_alignment_and_cover_the_group():
    image, mask = make_pair()
    views = DihedralViews(image[None], mask[None], ["hflip", "vflip", "rot90"])
    assert len(views.variants) == 16
    seen = set()
    for v in range(len(views.variants)):
        x, m = views.view(0, v)
        assert_aligned(x, m)
        seen.add((tuple(m.shape), m.numpy().tobytes()))
    assert len(seen) == 8  # the 8 symmetries of a rectangle's grid, reached in two ways each
    assert views.variant_of(3, 0) == DihedralViews(image[None], mask[None], ["hflip", "vflip", "rot90"]).variant_of(3, 0)
    with pytest.raises(ConfigError, match="shear"):
        DihedralViews(image[None], mask[None], ["shear"])


def test_read_only_arrays_convert_without_a_torch_warning():
    """np.asarray(PIL image) is read-only; torch warns (once per process, hence the subprocess) on it."""
    import subprocess
    import sys
    code = ("import numpy as np; from PIL import Image; from anomalign.data.transforms import to_model_range; "
            "a = np.asarray(Image.new('RGB', (4, 4))); assert not a.flags.writeable; to_model_range(a)")
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "not writable" not in r.stderr, r.stderr[-1000:]


def test_photometric_jitter_is_seeded_global_and_keeps_grey():
    import torch

    from anomalign.data.transforms import photometric_jitter
    torch.manual_seed(0)
    grey = (torch.rand(1, 16, 16) * 2 - 1).expand(3, 16, 16).clone()
    assert torch.equal(photometric_jitter(grey, 3, 0.0), grey)  # strength 0: untouched
    a, b, c = photometric_jitter(grey, 3, 1.0), photometric_jitter(grey, 3, 1.0), photometric_jitter(grey, 4, 1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)  # deterministic in the seed
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])  # grey stays grey
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, grey)
    # a global, monotone map: the order of pixel values is kept (nothing moves, no pixel-wise noise)
    order = grey[0].flatten().argsort()
    assert (a[0].flatten()[order].diff() >= -1e-6).all()


def test_colour_jitter_changes_saturation_and_cast_and_leaves_the_grey_jitter_as_it_was():
    import torch

    from anomalign.data.transforms import photometric_jitter
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16) * 2 - 1
    # colour 0: the same numbers as before the colour option existed (the grey jitter draws first)
    assert torch.equal(photometric_jitter(x, 5, 0.5, 0.0), photometric_jitter(x, 5, 0.5))
    assert torch.equal(photometric_jitter(x, 5, 0.0, 0.0), x)
    spread = lambda t: ((t + 1) / 2).amax(0) - ((t + 1) / 2).amin(0)  # noqa: E731  per-pixel chroma
    outs = [photometric_jitter(x, s, 0.0, 1.0) for s in range(12)]
    assert all(o.min() >= -1 and o.max() <= 1 and o.shape == x.shape for o in outs)
    ratios = [float(spread(o).mean() / spread(x).mean()) for o in outs]
    assert min(ratios) < 0.9 and max(ratios) > 1.1  # saturation goes both ways
    casts = [((o + 1) / 2).mean((1, 2)) / ((x + 1) / 2).mean((1, 2)) for o in outs]
    assert any(float(c.max() - c.min()) > 0.05 for c in casts)  # channels scaled differently: a colour cast
    assert torch.equal(photometric_jitter(x, 7, 0.3, 1.0), photometric_jitter(x, 7, 0.3, 1.0))  # seeded


def test_resize_images_is_antialiased_bilinear():
    from anomalign.data.transforms import resize_images
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # halving: a triangle filter twice as wide as bilinear's, weights 1 - d/2 at distances d = 0.5, 0.5, 1.5 from
    # the output pixel's centre (renormalised at the border): row [0, 1, 2, 3] -> [5/7, 16/7]; x = 4 * row + col
    a, b = 5 / 7, 16 / 7
    expect = torch.tensor([[[[5 * a, 4 * a + b], [4 * b + a, 5 * b]]]])
    assert torch.allclose(resize_images(x, 2), expect)  # plain bilinear would give [[2.5, 4.5], [10.5, 12.5]]
    assert resize_images(torch.zeros(2, 3, 10, 8), (5, 4)).shape == (2, 3, 5, 4)
