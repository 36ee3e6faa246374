"""The validation curves of an ablation as a PNG (Pillow only): held-out bits per token against epochs.

One line per variant whose bits are comparable (the others are named under the plot), the default
row drawn thicker, each variant's convergence epoch marked with a ring.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipeline import atomic

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (23, 190, 207)]
W, H = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 50, 80


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo if hi > lo else 1.0
    raw = span / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, max(last, first + 1) + 1)]


def draw(result: dict, path: str | Path) -> None:
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    rows = [r for r in result["rows"] if r["bits_comparable"]]
    left_out = [r["label"] for r in result["rows"] if not r["bits_comparable"]]
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    values = [b for r in rows for b in r["bits_per_token"]]
    yt = _ticks(min(values), max(values))
    y0, y1 = yt[0], yt[-1] if yt[-1] > yt[0] else yt[0] + 1
    epochs = max(r["epochs"] for r in rows)
    x_lo, x_hi = 1, max(2, epochs)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(epoch: float, bits: float) -> tuple[float, float]:
        return (LEFT + (epoch - x_lo) / (x_hi - x_lo) * pw, TOP + (y1 - bits) / (y1 - y0) * ph)

    d.text((LEFT, 8), result["title"], fill="black", font=font)
    for t in yt:
        _, y = px(x_lo, t)
        d.line([(LEFT, y), (LEFT + pw, y)], fill=(230, 230, 230))
        d.text((LEFT - 8, y), f"{t:g}", fill="black", font=small, anchor="rm")
    step = max(1, math.ceil(epochs / 12))
    for e in range(1, epochs + 1, step):
        x, _ = px(e, y0)
        d.line([(x, TOP + ph), (x, TOP + ph + 5)], fill="black")
        d.text((x, TOP + ph + 8), str(e), fill="black", font=small, anchor="mt")
    d.rectangle([LEFT, TOP, LEFT + pw, TOP + ph], outline="black")
    d.text((LEFT + pw / 2, H - 40), "epoch", fill="black", font=font, anchor="mt")
    d.text((12, TOP - 18), "held-out bits per token (lower is better)", fill="black", font=small)
    for i, r in enumerate(rows):
        color = COLORS[i % len(COLORS)]
        points = [px(e, b) for e, b in enumerate(r["bits_per_token"], start=1)]
        width = 5 if r["default"] else 3
        if len(points) > 1:
            d.line(points, fill=color, width=width, joint="curve")
        for x, y in points:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        cx, cy = points[r["convergence_epoch"] - 1]
        d.ellipse([cx - 8, cy - 8, cx + 8, cy + 8], outline=color, width=2)
        ly = TOP + 10 + i * 24
        d.line([(W - RIGHT + 15, ly + 8), (W - RIGHT + 45, ly + 8)], fill=color, width=width)
        d.text((W - RIGHT + 52, ly), r["label"] + (" (default)" if r["default"] else ""), fill="black", font=small)
    note_y = TOP + 16 + len(rows) * 24
    d.text((W - RIGHT + 15, note_y), "ring: convergence epoch", fill=(90, 90, 90), font=small)
    if left_out:
        d.text((W - RIGHT + 15, note_y + 20), "not drawn (bits not", fill=(90, 90, 90), font=small)
        d.text((W - RIGHT + 15, note_y + 38), f"comparable): {', '.join(left_out)}", fill=(90, 90, 90), font=small)
    with atomic.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
