"""Placing synthetic defects in full-size normal images: foreground, location, window, exact paste-back."""
import random

import numpy as np

from anomalign.synthesis.fullsize import defect_box
from anomalign.generator.window import paste, window_around
from anomalign.synthesis.placement import estimate_foreground, fill_holes, place


def test_foreground_of_an_object_on_a_plain_background():
    img = np.full((120, 160, 3), 20, np.uint8)
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 60) ** 2 + (xx - 80) ** 2 < 40 ** 2
    img[disc] = 200
    img[55:65, 75:85] = 22  # a dark spot inside the object (a hole in the colour test) is still object
    fg = estimate_foreground(img)
    assert fg[disc].mean() > 0.97 and fg[~disc].mean() < 0.03 and fg[60, 80]


def test_texture_is_all_foreground():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert estimate_foreground(img).all()


def test_fill_holes():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[0, 0]


def test_placed_defects_lie_on_the_foreground():
    fg = np.zeros((100, 100), bool)
    fg[30:70, 40:90] = True
    defect = np.zeros((12, 9), bool)
    defect[::2, ::3] = True
    rng = random.Random(0)
    for _ in range(50):
        y, x = place(defect, fg, rng)
        assert fg[y:y + 12, x:x + 9][defect].all()
    assert place(np.ones((60, 60), bool), fg, rng) is None
    y0, x0, y1, x1 = defect_box(np.pad(defect, 5))
    assert (y0, x0, y1 - y0, x1 - x0) == (5, 5, 11, 7)


def test_window_contains_the_defect_and_stays_inside():
    rng = random.Random(1)
    for _ in range(200):
        y, x = rng.randint(0, 80), rng.randint(0, 180)
        top, left, side = window_around(y, x, 15, 12, 64, 100, 200, rng)
        assert side == 64 and 0 <= top <= y and top + side >= y + 15 and top + side <= 100
        assert 0 <= left <= x and left + side >= x + 12 and left + side <= 200


def test_paste_changes_only_where_alpha_is_positive():
    full = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    window = np.full((20, 20, 3), 255, np.uint8)
    alpha = np.zeros((20, 20))
    alpha[5:10, 5:10] = 1.0
    alpha[10, 5:10] = 0.5
    out = paste(full, window, alpha, 10, 30)
    changed = np.zeros((50, 70), bool)
    changed[10:30, 30:50] = alpha > 0
    assert np.array_equal(out[~changed], full[~changed]) and (out[15:20, 35:40] == 255).all()


# issue 46 item 5: frames and plain borders are not free area ----------------------------------------------------


def endoscope_frame(seed: int = 0, h: int = 240, w: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A colonoscopy-style host: a textured pink disc cut by the top and bottom of the picture (so the border is
    not plain all round), black corners with faint JPEG-like noise and white letters in one corner. Returns uint8
    [h, w, 3] and the bool frame that was drawn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    surface = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.62 * h) ** 2
    tissue = np.array([200, 120, 110]) + 25 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 13.0)[..., None]
    tissue = tissue + rng.normal(0, 8, (h, w, 3))
    image = np.where(surface[..., None], tissue, rng.integers(0, 9, (h, w, 3)))
    image[4:12, 4:20:5] = 255  # a few letters printed on the frame (apart from the disc: see frame_mask)
    return np.clip(image, 0, 255).astype(np.uint8), ~surface


def test_no_defect_is_placed_on_a_black_frame(tmp_path):
    from PIL import Image

    from anomalign.synthesis.fullsize import NormalImages, plan
    from anomalign.synthesis.placement import frame_mask
    image, frame = endoscope_frame()
    found = frame_mask(image)
    assert found[frame].mean() > 0.97 and found[~frame].mean() < 0.02  # the frame, letters included; not the disc
    Image.fromarray(image).save(tmp_path / "host.png")
    normals = NormalImages([tmp_path / "host.png"])
    assert not normals.get(0)[1][frame].any()
    defect = np.ones((30, 40), bool)
    landed = 0
    for i in range(60):
        placed = plan(i, 0, defect, normals, 64)
        assert placed is not None
        p, fitted = placed
        on = np.zeros(frame.shape, bool)
        on[p.y:p.y + p.h, p.x:p.x + p.w] = fitted
        assert not (on & frame).any(), i
        landed += 1
    assert landed == 60


def test_vignette_and_plain_background_borders_are_not_free_area():
    from anomalign.synthesis.placement import estimate_foreground
    h = w = 200
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(1)
    texture = 140 + 30 * np.sin(yy / 5.0) * np.cos(xx / 7.0) + rng.normal(0, 6, (h, w))
    r = np.hypot(yy - h / 2, xx - w / 2) / (h / 2)
    vignette = np.clip(texture * np.clip(1.25 - r ** 4, 0, 1), 0, 255).astype(np.uint8)
    fg = estimate_foreground(np.repeat(vignette[..., None], 3, axis=2))
    assert not fg[:8, :8].any() and not fg[-8:, -8:].any() and fg[80:120, 80:120].all()
    # an object filling ~90 % of the picture on a plain white background: once a "texture", all foreground
    box = (np.abs(yy - h / 2) < 95) & (np.abs(xx - w / 2) < 95)
    obj = np.where(box[..., None], np.repeat(vignette[..., None], 3, axis=2) * 0 + texture[..., None], 250)
    fg = estimate_foreground(np.clip(obj, 0, 255).astype(np.uint8))
    assert not fg[~box].any() and fg[box].mean() > 0.95


def test_textures_without_a_frame_keep_all_their_free_area():
    from anomalign.data.procedural import MATERIALS, render_sample
    from anomalign.synthesis.placement import estimate_foreground, frame_mask
    images = [np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)]
    images += [render_sample(np.random.default_rng(s), 128, m, None)[0] for m in MATERIALS for s in range(2)]
    yy, xx = np.mgrid[:120, :160]
    dark = 45 + 20 * np.sin(xx / 3.0) + np.random.default_rng(2).normal(0, 12, (120, 160))  # dark, grainy
    images.append(np.repeat(np.clip(dark, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    smooth = (60 + 0.8 * xx + 0.3 * yy).astype(np.uint8)  # a smooth lighting gradient: flat, but no frame
    images.append(np.repeat(smooth[..., None], 3, axis=2))
    for k, image in enumerate(images):
        assert not frame_mask(image).any(), k
        assert estimate_foreground(image).all(), k
