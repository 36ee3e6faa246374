"""Parameter count of a preset, broken down by component: `python -m model.summary base`.

Prints a table and, with --json, one JSON object. Counts are of the real module (built on the
meta device, so even `large` costs no memory), tied weights counted once.
"""

from __future__ import annotations

import argparse
import json

import torch

from model.config import PRESETS, preset
from model.renderer import Renderer

PAPER_TOTALS = {"base": 202_000_000, "large": 809_000_000}


def breakdown(model: Renderer) -> dict[str, int]:
    seen: set[int] = set()
    parts: dict[str, int] = {}

    def add(name: str, params) -> None:
        n = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        parts[name] = parts.get(name, 0) + n

    add("token embedding", [model.tok_emb.weight])
    add("output head", [model.head.weight])
    add("patch positions + special vectors",
        [p for n, p in model.named_parameters(recurse=False)])
    if model.text is not None:
        add("text encoder", model.text.parameters())
    for b in model.blocks:
        add("blocks: self-attention", [p for n, p in b.self_attn.named_parameters() if n != "table"])
        add("blocks: relative position tables", [b.self_attn.table])
        if b.cross is not None:
            add("blocks: cross-attention", b.cross.parameters())
        add("blocks: MLP", b.mlp.parameters())
        add("blocks: LayerNorms", [p for m in (b.ln_self, b.ln_cross, b.ln_mlp) if m is not None
                                   for p in m.parameters()])
    add("final LayerNorm", model.ln_f.parameters())
    return parts


def summarize(name: str, **overrides) -> dict:
    with torch.device("meta"):
        model = Renderer(preset(name, **overrides))
    parts = breakdown(model)
    total = sum(parts.values())
    out = {"preset": name, "config": model.cfg.to_dict(), "parts": parts, "total": total}
    if name in PAPER_TOTALS:
        out["paper_total"] = PAPER_TOTALS[name]
        out["relative_difference"] = round(total / PAPER_TOTALS[name] - 1, 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    s = summarize(args.preset)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    c = s["config"]
    print(f"preset {args.preset}: {c['n_layer']} layers x {c['d_model']} wide, {c['n_head']} heads, "
          f"vocab {c['vocab_size']}, text {c['text_layers']} layers / vocab {c['text_vocab_size']}")
    for k, v in s["parts"].items():
        print(f"  {k:<36} {v:>14,}")
    print(f"  {'total':<36} {s['total']:>14,}")
    if "paper_total" in s:
        print(f"  paper: {s['paper_total']:,} ({s['relative_difference'] * 100:+.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
