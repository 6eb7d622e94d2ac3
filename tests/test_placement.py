"""Placing synthetic defects in full-size normal images: foreground, location, window, exact paste-back."""
import random

import numpy as np

from anomalign.synthesis.fullsize import defect_box
from anomalign.synthesis.placement import (estimate_foreground, fill_holes, paste, place,
                                           window_around)


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
