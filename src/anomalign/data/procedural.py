"""Procedural industrial surfaces with exactly-masked defects (numpy only).

Why it looks the way it does:

* Textures are *structured* (streaks, grain rings, weaves, mottling, twill) with most variance at scales
  >= 3-4 px, plus an illumination gradient: a tiny diffusion model cannot tell i.i.d. per-pixel grain from
  its own noise, so grain-dominated textures would teach it nothing.
* All geometry is expressed in "64-px units": at any ``size`` an image looks like a sharper version of the
  64-px one, and defect sizes scale with ``size``.
* Every defect is a signed distance ``d`` (px, < 0 inside) turned into one alpha map with alpha == 0.5 exactly
  on the boundary; the image is ``(1 - alpha) * image + alpha * appearance`` and the mask is ``alpha >= 0.5``,
  so the mask is exact and pixels with alpha == 0 are bit-identical to the background.  The outer
  anti-aliasing band (0 < alpha < 0.5) is at most ~1 px; soft stain edges fade *inside* the mask.
* Randomness comes only from the ``rng`` argument (deterministic); smoothing uses interpolation matrices
  (``W_y @ G @ W_x.T``) and ``np.interp`` instead of per-pixel gathers, to stay fast.
"""
from __future__ import annotations

import numpy as np

MATERIALS: tuple[str, ...] = ("brushed_metal", "wood", "fabric", "stone", "carbon")
DEFECTS: tuple[str, ...] = ("scratch", "crack", "hole", "stain")

_F = np.float32
_TAU = 2.0 * np.pi


# ----------------------------------------------------------------------------- noise helpers
def _interp_matrix(rng: np.random.Generator, n_out: int, cells: int) -> np.ndarray:
    """(n_out, cells+4) cubic B-spline weights resampling a random lattice onto n_out px, with a random phase.
    B-splines (unlike bilinear / smoothstep) give round blobs without axis-aligned lattice artefacts."""
    t = (np.arange(n_out) + 0.5) * (cells / n_out) + rng.random()
    k = np.floor(t).astype(np.int64)
    f = t - k
    w = np.zeros((n_out, cells + 4), _F)
    rows = np.arange(n_out)
    w[rows, k] = (1 - f) ** 3 / 6
    w[rows, k + 1] = (3 * f ** 3 - 6 * f ** 2 + 4) / 6
    w[rows, k + 2] = (-3 * f ** 3 + 3 * f ** 2 + 3 * f + 1) / 6
    w[rows, k + 3] = f ** 3 / 6
    return w * 1.3  # x1.3 per axis: restores a value-noise std of ~0.45 lost to the spline's smoothing


def _noise2d(rng: np.random.Generator, h: int, w: int, cy: float, cx: float | None = None) -> np.ndarray:
    """Smooth value noise in about [-1, 1] with features ~h/cy px; two small matmuls, no gathers."""
    cy_i = int(np.clip(round(cy), 1, max(1, h // 2)))
    cx_i = int(np.clip(round(cy if cx is None else cx), 1, max(1, w // 2)))
    g = rng.random((cy_i + 4, cx_i + 4), dtype=_F) * 2.0 - 1.0
    return _interp_matrix(rng, h, cy_i) @ g @ _interp_matrix(rng, w, cx_i).T


def _fbm(rng: np.random.Generator, size: int, cells: float, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Sum of noise octaves (cells, 2*cells, ...), normalised by the total amplitude."""
    out, amp, norm = np.zeros((size, size), _F), 1.0, 0.0
    for o in range(octaves):
        out += amp * _noise2d(rng, size, size, cells * 2 ** o)
        norm, amp = norm + amp, amp * gain
    return out / norm


def _noise1d(rng: np.random.Generator, t: np.ndarray, n: int = 256) -> np.ndarray:
    """Periodic 1-D value noise at arbitrary coordinates t (lattice units): streaks / fibres along a direction."""
    return np.interp(t, np.arange(n), rng.random(n) * 2.0 - 1.0, period=n).astype(_F)


def _jitter(rng: np.random.Generator, rgb, hue: float = 0.03, bright: float = 0.12) -> np.ndarray:
    """A palette colour with random per-image brightness and small per-channel (hue) shifts."""
    c = np.asarray(rgb, _F) * (1.0 + rng.uniform(-bright, bright)) + rng.normal(0.0, hue, 3)
    return np.clip(c, 0.0, 1.0).astype(_F)


def _pick(rng: np.random.Generator, palette) -> np.ndarray:
    return _jitter(rng, palette[int(rng.integers(len(palette)))])


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return a * (1.0 - t) + b * t


def _rotate(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, theta: float | None = None):
    th = rng.uniform(0.0, np.pi) if theta is None else theta
    c, s = np.cos(th), np.sin(th)
    return x * c + y * s, y * c - x * s


# ----------------------------------------------------------------------------- materials
# x (1, W) and y (H, 1) are pixel centres in 64-px units, centred on the image.
def _brushed_metal(rng, x, y, size):
    u, v = _rotate(rng, x, y, None if rng.random() < 0.5 else rng.integers(2) * np.pi / 2 + rng.normal(0, .04))
    # Streaks: 1-D noise across the brushing direction (v) at 6 / 2.5 / 1.2 px, fading in and out along it.
    streak = 0.55 * _noise1d(rng, v / 6.0) + 0.35 * _noise1d(rng, v / 2.5) + 0.15 * _noise1d(rng, v / 1.2)
    streak = streak * (0.6 + 0.5 * _noise2d(rng, size, size, 3))
    along = _noise1d(rng, u / 18.0 + 0.7 * _noise1d(rng, v / 9.0))  # long weak variations along the brushing
    sheen = np.exp(-((v - rng.uniform(-30, 30)) / rng.uniform(10, 28)) ** 2)  # anisotropic reflection band
    lum = 0.8 + rng.uniform(0.08, 0.16) * streak + 0.04 * along + rng.uniform(0.05, 0.3) * sheen
    colour = [(.62, .64, .67), (.72, .72, .74), (.64, .61, .56), (.55, .58, .62), (.75, .62, .38)]
    return lum[..., None] * _jitter(rng, colour[int(rng.integers(5))], hue=0.012)  # steel .. brass


def _wood(rng, x, y, size):
    a, dist = rng.uniform(0, _TAU), rng.uniform(45, 220)  # ring centre far outside: arcs to near-straight grain
    warp = _fbm(rng, size, 3, 2) * rng.uniform(2, 7)
    rho = np.sqrt((x - dist * np.cos(a)) ** 2 + (y - dist * np.sin(a)) ** 2) + warp
    phase = rho / rng.uniform(4.5, 10.0) + 0.25 * _noise1d(rng, rho / 12.0)  # uneven ring widths
    ring = (0.5 + 0.5 * np.cos(_TAU * phase)) ** rng.uniform(2.0, 5.0)  # narrow dark latewood bands
    grain = 0.7 * _noise1d(rng, rho / 2.0) + 0.3 * _noise1d(rng, rho / 1.3)  # fibres parallel to the rings
    t = np.clip(0.72 * ring + 0.12 * grain + 0.2 * _noise2d(rng, size, size, 3) + 0.1, 0, 1)
    k = int(rng.integers(4))  # oak, pine, walnut, cherry
    light = _jitter(rng, [(.78, .6, .38), (.86, .72, .5), (.55, .4, .27), (.72, .46, .3)][k])
    dark = _jitter(rng, [(.52, .35, .2), (.66, .46, .26), (.3, .2, .13), (.48, .26, .15)][k])
    return _mix(light, dark, t)


def _weave(rng, x, y, size, pitch, twill):
    """Shared weave geometry: per-pixel (warp_on_top, cross-thread profile, along-float position, thread ids)."""
    u, v = _rotate(rng, x, y)
    uu, vv = u / pitch + rng.random() * 8, v / pitch + rng.random() * 8
    iu, iv = np.floor(uu), np.floor(vv)
    fu, fv = uu - iu, vv - iv
    n = 2 if twill else 1  # cells per float: 2x2 twill floats over two cells, plain weave over one
    k = (iu + iv) % (2 * n)
    top = k < n  # warp (runs along u) above weft
    cross = np.where(top, fv, fu)  # position across the visible thread
    along = np.where(top, k + fu, k - n + fv) / n  # position along the visible float, 0..1
    return top, np.sin(np.pi * cross), np.sin(np.pi * along), iu, iv


def _fabric(rng, x, y, size):
    top, cross, along, iu, iv = _weave(rng, x, y, size, rng.uniform(4.5, 7.0), twill=False)
    thread = rng.normal(0, 0.07, 64).astype(_F)  # per-thread dye / thickness irregularity
    tid = np.where(top, iv, iu).astype(np.int64) % 64
    lum = (0.6 + 0.35 * cross * (0.8 + 0.2 * along)) * (1 + thread[tid])  # rounded threads, soft gaps
    lum = lum * (1 + 0.08 * _noise2d(rng, size, size, 5))  # fuzz / wear at ~13 px
    warp_c = _pick(rng, [(.2, .27, .45), (.4, .43, .3), (.7, .64, .5), (.5, .5, .52), (.5, .16, .18), (.3, .4, .55)])
    weft_c = np.clip(warp_c + rng.normal(0, 0.06, 3), 0, 1).astype(_F)  # slightly different yarn colours
    return lum[..., None] * np.where(top[..., None], warp_c, weft_c)


def _stone(rng, x, y, size):
    big = _fbm(rng, size, rng.uniform(2, 4), 3)  # low-frequency mottling (~20 / 10 / 5 px)
    mid = _noise2d(rng, size, size, 16)  # aggregate texture, ~4 px
    spk = _noise2d(rng, size, size, 22)  # sparse flecks, ~3 px
    k = int(rng.integers(4))  # concrete, sandstone, granite, slate
    c1 = _jitter(rng, [(.62, .62, .6), (.78, .7, .55), (.62, .56, .55), (.42, .44, .47)][k], hue=0.012)
    c2 = c1 * np.array([(.72, .72, .74), (.8, .76, .7), (.7, .66, .7), (.7, .72, .74)][k], _F)  # same hue family
    rgb = _mix(c1, c2, np.clip(0.5 + 1.3 * big, 0, 1)) * (1 + 0.13 * mid)[..., None]
    fleck = np.clip((np.abs(spk) - 0.8) * 4, 0, 1) * rng.uniform(0.4, 0.8)  # only the noise extremes: few
    return _mix(rgb, np.where(spk[..., None] > 0, np.minimum(c1 * 1.3, 1), c2 * 0.55), fleck)


def _carbon(rng, x, y, size):
    top, cross, along, iu, iv = _weave(rng, x, y, size, rng.uniform(4.5, 7.5), twill=True)
    bw, bf = rng.uniform(0.35, 0.6), rng.uniform(0.12, 0.3)  # anisotropic gloss: warp / weft tows differ
    if rng.random() < 0.5:
        bw, bf = bf, bw
    lum = 0.07 + np.where(top, bw, bf) * (0.3 + 0.7 * cross ** 0.6) * (0.75 + 0.25 * np.sqrt(along))
    lum = lum * (1 + 0.15 * _noise2d(rng, size, size, 2))  # resin / clear-coat sheen
    return lum[..., None] * _jitter(rng, (.95, .98, 1.05), hue=0.02)


_MATERIAL_FNS = {"brushed_metal": _brushed_metal, "wood": _wood, "fabric": _fabric, "stone": _stone,
                 "carbon": _carbon}


def render_material(rng: np.random.Generator, size: int, material: str) -> np.ndarray:
    """float32 HxWx3 in [0,1], H=W=size. Defect-free textured background."""
    if material not in _MATERIAL_FNS:
        raise ValueError(f"unknown material {material!r}; valid choices: {', '.join(MATERIALS)}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    c = ((np.arange(size, dtype=_F) + 0.5) * (64.0 / size) - 32.0).astype(_F)
    x, y = c[None, :], c[:, None]
    rgb = _MATERIAL_FNS[material](rng, x, y, size)
    # Illumination: linear gradient + broad soft highlight, so that images of one material differ.
    gx, gy = rng.normal(0, 1, 2) * rng.uniform(0.0, 0.25) / 64.0
    hx, hy = rng.uniform(-40, 40, 2)
    spot = np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * rng.uniform(15, 45) ** 2))
    light = rng.uniform(0.85, 1.05) + gx * x + gy * y + rng.uniform(0.0, 0.2) * spot
    rgb = rgb * light[..., None] + rng.normal(0, 0.006, (size, size, 1)).astype(_F)  # a little sensor grain
    return np.clip(rgb, 0.0, 1.0).astype(_F)


# ----------------------------------------------------------------------------- defects
def _alpha(d: np.ndarray, inner: float = 0.5, outer: float = 0.5) -> np.ndarray:
    """Coverage from signed distance d (px): exactly 0.5 on the boundary, so mask = alpha >= 0.5 <=> d <= 0.
    Rises to 1 over `inner` px inward; falls to 0 over `outer` (<= 1) px outward (the anti-aliasing band)."""
    return np.where(d <= 0, 0.5 + 0.5 * np.minimum(-d / inner, 1.0), 0.5 * np.maximum(1.0 - d / outer, 0.0)).astype(_F)


def _box(h, w, ys, xs, pad):
    """Integer bounding box (clipped to the image) of points plus padding: defects are evaluated only there."""
    y0, y1 = int(max(0, np.floor(ys.min() - pad))), int(min(h, np.ceil(ys.max() + pad) + 1))
    x0, x1 = int(max(0, np.floor(xs.min() - pad))), int(min(w, np.ceil(xs.max() + pad) + 1))
    return y0, y1, x0, x1


def _segments_sdf(a: np.ndarray, b: np.ndarray, hw: np.ndarray, h: int, w: int):
    """Signed distance (px) to a union of capsules (segments a->b, (n,2) as (y,x), half-widths hw), in a box."""
    box = _box(h, w, np.r_[a[:, 0], b[:, 0]], np.r_[a[:, 1], b[:, 1]], hw.max() + 2)
    py = np.arange(box[0], box[1], dtype=_F)[:, None, None]
    px = np.arange(box[2], box[3], dtype=_F)[None, :, None]
    ab = (b - a).astype(_F)
    t = ((py - a[:, 0]) * ab[:, 0] + (px - a[:, 1]) * ab[:, 1]) / np.maximum((ab ** 2).sum(1), 1e-6)
    t = np.clip(t, 0, 1)
    dist = np.sqrt((py - a[:, 0] - t * ab[:, 0]) ** 2 + (px - a[:, 1] - t * ab[:, 1]) ** 2)
    return box, (dist - hw).min(-1)


def _contrast_towards(img: np.ndarray, target: np.ndarray, delta: float) -> float:
    """Blend factor c so that mean |c * (target - img)| is about `delta` (controls defect contrast)."""
    return float(np.clip(delta / max(float(np.abs(target - img).mean()), 1e-3), 0.0, 1.0))


def _scratch(rng, img, s):
    h, w = img.shape[:2]
    length, m = rng.uniform(0.25, 0.7) * min(h, w), 2 * s + 1
    for _ in range(50):  # retry until the whole chord is inside the image
        p0 = rng.uniform([m, m], [h - 1 - m, w - 1 - m])
        ang = rng.uniform(0, _TAU)
        p2 = p0 + length * np.array([np.sin(ang), np.cos(ang)])
        if m <= p2[0] <= h - 1 - m and m <= p2[1] <= w - 1 - m:
            break
    p2 = np.clip(p2, m, [h - 1 - m, w - 1 - m])
    p1 = (p0 + p2) / 2 + rng.uniform(-0.3, 0.3) * length * np.array([np.cos(ang), -np.sin(ang)])
    p1 = np.clip(p1, m, [h - 1 - m, w - 1 - m])  # Bezier stays in the hull of its control points: inside
    t = np.linspace(0, 1, max(12, int(length / 2)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2
    tm = (t[1:, 0] + t[:-1, 0]) / 2
    hw = np.maximum(max(0.5, 0.5 * s), rng.uniform(0.5, 1.0) * s * np.sin(np.pi * tm) ** 0.3)  # 1-2 px, tapered
    box, d = _segments_sdf(pts[:-1], pts[1:], hw, h, w)
    bg = img[box[0]:box[1], box[2]:box[3]]
    sel = bg[d <= 0]
    delta = rng.uniform(0.12, 0.4) + 0.5 * float(bg.mean(-1).std())  # busier texture: stronger scratch
    bright = rng.random() < 0.5 if sel.mean() < 0.55 else rng.random() < 0.25  # room to go brighter?
    goal = np.ones_like(bg) if bright else np.zeros_like(bg)
    c = _contrast_towards(sel, goal[d <= 0], delta)
    return box, _alpha(d), bg + c * (goal - bg)


def _crack(rng, img, s):
    h, w = img.shape[:2]
    m = 2 * s + 1
    lo, hi = np.array([m, m]), np.array([h - 1 - m, w - 1 - m])

    def walk(p, main, n, step):  # jagged random walk that keeps its general heading; stops at the border
        pts, ang = [p], main
        for _ in range(n):
            ang = main + 0.5 * (ang - main) + rng.normal(0, 0.55)
            q = pts[-1] + step * rng.uniform(0.6, 1.4) * np.array([np.sin(ang), np.cos(ang)])
            if np.any(q < lo) or np.any(q > hi):
                break
            pts.append(q)
        return np.array(pts)

    main, step = rng.uniform(0, _TAU), rng.uniform(2.5, 5.0) * s
    n = int(rng.uniform(0.3, 0.6) * min(h, w) / step)
    for _ in range(10):  # retry until the walk is not cut short by the border
        start = rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo))
        trunk = walk(start, main, n, step)
        if len(trunk) > max(2, n * 0.6):
            break
        main += rng.uniform(0.5, np.pi)  # head somewhere else
    k = len(trunk) - 1
    tm = (np.arange(k) + 0.5) / max(k, 1)
    a, b = [trunk[:-1]], [trunk[1:]]
    hws = [np.maximum(max(0.5, 0.5 * s), rng.uniform(0.5, 1.0) * s * np.sin(np.pi * tm) ** 0.5)]
    for _ in range(int(rng.integers(0, 3)) if k >= 3 else 0):  # 0-2 short thin branches
        br = walk(trunk[int(rng.integers(1, k))], main + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                  max(1, int(n * rng.uniform(0.15, 0.35))), step * 0.8)
        if len(br) > 1:
            a.append(br[:-1]), b.append(br[1:]), hws.append(np.full(len(br) - 1, max(0.5, 0.5 * s)))
    box, d = _segments_sdf(np.concatenate(a), np.concatenate(b), np.concatenate(hws), h, w)
    bg = img[box[0]:box[1], box[2]:box[3]]
    if bg.mean() < 0.3:  # on dark surfaces (carbon) a dark crack hides in the seams: show stress-whitening
        return box, _alpha(d), bg + rng.uniform(0.35, 0.6) * (0.8 - bg)
    return box, _alpha(d), bg * rng.uniform(0.08, 0.35)


def _blob(rng, img, r_px, aspect, wobble, harmonics, margin):
    """Irregular star-shaped blob: ellipse with random radial harmonics. Returns box, d (px), q = rho / r(theta)."""
    h, w = img.shape[:2]
    cy, cx = rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin)
    ks = np.arange(2, 2 + harmonics)
    amp = rng.uniform(0, wobble, harmonics) / ks ** 1.2  # low harmonics dominate: blobs, not stars
    phs = rng.uniform(0, _TAU, harmonics)
    box = _box(h, w, np.array([cy]), np.array([cx]), r_px * (1 + amp.sum()) + 2)
    ey, ex = _rotate(rng, np.arange(box[2], box[3], dtype=_F)[None, :] - cx,
                     np.arange(box[0], box[1], dtype=_F)[:, None] - cy)
    ey = ey / aspect
    rho, th = np.sqrt(ex ** 2 + ey ** 2), np.arctan2(ey, ex)
    r = r_px * np.maximum(1 + (amp[:, None, None] * np.cos(ks[:, None, None] * th + phs[:, None, None])).sum(0), 0.3)
    f = rho - r
    gy, gx = np.gradient(f)  # d ~ f / |grad f| (px): first-order distance, keeps the AA band ~1 px wide
    return box, (f / np.maximum(np.sqrt(gx ** 2 + gy ** 2), 0.05)).astype(_F), rho / r, th


def _hole(rng, img, s):
    r = rng.uniform(3, 10) * s
    box, d, q, th = _blob(rng, img, r, rng.uniform(0.65, 1.0), 0.4, 4, r * 1.3 + 1)
    bg = img[box[0]:box[1], box[2]:box[3]]
    core = bg * rng.uniform(0.04, 0.2)  # deep, nearly black interior
    lit = 0.5 + 0.5 * np.cos(th - rng.uniform(0, _TAU))  # light direction: one wall lit, the other in shadow
    rim = np.clip((q - 0.6) / 0.4, 0, 1) ** 2 * lit  # lighter raised rim / lit wall near the edge
    rim_c = np.clip(bg * 1.1 + 0.12, 0, 1)
    return box, _alpha(d), core + (rim_c - core) * rim[..., None]


_TINTS = np.array([(.55, .3, .12), (.12, .1, .07), (.3, .45, .25), (.9, .9, .84), (.35, .3, .45), (.62, .56, .34)], _F)
# rust, oil, chemical/mould, white residue, ink, dried coolant


def _stain(rng, img, s):
    r = rng.uniform(5, 16) * s
    box, d, q, th = _blob(rng, img, r, rng.uniform(0.5, 1.0), 0.9, 6, 0.75 * r)
    alpha = _alpha(d, inner=rng.uniform(1.5, 4.0) * s, outer=0.75)  # soft edge fades inside the mask
    bg, inside = img[box[0]:box[1], box[2]:box[3]], d <= 0
    sel = bg[inside]
    busy = float(bg.mean(-1).std())  # busy textures (wood rings, weaves) need more contrast to stay visible
    delta = min(rng.uniform(0.05, 0.16) + 0.5 * busy, 0.25) / float(alpha[inside].mean())  # low, some subtle
    dist = np.abs(_TINTS - sel.mean(0)).mean(1)
    ok = np.flatnonzero(dist >= 1.2 * delta)  # tints far enough from the surface to reach that contrast
    tint = _TINTS[ok[int(rng.integers(len(ok)))]] if len(ok) else _TINTS[int(np.argmax(dist))]
    c = _contrast_towards(sel, tint, delta)
    var = 1 + 0.35 * _noise2d(rng, box[1] - box[0], box[3] - box[2], 3)  # uneven deposit
    if rng.random() < 0.3:
        var = var * (1 + 0.6 * np.clip((q - 0.7) / 0.3, 0, 1))  # "coffee ring": darker rim
    app = bg + np.clip(c * var, 0, 1)[..., None] * (tint - bg)
    return box, alpha, app


_DEFECT_FNS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain}


def render_defect(rng: np.random.Generator, image: np.ndarray, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of the given type on a copy of `image` (float32 HxWx3 [0,1]).
    Returns (new_image float32 HxWx3 in [0,1], mask bool HxW)."""
    if defect not in _DEFECT_FNS:
        raise ValueError(f"unknown defect {defect!r}; valid choices: {', '.join(DEFECTS)}")
    image = np.asarray(image, _F)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 16:
        raise ValueError(f"image must be HxWx3 with H, W >= 16, got shape {image.shape}")
    s = min(image.shape[:2]) / 64.0
    if image.size and (image.min() < 0 or image.max() > 1):
        raise ValueError("image values must lie in [0, 1] (float32, not uint8)")
    for _ in range(20):  # regenerate in the (practically impossible) case of an empty mask
        (y0, y1, x0, x1), alpha, app = _DEFECT_FNS[defect](rng, image, s)
        mask_box = alpha >= 0.5
        if mask_box.any():
            break
    else:
        raise RuntimeError(f"could not place a {defect} on a {image.shape[:2]} image")
    out, mask = image.copy(), np.zeros(image.shape[:2], bool)
    a = alpha[..., None]
    blend = (1.0 - a) * image[y0:y1, x0:x1] + a * np.clip(app, 0, 1)  # alpha == 0: bit-identical background
    out[y0:y1, x0:x1] = np.clip(blend, 0, 1)  # (clip only absorbs float32 rounding above 1)
    mask[y0:y1, x0:x1] = mask_box
    return out, mask


def render_sample(rng: np.random.Generator, size: int, material: str,
                  defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 image, bool HxW mask (all False when defect is None)."""
    if defect is not None and defect not in _DEFECT_FNS:  # validate before consuming the rng
        raise ValueError(f"unknown defect {defect!r}; valid choices: {', '.join(DEFECTS)}")
    image = render_material(rng, size, material)
    mask = np.zeros((size, size), bool)
    if defect is not None:
        image, mask = render_defect(rng, image, defect)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask
