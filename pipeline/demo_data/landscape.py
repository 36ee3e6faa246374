"""Procedural landscapes: the project's own offline data (images, videos and their captions).

A `Scene` is a small set of parameters (time of day, clouds, mountains, snow, ground, trees,
horizon, sun); `render` turns it into pixels and `caption` into words, so every caption is true
of its picture by construction.

Choices this module makes:
- Coordinates. Every pixel is a function of absolute scene coordinates measured in image
  heights, u = (x + x_offset + 0.5) / height and v = (y + 0.5) / height (v grows downwards).
  A render W pixels wide is a window onto an endless scene: a wider render continues the
  narrower one, and its left part equals the narrower render pixel for pixel, because every
  step is element-wise and nothing depends on the width (the demo samples panoramas 4x wider
  than the training images and compares their structure with this continuation).
- Noise. Value noise on an integer lattice hashed with splitmix64: no tables and no state, so
  it can be evaluated at any point in any order and is identical for the same seed everywhere.
- Large structure first. Each time of day has its own clearly different palette and the frame
  is always split into sky / mountains / water or land bands, which a small model learns at
  128 x 128; fine texture (rock, grass, ripples, stars) sits on top.
- Water mirrors the whole upper scene (sky, clouds, sun, mountains) about the horizon, with
  ripples, darkening with depth, and a glitter path under the sun or moon.
- Time. `render(..., t)` moves what moves by itself: clouds drift with `Scene.wind`, ripples
  shift, the sun sinks at sunset and rises at dawn (the camera pan and the pasted objects of
  the demo videos are in `pipeline.demo_data.make`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

TimeOfDay = Literal["dawn", "day", "sunset", "dusk", "night"]
Clouds = Literal["clear", "scattered", "cloudy"]
Ground = Literal["lake", "sea", "field"]

TIMES: tuple[str, ...] = ("dawn", "day", "sunset", "dusk", "night")
CLOUDS: tuple[str, ...] = ("clear", "scattered", "cloudy")
GROUNDS: tuple[str, ...] = ("lake", "sea", "field")


# ----------------------------------------------------------------------------------------- palettes

def _rgb(*c: int) -> np.ndarray:
    return np.array(c, dtype=np.float64) / 255.0


# zenith, horizon: the sky gradient; light: the sun or moon colour (None at dusk: below the
# horizon); mountain/snow/water/grass/field/tree: surfaces; cloud_lit/cloud_dark: cloud edge and
# core; ambient: how bright the lit ground is.
PALETTES: dict[str, dict[str, np.ndarray | float | None]] = {
    "dawn": dict(zenith=_rgb(80, 95, 160), horizon=_rgb(250, 190, 170), light=_rgb(255, 235, 200),
                 mountain=_rgb(95, 85, 120), snow=_rgb(250, 222, 226), water=_rgb(70, 75, 120),
                 grass=_rgb(70, 100, 62), field=_rgb(150, 135, 90), tree=_rgb(30, 40, 45),
                 cloud_lit=_rgb(255, 210, 205), cloud_dark=_rgb(160, 135, 160), ambient=0.8),
    "day": dict(zenith=_rgb(45, 110, 210), horizon=_rgb(175, 210, 240), light=_rgb(255, 250, 225),
                mountain=_rgb(80, 95, 115), snow=_rgb(245, 248, 255), water=_rgb(30, 80, 125),
                grass=_rgb(80, 140, 50), field=_rgb(190, 170, 80), tree=_rgb(20, 55, 30),
                cloud_lit=_rgb(255, 255, 255), cloud_dark=_rgb(180, 188, 205), ambient=1.0),
    "sunset": dict(zenith=_rgb(75, 55, 115), horizon=_rgb(255, 140, 50), light=_rgb(255, 215, 120),
                   mountain=_rgb(75, 45, 65), snow=_rgb(255, 185, 140), water=_rgb(80, 45, 60),
                   grass=_rgb(80, 75, 30), field=_rgb(150, 100, 45), tree=_rgb(35, 20, 25),
                   cloud_lit=_rgb(255, 160, 90), cloud_dark=_rgb(120, 65, 90), ambient=0.7),
    "dusk": dict(zenith=_rgb(25, 25, 72), horizon=_rgb(160, 92, 128), light=None,
                 mountain=_rgb(42, 34, 62), snow=_rgb(140, 128, 168), water=_rgb(30, 26, 58),
                 grass=_rgb(40, 52, 42), field=_rgb(70, 60, 58), tree=_rgb(12, 12, 22),
                 cloud_lit=_rgb(140, 95, 130), cloud_dark=_rgb(55, 45, 78), ambient=0.6),
    "night": dict(zenith=_rgb(3, 5, 18), horizon=_rgb(30, 40, 78), light=_rgb(240, 240, 225),
                  mountain=_rgb(10, 13, 28), snow=_rgb(88, 100, 128), water=_rgb(8, 12, 30),
                  grass=_rgb(14, 26, 24), field=_rgb(30, 32, 36), tree=_rgb(2, 4, 8),
                  cloud_lit=_rgb(62, 68, 90), cloud_dark=_rgb(22, 25, 38), ambient=0.5),
}


# ----------------------------------------------------------------------------------------- noise

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche on uint64 (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def hash01(seed: int, *coords: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) for each integer lattice point (float64), fixed by `seed`."""
    h = np.uint64(((seed + 1) * _GOLDEN) & _MASK64)
    for c in coords:
        c = np.asarray(c, dtype=np.int64).view(np.uint64)
        h = _mix(h ^ (c + np.uint64(_GOLDEN)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smooth(f: np.ndarray) -> np.ndarray:
    return f * f * (3.0 - 2.0 * f)


def noise1(x: np.ndarray, seed: int) -> np.ndarray:
    """1-D value noise in [0, 1], smooth, one lattice cell per unit of x."""
    i = np.floor(x)
    s = _smooth(x - i)
    i = i.astype(np.int64)
    a, b = hash01(seed, i), hash01(seed, i + 1)
    return a + (b - a) * s


def noise2(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """2-D value noise in [0, 1] (bilinear over hashed lattice corners, smoothstep weights)."""
    ix, iy = np.floor(x), np.floor(y)
    sx, sy = _smooth(x - ix), _smooth(y - iy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    a, b = hash01(seed, ix, iy), hash01(seed, ix + 1, iy)
    c, d = hash01(seed, ix, iy + 1), hash01(seed, ix + 1, iy + 1)
    top = a + (b - a) * sx
    bottom = c + (d - c) * sx
    return top + (bottom - top) * sy


def fbm1(x: np.ndarray, seed: int, octaves: int = 5, ridged: bool = False) -> np.ndarray:
    """Fractal sum of 1-D noise in [0, 1]; `ridged` folds each octave (sharp peaks, for mountains)."""
    total, norm, amp, freq = 0.0, 0.0, 1.0, 1.0
    for k in range(octaves):
        n = noise1(x * freq + 13.7 * k, seed + 7919 * k)
        if ridged:
            n = 1.0 - np.abs(2.0 * n - 1.0)
            n = n * n
        total = total + amp * n
        norm += amp
        amp *= 0.5
        freq *= 2.03
    return total / norm


def fbm2(x: np.ndarray, y: np.ndarray, seed: int, octaves: int = 4) -> np.ndarray:
    """Fractal sum of 2-D noise in [0, 1]."""
    total, norm, amp, freq = 0.0, 0.0, 1.0, 1.0
    for k in range(octaves):
        total = total + amp * noise2(x * freq + 5.3 * k, y * freq - 3.1 * k, seed + 104729 * k)
        norm += amp
        amp *= 0.5
        freq *= 2.07
    return total / norm


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours: a, b are [..., 3] or [3]; t is [...] (broadcast over the channel)."""
    t = np.asarray(t)[..., None]
    return a + (b - a) * t


# ----------------------------------------------------------------------------------------- scene

@dataclass(frozen=True)
class Scene:
    """Everything a landscape picture is made of; `caption(scene)` is derived from these fields."""

    seed: int  # the noise seed: ridge shapes, clouds, stars, trees, texture
    time_of_day: TimeOfDay
    clouds: Clouds
    mountain_layers: int  # 1-3 ridges, far to near, each hazier with distance
    mountain_height: float  # tallest far ridge above the horizon, in image heights (< 0.16: hills)
    snow: bool  # snow caps on the higher peaks
    ground: Ground  # lake (water then a grassy shore), sea (water to the bottom), field (land)
    trees: bool  # conifer silhouettes: on the lake shore, or a tree line on the field horizon
    horizon: float  # where sky/mountains meet water or land, in image heights from the top
    sun_u: float  # absolute horizontal position of the sun or moon, in image heights
    sun_v: float  # its height (below the horizon at dusk: only its glow shows)
    wind: float  # cloud drift in image heights per second (videos)
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)  # small per-scene colour cast

    def __post_init__(self):
        if self.time_of_day not in TIMES:
            raise ValueError(f"time_of_day must be one of {TIMES}, got {self.time_of_day!r}")
        if self.clouds not in CLOUDS:
            raise ValueError(f"clouds must be one of {CLOUDS}, got {self.clouds!r}")
        if self.ground not in GROUNDS:
            raise ValueError(f"ground must be one of {GROUNDS}, got {self.ground!r}")
        if not 1 <= self.mountain_layers <= 3:
            raise ValueError(f"mountain_layers must be 1..3, got {self.mountain_layers}")
        if not 0.3 <= self.horizon <= 0.8:
            raise ValueError(f"horizon must be within [0.3, 0.8] image heights, got {self.horizon}")

    @property
    def hills(self) -> bool:
        return self.mountain_height < 0.16

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        d = dict(d)
        d["tint"] = tuple(d.get("tint", (0.0, 0.0, 0.0)))
        return cls(**d)


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene drawn from the demo's distribution (every combination is reachable)."""
    time = TIMES[int(rng.integers(len(TIMES)))]
    clouds = CLOUDS[int(rng.choice(3, p=[0.35, 0.4, 0.25]))]
    ground = GROUNDS[int(rng.choice(3, p=[0.45, 0.2, 0.35]))]
    layers = int(rng.integers(1, 4))
    height = float(rng.uniform(0.1, 0.4))
    snow = bool(height > 0.2 and rng.random() < 0.65)
    trees = bool(ground != "sea" and rng.random() < 0.55)
    horizon = float(rng.uniform(0.5, 0.66))
    sun_u = float(rng.uniform(0.0, 1.0))
    if time in ("day", "night"):
        sun_v = float(rng.uniform(0.1, 0.3))
    elif time == "dusk":
        sun_v = horizon + 0.06
    else:  # low sun at dawn and sunset, often touching the ridges
        sun_v = float(horizon - rng.uniform(0.12, 0.3))
    wind = float(rng.uniform(0.02, 0.06) * rng.choice([-1.0, 1.0]))
    tint = tuple(float(t) for t in rng.uniform(-0.05, 0.05, size=3))
    return Scene(seed=int(rng.integers(2**31 - 1)), time_of_day=time, clouds=clouds,
                 mountain_layers=layers, mountain_height=height, snow=snow, ground=ground,
                 trees=trees, horizon=horizon, sun_u=sun_u, sun_v=sun_v, wind=wind, tint=tint)


_SKY_WORDS = {
    "dawn": ("a pink dawn sky", "a pale pink sky at dawn"),
    "day": ("a bright blue sky", "a blue daytime sky"),
    "sunset": ("an orange sunset sky", "a glowing orange sky at sunset"),
    "dusk": ("a purple dusk sky", "a violet twilight sky at dusk"),
    "night": ("a dark night sky with the moon", "a moonlit night sky"),
}
_CLOUD_WORDS = {"clear": ("", " without a cloud"), "scattered": (" with scattered clouds", " with a few clouds"),
                "cloudy": (" full of heavy clouds", " covered in thick clouds")}


def caption(scene: Scene) -> str:
    """An English caption that is true of the scene (phrasing varies with the scene's seed)."""
    pick = scene.seed  # variant choice: stable for the scene, different across scenes
    if scene.hills:
        relief = "rolling hills" if scene.mountain_layers > 1 else "a low hill"
    else:
        tall = "high " if scene.mountain_height > 0.26 else ""
        snow = "snowy " if scene.snow else ""
        relief = f"{'layered ' if scene.mountain_layers == 3 else ''}{snow}{tall}mountain ranges" \
            if scene.mountain_layers > 1 else f"a {snow}{tall}mountain ridge"
        if scene.snow and scene.mountain_layers == 1:
            relief = f"a {tall}mountain ridge with snow caps"
    sky = _SKY_WORDS[scene.time_of_day][pick % 2]
    if scene.time_of_day == "night" and scene.clouds == "clear":
        sky = "a starry night sky with the moon"
    cloud = _CLOUD_WORDS[scene.clouds][(pick // 2) % 2]
    if scene.ground == "lake":
        ground = ("above a calm lake", "reflected in a lake")[(pick // 4) % 2]
        if scene.trees:
            ground += " with pine trees on the shore"
    elif scene.ground == "sea":
        ground = ("over the sea", "above a wide sea")[(pick // 4) % 2]
    else:
        land = "green fields" if scene.time_of_day in ("day", "dawn") else "fields"
        ground = f"above {land}"
        if scene.trees:
            ground += " and a line of trees"
    return f"{relief} under {sky}{cloud} {ground}"


# ----------------------------------------------------------------------------------------- render

_PAD = 4  # extra columns rendered on each side of the sky, for the sideways wobble of reflections


def _palette(scene: Scene) -> dict:
    cast = 1.0 + np.asarray(scene.tint)
    return {k: (np.clip(v * cast, 0, 1) if isinstance(v, np.ndarray) else v)
            for k, v in PALETTES[scene.time_of_day].items()}


def _layer_amplitude(scene: Scene, layer: int) -> float:
    return scene.mountain_height * (1.0, 0.7, 0.45)[layer + 3 - scene.mountain_layers]


def _ridge_top(scene: Scene, layer: int, u: np.ndarray) -> np.ndarray:
    """Height above the horizon of ridge `layer` (0 = farthest) at absolute position u."""
    depth = layer + (3 - scene.mountain_layers)  # the nearest ridge is always the lowest and sharpest
    freq = (0.8, 1.4, 2.2)[depth]
    amp = _layer_amplitude(scene, layer)
    shape = fbm1(u * freq + 41.0 * layer, scene.seed + 101 * layer, octaves=6, ridged=not scene.hills)
    shape = _smoothstep(0.12, 0.8, shape) if scene.hills else np.clip((shape - 0.12) / 0.55, 0.0, 1.2)
    return amp * (0.2 + 0.8 * shape)


def _sun_position(scene: Scene, t: float) -> tuple[float, float]:
    rate = {"sunset": 0.02, "dawn": -0.02}.get(scene.time_of_day, 0.0)  # image heights per second
    return scene.sun_u, scene.sun_v + rate * t


def _sky(scene: Scene, pal: dict, u: np.ndarray, v: np.ndarray, t: float, px: float) -> np.ndarray:
    """Sky gradient, stars, sun or moon with its glow, and clouds on a grid [rows, cols]."""
    h, night = scene.horizon, scene.time_of_day == "night"
    sky_t = np.clip(v / h, 0.0, 1.0) ** 1.6
    col = _lerp(pal["zenith"], pal["horizon"], sky_t)
    su, sv = _sun_position(scene, t)
    d = np.hypot(u - su, v - sv)
    if scene.time_of_day in ("night", "dusk"):  # stars: at most one per lattice cell, fewer at dusk
        cell = 1.0 / 36.0
        cu, cv = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
        r = hash01(scene.seed + 9, cu, cv)
        density = 0.3 if night else 0.1
        lit = r < density
        su_ = (cu + 0.2 + 0.6 * hash01(scene.seed + 10, cu, cv)) * cell
        sv_ = (cv + 0.2 + 0.6 * hash01(scene.seed + 11, cu, cv)) * cell
        rad = max(0.0025, 0.6 * px)
        star = np.exp(-((u - su_) ** 2 + (v - sv_) ** 2) / (rad * rad))
        bright = (0.9 if night else 0.45) * lit * (0.4 + 0.6 * r / density)
        col = col + (bright * star * (1.0 - sky_t))[..., None]
    light = pal["light"]
    if night:
        col = col + (0.22 * np.exp(-d / 0.08))[..., None] * np.array([0.5, 0.55, 0.7])
    elif light is None:  # dusk: a warm glow where the sun went down
        glow = 0.35 * np.exp(-np.hypot((u - su) * 0.5, v - sv) / 0.12)
        col = col + glow[..., None] * np.array([0.9, 0.5, 0.4])
    else:
        day = scene.time_of_day == "day"
        glow = np.exp(-d / (0.35 if day else 0.22)) * (0.35 if day else 0.6)
        col = _lerp(col, light, np.clip(glow, 0, 1))
    if light is not None:  # the disc itself (behind clouds and mountains)
        radius = 0.035 if night else (0.045 if scene.time_of_day == "day" else 0.06)
        disc = _smoothstep(radius + px, radius - px, d)
        near = disc > 0
        face = np.broadcast_to(light, col[near].shape)
        if night and near.any():  # the moon's darker maria
            maria = fbm2((u[near] - su) * 40, (v[near] - sv) * 40, scene.seed + 17, octaves=2)
            face = _lerp(light, light * 0.72, _smoothstep(0.45, 0.65, maria))
        col[near] = _lerp(col[near], face, disc[near])
    if scene.clouds != "clear":  # clouds: stretched fractal noise, thresholded, shaded by thickness
        thr = 0.56 if scene.clouds == "scattered" else 0.46
        dens = fbm2((u + scene.wind * t) * 2.6, v * 8.0, scene.seed + 23, octaves=4)
        band = _smoothstep(0.0, 0.08, v) * (1.0 - _smoothstep(h - 0.18, h - 0.03, v))
        cover = _smoothstep(thr, thr + 0.1, dens) * band
        core = np.clip((dens - thr) / 0.25, 0.0, 1.0)
        ccol = _lerp(pal["cloud_lit"], pal["cloud_dark"], core * 0.8)
        if light is not None and not night:  # silver lining near the sun
            ccol = _lerp(ccol, light, np.clip(0.6 * np.exp(-d / 0.15), 0, 1))
        col = _lerp(col, ccol, cover * 0.95)
    return col


def _mountains(scene: Scene, pal: dict, col: np.ndarray, u: np.ndarray, v: np.ndarray,
               u_cols: np.ndarray, px: float) -> np.ndarray:
    """Paint the ridges, far to near, over the sky grid `col` [rows, cols] (in place)."""
    h, n = scene.horizon, scene.mountain_layers
    for layer in range(n):
        top = _ridge_top(scene, layer, u_cols)  # one value per column
        first = int(np.searchsorted(v[:, 0], h - top.max() - 2 * px))  # rows that can hold this ridge
        uu, vv = u[first:], v[first:]
        elev = h - vv
        inside = _smoothstep(-px, px, top[None, :] - elev)
        haze = (0.6, 0.35, 0.08)[layer + 3 - n]
        rock = fbm2(uu * 16.0, vv * 16.0, scene.seed + 31 + layer, octaves=3)
        # Gullies: noise stretched vertically, as erosion runs down the slopes.
        gully = noise2(uu * 30.0, vv * 6.0, scene.seed + 37 + layer) - 0.5
        crest = np.exp(-(top[None, :] - elev) / 0.04)  # the sky-lit rim just under the ridge line
        shade = 0.8 + 0.3 * rock + 0.3 * gully + 0.15 * crest
        base = pal["mountain"] * shade[..., None]
        if scene.snow and not scene.hills:
            line = _layer_amplitude(scene, layer) * 0.6 + 0.05 * (rock - 0.5) + 0.03 * gully
            snowy = _smoothstep(line, line + 0.012, elev)
            base = _lerp(base, pal["snow"] * (0.8 + 0.2 * shade)[..., None], snowy)
        mist = haze + (1 - haze) * 0.4 * np.exp(-elev / 0.025)
        mcol = _lerp(base, pal["horizon"], mist)
        col[first:] = _lerp(col[first:], mcol, inside)
    return col


def _trees(scene: Scene, pal: dict, u_cols: np.ndarray, v_rows: np.ndarray, base_fn, cell: float,
           hmin: float, hmax: float, prob: float, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Conifer silhouettes standing on the line v = base_fn(u): (coverage [rows, cols], colour).

    At most one tree per cell of width `cell`; everything but the outline is per column.
    """
    u, v = u_cols[None, :], v_rows[:, None]
    cover = np.zeros((len(v_rows), len(u_cols)))
    c0 = np.floor(u_cols / cell).astype(np.int64)
    for dc in (-1, 0, 1):  # a tree may be wider than its cell: look at the neighbours too
        c = c0 + dc
        exists = hash01(scene.seed + 51, c) < prob
        if not exists.any():
            continue
        cu = ((c + 0.2 + 0.6 * hash01(scene.seed + 52, c)) * cell)[None, :]
        th = (hmin + (hmax - hmin) * hash01(scene.seed + 53, c))[None, :]
        base = base_fn(cu) + 0.01 * th
        s = np.clip((v - (base - th)) / th, 0.0, 1.0)  # 0 at the tip, 1 at the foot
        half = 0.28 * th * s * (0.7 + 0.3 * (4.0 * s - np.floor(4.0 * s)))  # tiered branches
        half = np.maximum(half, np.where(s > 0.85, 0.04 * th, 0.0))  # trunk
        body = _smoothstep(px, -px, np.abs(u - cu) - half) * (v > base - th) * (v < base)
        cover = np.maximum(cover, body * exists[None, :])
    ug, vg = np.broadcast_arrays(u, v)
    shade = 1.0 + 0.3 * (noise2(ug * 60.0, vg * 60.0, scene.seed + 54) - 0.5)
    return cover, pal["tree"] * shade[..., None]


def _shore(scene: Scene, u: np.ndarray) -> np.ndarray:
    """Where the lake ends and the grassy shore begins (image heights from the top)."""
    return scene.horizon + (1 - scene.horizon) * (0.45 + 0.3 * fbm1(u * 1.3, scene.seed + 61, 3))


def _land(scene: Scene, pal: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Grass and fields below the horizon: perspective bands of crops, lighter and coarser nearby."""
    h = scene.horizon
    dist = np.maximum(v - h, 1e-3)
    if scene.ground == "lake":
        col = pal["grass"] * np.ones_like(u)[..., None]
    else:  # field strips whose depth on screen shrinks towards the horizon (log of ground distance)
        band = np.floor(-np.log(dist) * 2.2 + 1.2 * fbm1(u * 1.7, scene.seed + 71, 3)).astype(np.int64)
        kind = hash01(scene.seed + 72, band)
        col = _lerp(pal["grass"], pal["field"], np.where(kind < 0.6, kind * 0.5, 0.4 + kind * 0.6))
    tex = fbm2(u * 70.0 / (0.3 + 10 * dist), v * 140.0, scene.seed + 73, octaves=2)
    near = _smoothstep(h, 1.0, v)
    col = col * ((0.8 + 0.35 * tex * (0.3 + near)) * (0.85 + 0.25 * near))[..., None]
    far = np.exp(-dist / 0.05)  # aerial haze towards the horizon
    return _lerp(col * pal["ambient"], pal["horizon"] * 0.8, far * 0.6)


def render(scene: Scene, height: int, width: int, x_offset: float = 0.0, t: float = 0.0) -> np.ndarray:
    """The scene as uint8 RGB [height, width, 3]: the window [x_offset, x_offset + width) at time t.

    Pixel (y, x) depends only on (scene, height, x + x_offset, y, t), never on `width`.
    """
    if height < 2 or width < 1:
        raise ValueError(f"render size must be at least 2 x 1, got {height} x {width}")
    pal = _palette(scene)
    px = 1.0 / height  # one pixel in scene units, for anti-aliased edges
    h = scene.horizon
    v_all = (np.arange(height, dtype=np.float64) + 0.5) / height
    n_sky = int(np.count_nonzero(v_all < h))
    # The upper scene (sky + mountains) on a grid _PAD columns wider on each side; the water
    # below reflects it by looking pixels up in this grid.
    u_cols = (np.arange(-_PAD, width + _PAD, dtype=np.float64) + x_offset + 0.5) / height
    u_up, v_up = np.meshgrid(u_cols, v_all[:n_sky])
    upper = _mountains(scene, pal, _sky(scene, pal, u_up, v_up, t, px), u_up, v_up, u_cols, px)
    out = np.empty((height, width, 3), dtype=np.float64)
    out[:n_sky] = upper[:, _PAD:_PAD + width]

    u, v = np.meshgrid(u_cols[_PAD:_PAD + width], v_all[n_sky:])
    col = np.empty(u.shape + (3,), dtype=np.float64)
    if scene.ground == "sea":
        water = np.ones(u.shape, dtype=bool)
    elif scene.ground == "lake":
        water = v < _shore(scene, u_cols[_PAD:_PAD + width])[None, :]
    else:
        water = np.zeros(u.shape, dtype=bool)
    if water.any():
        yy, xx = np.nonzero(water)
        uw, vw = u[water], v[water]
        dist = vw - h
        # Ripples: the mirror image is displaced by noise, more and coarser with distance.
        wob = noise2(uw * 6.0, dist * 90.0 / (0.2 + 6 * dist) + 0.6 * t, scene.seed + 81) - 0.5
        dx = np.clip(np.rint(wob * 0.06 * dist * height), -_PAD, _PAD).astype(np.int64)
        mirror_y = np.rint(2 * h * height - (yy + n_sky) - 1 + wob * 0.02 * (1 + 8 * dist) * height)
        mirror = upper[np.clip(mirror_y, 0, n_sky - 1).astype(np.int64), xx + _PAD + dx]
        fade = _smoothstep(0.0, 0.35, dist)
        wcol = _lerp(mirror * 0.82, pal["water"], 0.2 + 0.55 * fade)
        streak = noise2(uw * 3.0, dist * 260.0 / (0.3 + 8 * dist), scene.seed + 82)
        wcol = wcol * (0.92 + 0.16 * streak)[..., None]
        su, sv = _sun_position(scene, t)
        if pal["light"] is not None and sv < h:  # glitter path under the sun or moon
            path = np.exp(-((uw - su) / (0.03 + 0.5 * dist)) ** 2) * _smoothstep(0.55, 0.8, streak)
            strength = 0.45 if scene.time_of_day == "night" else 0.7
            wcol = _lerp(wcol, pal["light"], np.clip(path * strength, 0, 1))
        col[water] = wcol
    land = ~water
    if land.any():
        col[land] = _land(scene, pal, u[land], v[land])
    out[n_sky:] = col

    if scene.trees and scene.ground != "sea":
        cols = u_cols[_PAD:_PAD + width]
        if scene.ground == "lake":
            cover, tcol = _trees(scene, pal, cols, v_all, lambda c: _shore(scene, c), 0.09, 0.1, 0.22, 0.5, px)
        else:  # a distant tree line on the horizon, hazed like the far ground
            cover, tcol = _trees(scene, pal, cols, v_all, lambda c: h + 0.0 * c, 0.025, 0.025, 0.06, 0.8, px)
            tcol = _lerp(tcol, pal["horizon"], 0.3)
        out = _lerp(out, tcol, cover)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
