"""`shapes`: a generated 10-class image set for the demo (no download, a few seconds to make).

Each image holds one shape of a class on a noisy textured background, with random position,
size, rotation (within +-25 degrees, so plus and x stay distinct), colours and contrast; a small
distractor blob and pixel noise keep it from being trivially separable. Deterministic from
(num_samples, size, seed); cached as uint8 in an .npz written atomically.
"""

import hashlib
from pathlib import Path

import numpy as np

from compressor.data.validate import cached, labels
from compressor.errors import CompressorError

CLASSES = ("disk", "ring", "square", "square_outline", "triangle", "plus", "x_cross",
           "h_stripes", "v_stripes", "ellipse")
VERSION = 1  # part of the cache key: bump when the generator changes


def _masks(kind: np.ndarray, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Boolean (N, H, W) shape masks; u, v are per-image rotated coordinates, s the size."""
    r = np.sqrt(u**2 + v**2)
    box = np.maximum(np.abs(u), np.abs(v))
    bar = s / 4
    arms = lambda a, b: ((np.abs(a) < bar) & (np.abs(b) < s)) | (  # noqa: E731
        (np.abs(b) < bar) & (np.abs(a) < s))
    d1, d2 = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
    period = np.maximum(s / 2.2, 1.6)
    shapes = [
        r < s,
        (r < s) & (r > 0.55 * s),
        box < 0.8 * s,
        (box < 0.85 * s) & (box > 0.5 * s),
        (v < 0.5 * s) & (np.sqrt(3) * u - v < s) & (-np.sqrt(3) * u - v < s),
        arms(u, v),
        arms(d1, d2),
        (r < s) & (np.sin(np.pi * v / period) > 0),
        (r < s) & (np.sin(np.pi * u / period) > 0),
        (u / s) ** 2 + (v / (0.45 * s)) ** 2 < 1,
    ]
    out = np.zeros(u.shape, dtype=bool)
    for index, mask in enumerate(shapes):
        out |= mask & (kind == index)[:, None, None]
    return out


def _draw(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(CLASSES), n)
    grid = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    col = lambda *shape: rng.uniform(0, 1, (n, 3, *shape)).astype(np.float32)  # noqa: E731
    scale = rng.uniform(0.26, 0.42, n) * size
    cx, cy = (rng.uniform(0.35, 0.65, (2, n)) * size)
    angle = np.deg2rad(rng.uniform(-25, 25, n))
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    mask = _masks(labels, cos * dx + sin * dy, -sin * dx + cos * dy, scale[:, None, None])
    # background: a colour plus a random low-frequency gradient texture
    ramp = (rng.normal(0, 1, (n, 1, 1)) * xx + rng.normal(0, 1, (n, 1, 1)) * yy) / size
    background = col(1, 1) * 0.6 + 0.2 + 0.15 * ramp[:, None]
    foreground = np.clip(background + rng.choice([-1, 1], (n, 1, 1, 1))
                         * rng.uniform(0.3, 0.6, (n, 1, 1, 1)), 0, 1) * np.ones((1, 3, 1, 1))
    foreground = foreground * rng.uniform(0.7, 1.3, (n, 3, 1, 1))
    image = np.where(mask[:, None], foreground, background)
    blob = ((xx[None] - rng.uniform(0, size, (n, 1, 1))) ** 2
            + (yy[None] - rng.uniform(0, size, (n, 1, 1))) ** 2) < (size / 10) ** 2
    image = np.where(blob[:, None], col(1, 1), image)
    image = image + rng.normal(0, 0.08, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def _check(arrays: dict, path: Path, num_samples: int, size: int) -> None:
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.shape != (num_samples, 3, size, size):
        raise CompressorError(f"cached dataset {path} holds x {x.dtype} {x.shape}, expected "
                              f"uint8 {(num_samples, 3, size, size)}")
    labels(y, num_samples, f"cached dataset {path}")
    if int(y.max()) >= len(CLASSES):
        raise CompressorError(f"cached dataset {path} holds label {int(y.max())}, expected "
                              f"0..{len(CLASSES) - 1}")


def shape_arrays(num_samples: int, size: int, seed: int, cache_dir: Path):
    """(x uint8 (N, 3, size, size), y int64 (N,)), generated once and cached in cache_dir."""
    if num_samples < 20 or size < 8:
        raise CompressorError(f"shapes: need num_samples >= 20 and size >= 8, got "
                              f"{num_samples} and {size}")
    key = hashlib.sha1(f"{VERSION}-{num_samples}-{size}-{seed}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"shapes-{key}.npz"

    def make():
        x, y = _draw(num_samples, size, np.random.default_rng(seed))
        return {"x": x, "y": y}

    arrays = cached(path, ("x", "y"), make, lambda a: _check(a, path, num_samples, size))
    return arrays["x"], arrays["y"]
