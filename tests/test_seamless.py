"""Seamless placement (issue 46): a soft context band around the defect, zero on the window's border ring, and
windows at the scale the generator was fine-tuned at (``generator.window``, ``generate --margin / --scale``)."""

import numpy as np
import pytest
import torch

from anomalign.generator.window import (BORDER_PX, DILATE_PX, FEATHER_PX, MARGIN, band_px, dilate, paste_window,
                                        seamless_masks, window_around, window_pad, window_side)
from anomalign.synthesis.generate import GenerateConfig, run_generate
from dummy_data import pasted_pairs, save, write_paired


def square_mask(size=64, y=24, x=20, h=12, w=16):
    m = torch.zeros(1, 1, size, size)
    m[0, 0, y:y + h, x:x + w] = 1
    return m


def test_the_band_ramps_down_monotonically_and_the_label_pixels_stay_one():
    m = square_mask()
    region, alpha = seamless_masks(m, MARGIN)
    assert torch.equal(region, alpha) and alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[dilate(m, DILATE_PX) > 0] == 1).all()  # the mask and its rim are generated outright
    band = band_px(16, MARGIN)
    a = alpha[0, 0]
    row = a[30, 20 + 16 + DILATE_PX - 1:]  # from the grown mask's right edge outwards
    assert (row[1:] <= row[:-1]).all() and row[0] == 1 and (row[1:band + 1] > 0).all() and (row[1:band + 1] < 1).all()
    assert (row[band + 1:] == 0).all()  # zero beyond the band
    col = a[:24 - DILATE_PX + 1, 28].flip(0)  # upwards from the grown mask
    assert (col[1:] <= col[:-1]).all()


def test_margin_zero_is_the_old_region_and_feather():
    from anomalign.generator.sampler import feather
    m = square_mask()
    region, alpha = seamless_masks(m, 0.0)
    assert torch.equal(region, dilate(m, DILATE_PX)) and torch.equal(alpha, feather(region, FEATHER_PX))


def test_the_border_ring_stays_zero_on_closed_sides_only():
    m = square_mask(size=32, y=2, x=10, h=10, w=10)  # the defect near the window's top side
    closed, _ = seamless_masks(m, 0.5)
    assert (closed[0, 0, :BORDER_PX] == 0).all() and (closed[0, 0, :, :BORDER_PX] == 0).all()
    assert (closed[0, 0, -BORDER_PX:] == 0).all() and (closed[0, 0, :, -BORDER_PX:] == 0).all()
    assert (closed[m > 0] == 1).all()  # the label is never cut, even where the ring caps the band
    on_edge, _ = seamless_masks(m, 0.5, edges=[(True, False, False, False)])  # the top side is the image's edge
    assert (on_edge[0, 0, 0, 10:20] > 0).all()


def test_kept_pixels_are_left_alone():
    m = square_mask()
    keep = torch.zeros_like(m)
    keep[0, 0, :, 42:] = 1  # e.g. an endoscope's frame right of the defect
    _, alpha = seamless_masks(m, 1.0, keep=keep)
    assert (alpha[0, 0, :, 41:] == 0).all() and (alpha[0, 0, :, 36:41] > 0).any()


def test_windows_follow_the_training_scale_and_hold_large_defects_with_their_context():
    R = 128
    assert window_side(40, 30, R, 1000, 1000, scale=0.3) == round(R / 0.3)  # a typical defect: R / scale px
    assert window_side(40, 30, R, 1000, 1000) == R and window_side(200, 30, R, 1000, 1000) == 200  # the old rule
    big = window_side(600, 300, R, 1000, 1000, scale=0.3, margin=MARGIN)  # larger than R / scale: widened
    assert big > 600
    ratio = R / big
    assert 600 * ratio + 2 * (DILATE_PX + band_px(600 * ratio, MARGIN) + BORDER_PX) <= R  # all fits at R
    import random
    pad = window_pad(600, 300, big, R, MARGIN)
    top, left, side = window_around(200, 300, 600, 300, big, 1000, 1000, random.Random(0), pad)
    assert side == big and top <= 200 - pad and top + side >= 800 + pad and left <= 300 - pad


def test_soft_paste_keeps_the_window_border_and_everything_beyond_the_band():
    """A white window pasted into a grey host through the soft region, resized from R = 32 to a 80-px window:
    the window's border equals the host (no step), the blend rises monotonically towards the defect."""
    host = np.full((120, 150, 3), 90, np.uint8)
    m = square_mask(size=32, y=12, x=12, h=8, w=8)
    _, alpha = seamless_masks(m, MARGIN)
    out = paste_window(host, np.full((32, 32, 3), 255, np.uint8), alpha[0], 20, 30, 80).astype(int)
    window = out[20:100, 30:110, 0]
    assert np.array_equal(out[:20], host[:20]) and np.array_equal(out[:, :30], host[:, :30])
    ring = np.concatenate([window[:3].ravel(), window[-3:].ravel(), window[:, :3].ravel(), window[:, -3:].ravel()])
    assert (ring == 90).all()
    row = window[40, 40:]  # from the defect's centre to the window's right side
    assert (np.diff(row) <= 0).all() and row[0] == 255 and row[-1] == 90


def normals(folder, n=2):
    rng = np.random.default_rng(0)
    for i in range(n):
        save(folder / f"n{i}.png", rng.integers(60, 200, (96, 120, 3)).astype(np.uint8))


@pytest.mark.parametrize("scale", [None, 0.5])
def test_generated_pairs_keep_the_window_border_and_the_label_is_the_mask(gen_dir, tmp_path, scale):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    normals(tmp_path / "normals")
    cfg = GenerateConfig(generator=gen_dir, masks=data, out=tmp_path / "out", num=3, split="all", steps=2,
                         batch_size=3, augment=["flip"], device="cpu", normals=tmp_path / "normals", scale=scale)
    run_generate(cfg, progress=False)
    pairs = list(pasted_pairs(tmp_path / "out"))
    assert len(pairs) == 3
    for r, image, mask, host in pairs:
        y, x, h, w = r["defect_box"]
        ys, xs = np.nonzero(mask)  # the label is the defect itself, not its grown region or band
        assert (ys.min(), xs.min(), ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) == (y, x, h, w)
        top, left, side = r["window"]
        assert r["window_scale"] == (scale or 1.0)
        assert side >= min(round(32 / (scale or 1.0)), 96)  # at least R / scale native px (the image allowing)
        assert not np.array_equal(image[mask], host[mask])
        changed = np.abs(image - host).max(axis=2) > 0
        inside = np.zeros_like(changed)
        inside[top + 2:top + side - 2, left + 2:left + side - 2] = True  # the border ring: 2 R-px, >= 2 native
        H, W = mask.shape
        border = ~inside
        border[:top] = border[top + side:] = False
        border[:, :left] = border[:, left + side:] = False
        for keep_edge, sl in ((top == 0, np.s_[top:top + 2]), (top + side == H, np.s_[top + side - 2:top + side])):
            if keep_edge:
                border[sl] = False
        for keep_edge, sl in ((left == 0, np.s_[:, left:left + 2]), (left + side == W, np.s_[:, left + side - 2:left + side])):
            if keep_edge:
                border[sl] = False
        assert not changed[border].any()  # no step along the window's border: it is the host there
        outside = np.ones_like(changed)
        outside[top:top + side, left:left + side] = False
        assert not changed[outside].any()  # nothing outside the window
