"""An ablation's results: the rows (ours beside the paper's), the Table-4-like Markdown, and the verdict.

Definitions (also in docs/ablations.md):
* held-out bits per token: the teacher-forced cross-entropy / ln 2 of every code of the held-out token
  set, in one direction (pipeline.training.validate), after each epoch. Lower is better. Comparable
  between variants that model the whole patch (AR with any patch size, window, RPE or size; NAR, whose
  factorised patch distribution is a likelihood too); not for P-NAR, whose loss covers only the masked
  tokens of a random mask.
* convergence epoch: the first epoch whose held-out bits per token are within `tolerance` (relative,
  default 1%) of the lowest the variant reaches in its budget. A curve still falling at the end of the
  budget has its convergence epoch at (or near) the last epoch: read it with the next column.
* reaches the default's level: the first epoch whose bits are within the same tolerance of the lowest
  the ablation's default row reaches; "-" when it never does within the budget. This is the column
  that compares speeds of convergence between rows (the paper's 50 against 70 epochs).
* speed: whole unconditional images of the token set's size per second, from `pipeline.bench render`
  (the ablation's variants timed in turns in one process), as patches/s and as a multiple of the
  default row's speed.
"""

from __future__ import annotations

import math

from pipeline.ablation.variants import Ablation

METRIC_NAMES = {"block_fid": "Block-FID", "inception_score": "IS", "clip_sim": "CLIP-SIM"}


def convergence_epoch(bits: list[float], tolerance: float) -> int:
    return reaches(bits, min(bits), tolerance)


def reaches(bits: list[float], target: float, tolerance: float) -> int | None:
    """First epoch (1-based) with bits <= target * (1 + tolerance), or None."""
    for epoch, b in enumerate(bits, start=1):
        if b <= target * (1 + tolerance):
            return epoch
    return None


def training_seconds(metrics_lines: list[dict]) -> float:
    """Seconds spent in training batches (the trainer's metrics.jsonl), whatever the stops and resumes."""
    return sum(float(r.get("seconds", 0.0)) for r in metrics_lines)


def rows(ablation: Ablation, records: dict[str, dict], speed: dict | None, tolerance: float) -> list[dict]:
    """One row per variant: `records` maps labels to the variants' done records (+ `seconds_training`)."""
    default = records[ablation.default.label]
    default_best = min(p["bits_per_token"] for p in default["curve"])
    by_sha = {e["renderer_sha256"]: e for e in (speed or {}).get("exports", [])}
    default_speed = by_sha.get(default["renderer_sha256"])
    out = []
    for v in ablation.variants:
        r = records[v.label]
        bits = [p["bits_per_token"] for p in sorted(r["curve"], key=lambda p: p["epoch"])]
        s = by_sha.get(r["renderer_sha256"])
        m = r["model"]
        out.append({
            "label": v.label, "default": v.default, "key": r["key"], "paper": v.paper,
            "renderer": m["renderer"], "rpe": m["rpe"], "context_transfer": m["context_transfer"],
            "loss_region": r["train"].get("loss_region", "patch"), "expand": m["expand"], "patch": m["patch"],
            "n_layer": m["n_layer"], "d_model": m["d_model"], "seed": r["train"].get("seed"),
            "parameters": s["parameters"] if s else None, "epochs": len(bits), "bits_per_token": bits,
            "bits_comparable": v.bits_comparable, "final_bits": bits[-1], "best_bits": min(bits),
            "best_epoch": bits.index(min(bits)) + 1, "convergence_epoch": convergence_epoch(bits, tolerance),
            "reaches_default_epoch": reaches(bits, default_best, tolerance) if v.bits_comparable else None,
            "training_seconds": round(r.get("seconds_training", 0.0), 1),
            "patches_per_s": s["patches_per_s"] if s else None,
            "seconds_per_image": s["seconds_per_image"] if s else None,
            "speed_vs_default": round(default_speed["seconds_per_image"] / s["seconds_per_image"], 2)
            if s and default_speed else None,
            "metrics": r["metrics"], "metrics_skipped": r["metrics_skipped"],
        })
    return out


def verdict(ablation: Ablation, table: list[dict]) -> dict:
    """Our quality order (final held-out bits) against the paper's, over the rows where bits compare."""
    by_label = {r["label"]: r for r in table}
    order = [lab for lab in ablation.better_first if by_label[lab]["bits_comparable"]]
    pairs = []
    for better, worse in zip(order, order[1:]):
        gap = by_label[worse]["final_bits"] - by_label[better]["final_bits"]
        pairs.append({"paper_better": better, "paper_worse": worse, "bits_gap": round(gap, 4), "agrees": gap > 0})
    ours = sorted((r for r in table if r["bits_comparable"]), key=lambda r: r["final_bits"])
    return {"paper_order": order, "our_order": [r["label"] for r in ours], "pairs": pairs,
            "agrees": all(p["agrees"] for p in pairs) if pairs else None,
            "left_out": [r["label"] for r in table if not r["bits_comparable"]]}


def spread(table: list[dict]) -> dict:
    """How far apart the rows' final held-out bits are (the seed ablation: the noise of one run)."""
    bits = [r["final_bits"] for r in table if r["bits_comparable"]]
    mean = sum(bits) / len(bits)
    std = (sum((b - mean) ** 2 for b in bits) / max(1, len(bits) - 1)) ** 0.5
    return {"rows": len(bits), "min": min(bits), "max": max(bits), "range": max(bits) - min(bits), "std": std}


def _num(x, fmt: str = "{:.3f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isfinite(x):
        return fmt.format(x)
    return str(x)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def markdown(result: dict) -> str:
    """The Table-4-like Markdown of one ablation's result (deterministic: a second call writes the same)."""
    rows_, v = result["rows"], result["verdict"]
    epochs = rows_[0]["epochs"]
    tol = result["settings"]["convergence_tolerance"]
    measured = sorted({k for r in rows_ for k in r["metrics"]})
    head = ["variant"] + [f"paper: {c}" for c in result["paper_columns"]] + [
        "parameters", f"held-out bits/token after {epochs} epochs ↓", "best (epoch)", "converged at epoch",
        "reaches default's best at epoch", "patches/s", "speed vs default", "training s"] + [
        METRIC_NAMES[m] for m in measured]
    claim = [f"Paper: {result['claim']}.", ""] if result["claim"] != "-" else []
    lines = [f"### {result['title']}", "", *claim,
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_:
        comparable = r["bits_comparable"]
        cells = [r["label"] + (" (default)" if r["default"] else "")]
        cells += [_num(r["paper"].get(c), "{:g}") for c in result["paper_columns"]]
        cells += [_params(r["parameters"]),
                  _num(r["final_bits"]) + ("" if comparable else " (masked tokens only; not comparable)"),
                  f"{_num(r['best_bits'])} ({r['best_epoch']})", str(r["convergence_epoch"]),
                  _num(r["reaches_default_epoch"]) if comparable else "n/a",
                  _num(r["patches_per_s"], "{:.1f}"),
                  "-" if r["speed_vs_default"] is None else f"{r['speed_vs_default']:.2f}x",
                  _num(r["training_seconds"], "{:.0f}")]
        cells += [_num(r["metrics"].get(m), "{:.4g}") for m in measured]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if v["pairs"]:
        pairs = "; ".join(f"{p['paper_better']} is {abs(p['bits_gap']):.4f} bits "
                          f"{'below' if p['bits_gap'] > 0 else 'above'} {p['paper_worse']} "
                          f"({'as the paper' if p['agrees'] else 'against the paper'})" for p in v["pairs"])
        word = "agrees with" if v["agrees"] else "does not agree with"
        lines.append(f"Held-out bits per token, each row the paper ranks better against the next: {pairs}. Our "
                     f"order, best first ({', '.join(v['our_order'])}), {word} the paper's.")
    if result.get("spread"):
        sp = result["spread"]
        lines.append(f"Final held-out bits over these {sp['rows']} runs: {sp['min']:.4f} to {sp['max']:.4f} (range "
                     f"{sp['range']:.4f}, standard deviation {sp['std']:.4f} bits).")
    if v["left_out"]:
        lines.append(f"Left out of the comparison (bits not comparable): {', '.join(v['left_out'])}.")
    skipped = {}
    for r in rows_:
        for m, why in r["metrics_skipped"].items():
            skipped.setdefault(METRIC_NAMES.get(m, m), set()).add(why)
    if skipped:
        lines.append("Not measured: " + "; ".join(f"{m}: {', '.join(sorted(w))}" for m, w in sorted(skipped.items()))
                     + ".")
    s = result["settings"]
    lines += ["", f"Convergence: first epoch within {tol:.0%} of the lowest held-out bits (its own, or the default "
              f"row's). Held-out set: {s['validation']['items']} items of `{s['validation']['path']}` in "
              f"{s['validation']['direction']} order. Speed: {s['speed'].get('device', '-')}, "
              f"batch {s['speed'].get('batch', '-')}, images of {s['speed'].get('codes', '-')} codes, median of "
              f"{s['speed'].get('repeats', '-')} rounds in turns.", ""]
    return "\n".join(lines)
