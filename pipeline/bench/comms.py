"""Communication against compute per patch step, on paper (JSON): `python -m pipeline.bench comms`.

Nothing is measured: for each preset, ZeRO layout, micro-batch and node count this prints the bytes one patch
step moves (per GPU over NVLink, per node over the network) and how long that takes at the assumed
bandwidths, against the step's compute at an assumed achieved FLOP rate, and how much of the communication
the layout can hide behind that compute. docs/multinode.md reads its tables from here; every assumption is a
flag and is echoed in the JSON.

Per optimizer step (one per patch) a data-parallel group of N GPUs in M nodes moves, with Psi parameters
(ring collectives; a reduce-scatter or all-gather of S bytes costs each GPU S (N-1)/N, and each node sends
S (M-1)/M over the network when it is done hierarchically, node first):
- ZeRO-1 / ZeRO-2: reduce-scatter of the gradients (bf16: 2 Psi) during backward, all-gather of the updated
  bf16 weights (2 Psi) after the optimizer step. The first hides under backward (overlap_comm); the second
  cannot: the next patch's forward needs the weights, so it is exposed on every patch step.
- ZeRO-3: all-gather of the weights for forward (2 Psi, prefetched under forward), again for backward
  (2 Psi) and the gradients' reduce-scatter (2 Psi), both under backward. No all-gather after the step.
- ZeRO++ on top of ZeRO-3: qwZ sends the forward weights as int8 (Psi, scales ignored), hpZ keeps a second
  weight partition inside each node so the backward all-gather never leaves it (+2 Psi / 8 bytes per GPU),
  qgZ sends the gradients as int4 across nodes (Psi / 2, hierarchical all-to-all).

Compute per patch step per GPU = micro-batch x pipeline.training.monitor.patch_train_flops (context key /
value projections included) / the achieved FLOP rate. Forward is taken as 1/3 of it, backward 2/3.
"""

from __future__ import annotations

import argparse

LAYOUTS = ("zero1", "zero2", "zero3", "zero3++hpz", "zero3++qwz+hpz", "zero3++qwz+hpz+qgz")


def collectives(layout: str, psi: float) -> list[dict]:
    """The per-step collectives: bytes (whole tensor), the phase they can hide under, whether they leave the node."""
    w = 2 * psi  # bf16 weights / gradients
    if layout in ("zero1", "zero2"):
        return [{"what": "gradient reduce-scatter", "bytes": w, "hide_under": "backward", "network": True},
                {"what": "weight all-gather after the step", "bytes": w, "hide_under": None, "network": True}]
    fwd = {"what": "weight all-gather (forward)", "bytes": w, "hide_under": "forward", "network": True}
    bwd = {"what": "weight all-gather (backward)", "bytes": w, "hide_under": "backward", "network": True}
    grad = {"what": "gradient reduce-scatter", "bytes": w, "hide_under": "backward", "network": True}
    if "qwz" in layout:
        fwd = {**fwd, "what": "weight all-gather (forward, int8)", "bytes": psi}
    if "hpz" in layout:
        bwd = {**bwd, "what": "weight all-gather (backward, inside the node: hpZ)", "network": False}
    if "qgz" in layout:
        grad = {**grad, "what": "gradient reduce-scatter (int4 across nodes)", "network_bytes": psi / 2}
    return [fwd, bwd, grad]


def step_table(psi: float, flops: float, layout: str, nodes: int, args) -> dict:
    g = args.gpus_per_node
    n = nodes * g
    compute = flops / (args.achieved_tflops * 1e12)
    phases = {"forward": compute / 3, "backward": 2 * compute / 3}
    busy = {"forward": 0.0, "backward": 0.0, None: 0.0}
    rows = []
    for c in collectives(layout, psi):
        intra = c["bytes"] * (g - 1) / g / (args.nvlink_gbs * 1e9) if g > 1 else 0.0
        net_bytes = c.get("network_bytes", c["bytes"]) * (nodes - 1) / nodes if (c["network"] and nodes > 1) else 0.0
        inter = net_bytes / (args.internode_gbps / 8 * 1e9 * args.network_efficiency)
        seconds = intra + inter  # node part then network part, not overlapped with each other (conservative)
        busy[c["hide_under"]] += seconds
        rows.append({"what": c["what"], "tensor_bytes": c["bytes"],
                     "bytes_per_gpu": c["bytes"] * ((n - 1) / n if c["network"] else (g - 1) / g),
                     "network_bytes_per_node": net_bytes, "seconds": seconds, "hides_under": c["hide_under"]})
    exposed = busy[None] + sum(max(0.0, busy[p] - phases[p]) for p in phases)
    return {"layout": layout, "nodes": nodes, "gpus": n, "compute_s": compute,
            "communication_s": sum(r["seconds"] for r in rows), "exposed_s": exposed,
            "step_over_compute": (compute + exposed) / compute, "collectives": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench comms", description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["base", "large"])
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 16])
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--achieved-tflops", type=float, default=445.0,
                    help="per GPU; default 45%% of an H100/H200's 989 dense bf16 (the issue's goal)")
    ap.add_argument("--nvlink-gbs", type=float, default=360.0,
                    help="GB/s one GPU reaches in NCCL collectives inside a node (NVLink 4 is 450 per direction)")
    ap.add_argument("--internode-gbps", type=float, default=400.0, help="Gb/s between nodes, per node")
    ap.add_argument("--network-efficiency", type=float, default=0.8, help="share of it collectives reach")
    ap.add_argument("--context-patches", type=int, default=12, help="context of the patch step (12: a full window)")
    args = ap.parse_args(argv)

    from model.config import preset
    from pipeline.bench.train import _count_model
    from pipeline.training.monitor import patch_train_flops

    out: dict = {"assumptions": {k: v for k, v in vars(args).items() if k not in ("presets", "layouts")},
                 "presets": {}}
    for name in args.presets:
        cfg = preset(name)
        psi = float(sum(p.numel() for p in _count_model(cfg).parameters()))
        per_item = patch_train_flops(cfg, args.context_patches * cfg.tokens_per_patch)
        rows = []
        for micro in args.micro_batch:
            for nodes in args.nodes:
                for layout in args.layouts:
                    rows.append({"micro_batch": micro, **step_table(psi, micro * per_item, layout, nodes, args)})
        out["presets"][name] = {"parameters": psi, "train_flops_per_item": per_item, "rows": rows}
    return out
