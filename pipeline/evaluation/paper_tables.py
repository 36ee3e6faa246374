"""The paper's Tables 1-3 (section 4.2) and how our numbers are set beside them, in Markdown and JSON.

Each table has the paper's columns and rows exactly as printed (values copied from the paper);
`render` adds this run's rows under them. A cell we could not compute holds no number: the JSON
gives null with the reason, the Markdown "skipped" with a numbered footnote giving it.
"""

from __future__ import annotations

import math

# name -> title, columns [(key, header, decimals)], paper rows [(method, {key: value or None})]
PAPER: dict[str, dict] = {
    "table1": {
        "title": "Table 1: high-resolution text-to-image on LHQC (paper: 1024 x 1024; x4 = 1024 x 4096)",
        "columns": [("block_fid", "Block-FID ↓", 2), ("block_fid_x4", "Block-FID (x4) ↓", 2),
                    ("inception_score", "IS ↑", 2), ("clip_sim", "CLIP-SIM ↑", 4)],
        "rows": [("Taming [8]", {"block_fid": 38.89, "block_fid_x4": 46.37, "inception_score": 4.58,
                                 "clip_sim": 0.2662}),
                 ("MaskGIT [2]", {"block_fid": 24.33, "block_fid_x4": 45.76, "inception_score": 4.61,
                                  "clip_sim": 0.2754}),
                 ("Our (AR)", {"block_fid": 9.71, "block_fid_x4": 15.65, "inception_score": 4.98,
                               "clip_sim": 0.2807})],
    },
    "table2": {
        "title": "Table 2: video prediction on LHQ-V (paper: 1024 x 1024 x 8, from the first frame)",
        "columns": [("fvd", "FVD ↓", 2)],
        "rows": [("StyleGAN-V [31]", {"fvd": 143.76}), ("Our (NAR)", {"fvd": 368.16}),
                 ("Our (P-NAR)", {"fvd": 165.39}), ("Our (AR)", {"fvd": 62.57})],
    },
    "table3": {
        "title": ("Table 3: arbitrary image extension on LHQC, Block-FID between the extended area and the "
                  "same area of the test set (paper: 1024 x 512 inputs)"),
        "columns": [("right", "Right ⇒", 2), ("left", "Left ⇐", 2), ("down", "Down ↓", 2), ("up", "Up ↑", 2)],
        "rows": [("Taming [8]", {"right": 22.53, "left": None, "down": 26.38, "up": None}),
                 ("MaskGIT [2]", {"right": 14.68, "left": 14.81, "down": 25.57, "up": 25.38}),
                 ("InfinityGAN [17] w/o text", {"right": 17.93, "left": 19.76, "down": 24.62, "up": 23.59}),
                 ("Our (AR) w/o text", {"right": 6.43, "left": 6.71, "down": 11.47, "up": 8.03}),
                 ("Our (AR) w/ text", {"right": 6.45, "left": 6.72, "down": 9.84, "up": 7.43})],
    },
}


def _cell(value, decimals: int) -> str:
    if value is None:
        return "N/A"
    return f"{value:.{decimals}f}" if math.isfinite(value) else str(value)


def render(name: str, ours: list[dict], settings: list[str], extra: list[str]) -> tuple[str, dict]:
    """(Markdown, JSON) of table `name` with our rows {"method", "values": {key: float}, "skipped": {key: why}}.

    `settings` are lines saying how this run measured (sizes, counts, readings); `extra` is more
    Markdown (what the run measures beyond the paper's columns)."""
    spec = PAPER[name]
    cols = spec["columns"]
    notes: list[str] = []
    lines = [f"## {spec['title']}", "", "| Method | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for method, values in spec["rows"]:
        lines.append(f"| {method} (paper) | " + " | ".join(_cell(values[k], d) for k, _, d in cols) + " |")
    for row in ours:
        cells = []
        for key, _, decimals in cols:
            if key in row["values"]:
                cells.append(f"**{_cell(row['values'][key], decimals)}**")
            else:
                why = row["skipped"].get(key, "not measured")
                if why not in notes:
                    notes.append(why)
                cells.append(f"skipped ({notes.index(why) + 1})")
        lines.append(f"| {row['method']} (this run) | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"({i}) {why}" for i, why in enumerate(notes, 1)]
    if notes:
        lines.append("")
    lines += [f"- {s}" for s in settings] + [""] + extra
    table = {"table": name, "title": spec["title"], "columns": [{"key": k, "header": h} for k, h, _ in cols],
             "paper": [{"method": m, "values": v} for m, v in spec["rows"]],
             "ours": [{"method": r["method"], "values": {k: r["values"].get(k) for k, _, _ in cols},
                       "skipped": {k: r["skipped"].get(k, "not measured") for k, _, _ in cols
                                   if k not in r["values"]}} for r in ours],
             "settings": settings}
    return "\n".join(lines).rstrip() + "\n", table
