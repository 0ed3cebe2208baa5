"""Synthetic faces: each identity a fixed set of face-like traits, each image a new pose, light and camera.

The point is a competition that a small network can learn in minutes on a CPU but that is not trivial: identities
differ by continuous traits (face shape, skin tone, eye spacing, hair, ...), while backgrounds, pose, lighting,
noise and JPEG quality change from image to image, so shortcuts do not work.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 58, 30]])
_HAIR = np.array([[20, 20, 20], [70, 45, 25], [130, 85, 45], [200, 160, 90], [160, 60, 30], [150, 150, 150]])
_IRIS = np.array([[60, 40, 20], [40, 90, 160], [70, 120, 60], [110, 80, 40], [90, 90, 100]])


@dataclass(frozen=True)
class Traits:
    """What stays the same across all images of one identity (coordinates are fractions of the image)."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    face_w: float
    face_h: float
    jaw: float
    eye_y: float
    eye_gap: float
    eye_size: float
    brow_tilt: float
    brow_weight: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    smile: float
    hair_style: int  # 0 short, 1 long, 2 bald, 3 fringe
    beard: bool
    glasses: bool


def _jitter_colour(rng: np.random.Generator, palette: np.ndarray, spread: float) -> tuple[int, int, int]:
    base = palette[rng.integers(len(palette))].astype(float)
    return tuple(int(v) for v in np.clip(base + rng.normal(0, spread, 3), 0, 255))


def random_traits(rng: np.random.Generator) -> Traits:
    return Traits(
        skin=_jitter_colour(rng, _SKIN, 12),
        hair=_jitter_colour(rng, _HAIR, 15),
        iris=_jitter_colour(rng, _IRIS, 15),
        lips=_jitter_colour(rng, np.array([[180, 80, 80], [150, 70, 70], [200, 110, 110]]), 15),
        face_w=rng.uniform(0.27, 0.37),
        face_h=rng.uniform(0.36, 0.46),
        jaw=rng.uniform(0.0, 0.12),
        eye_y=rng.uniform(-0.10, 0.0),
        eye_gap=rng.uniform(0.09, 0.16),
        eye_size=rng.uniform(0.03, 0.055),
        brow_tilt=rng.uniform(-0.03, 0.03),
        brow_weight=rng.uniform(0.008, 0.025),
        nose_len=rng.uniform(0.06, 0.14),
        nose_w=rng.uniform(0.025, 0.06),
        mouth_y=rng.uniform(0.14, 0.22),
        mouth_w=rng.uniform(0.07, 0.15),
        smile=rng.uniform(-0.02, 0.04),
        hair_style=int(rng.integers(4)),
        beard=bool(rng.random() < 0.25),
        glasses=bool(rng.random() < 0.25),
    )


def render_face(traits: Traits, rng: np.random.Generator, size: int) -> bytes:
    """One JPEG photograph of the identity: random pose, expression, background, light, noise and quality."""
    scale = 2  # draw at twice the size, then downsample: cheap anti-aliasing
    s = size * scale
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (s, s), background)
    d = ImageDraw.Draw(img)

    zoom = rng.uniform(0.85, 1.12)
    cx = s * (0.5 + rng.uniform(-0.06, 0.06))
    cy = s * (0.52 + rng.uniform(-0.06, 0.06))
    yaw = rng.uniform(-0.05, 0.05)  # features slide sideways as the head turns

    def px(x: float, y: float) -> tuple[float, float]:
        return cx + (x + yaw) * s * zoom, cy + y * s * zoom

    def box(x: float, y: float, w: float, h: float) -> list[float]:
        (x0, y0), (x1, y1) = px(x - w, y - h), px(x + w, y + h)
        return [x0, y0, x1, y1]

    t = traits
    fw, fh = t.face_w * (1 - abs(yaw) * 2), t.face_h
    if t.hair_style == 1:
        d.ellipse(box(-yaw, 0.08, fw * 1.2, fh * 1.05), fill=t.hair)
    d.ellipse(box(-fw * 0.98 - yaw, 0.0, 0.04, 0.07), fill=t.skin)  # ears
    d.ellipse(box(fw * 0.98 - yaw, 0.0, 0.04, 0.07), fill=t.skin)
    d.ellipse(box(-yaw, 0.0, fw, fh), fill=t.skin)
    d.ellipse(box(-yaw, fh * 0.55, fw * (1 - t.jaw * 2), fh * 0.5), fill=t.skin)
    if t.hair_style in (0, 1):
        d.chord(box(-yaw, -fh * 0.45, fw * 1.02, fh * 0.62), 180, 360, fill=t.hair)
    elif t.hair_style == 3:
        d.chord(box(-yaw, -fh * 0.35, fw * 1.02, fh * 0.68), 175, 365, fill=t.hair)
    if t.beard:
        d.chord(box(-yaw, fh * 0.45, fw * 0.85, fh * 0.5), 0, 180, fill=t.hair)

    blink = rng.random() < 0.08
    for side in (-1, 1):
        ex, ey = side * t.eye_gap, t.eye_y
        if blink:
            d.line([px(ex - t.eye_size, ey), px(ex + t.eye_size, ey)], fill=(40, 30, 30), width=max(1, s // 80))
        else:
            d.ellipse(box(ex, ey, t.eye_size * 1.3, t.eye_size * 0.75), fill=(245, 245, 245))
            gaze = rng.uniform(-0.3, 0.3) * t.eye_size
            d.ellipse(box(ex + gaze, ey, t.eye_size * 0.6, t.eye_size * 0.6), fill=t.iris)
            d.ellipse(box(ex + gaze, ey, t.eye_size * 0.25, t.eye_size * 0.25), fill=(10, 10, 10))
        by = ey - t.eye_size * 1.6
        d.line(
            [px(ex - t.eye_size * 1.4, by + side * t.brow_tilt), px(ex + t.eye_size * 1.4, by - side * t.brow_tilt)],
            fill=tuple(int(c * 0.8) for c in t.hair),
            width=max(1, int(t.brow_weight * s * zoom)),
        )
        if t.glasses:
            d.ellipse(box(ex, ey, t.eye_size * 2.0, t.eye_size * 1.6), outline=(30, 30, 30), width=max(1, s // 70))
    shade = tuple(int(c * 0.75) for c in t.skin)
    d.polygon(
        [px(0, t.eye_y + 0.03), px(-t.nose_w, t.eye_y + t.nose_len), px(t.nose_w, t.eye_y + t.nose_len)], fill=shade
    )
    smile = t.smile + rng.uniform(-0.02, 0.02)
    mouth = box(0, t.mouth_y - smile, t.mouth_w, abs(smile) + 0.012)
    if smile >= 0:
        d.chord(mouth, 0, 180, fill=t.lips)
    else:
        d.chord(mouth, 180, 360, fill=t.lips)

    img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=background)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * scale))
    img = img.resize((size, size), Image.BILINEAR)
    return _camera(np.asarray(img, dtype=np.float32), rng)


def _camera(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    """Directional light, white balance, sensor noise and a JPEG round trip of random quality."""
    h, w, _ = pixels.shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w) - 0.5
    light = 1 + rng.uniform(0, 0.6) * (np.cos(angle) * xx + np.sin(angle) * yy)
    gain = rng.uniform(0.65, 1.3) * rng.uniform(0.9, 1.1, 3)
    pixels = pixels * light[..., None] * gain + rng.normal(0, rng.uniform(0, 10), pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(40, 96)))
    return buffer.getvalue()
