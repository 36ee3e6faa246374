"""The ablations of paper section 4.3 (Table 4a-e, Fig. 7a-b): their variants and the paper's numbers.

Each variant is a set of switches laid over the run's model and train sections. The paper's default
(AR renderer, Pre-RPE, context transfer, patch loss, e = 2, the config's patch size) is spelled out in
every ablation, so it comes out identical wherever it appears and is trained once (pipeline.ablation.runner
keys variants by their whole effective config).

`paper` holds the paper's figures for the row (Table 4; Fig. 7 is a plot whose values the text does
not give, so those rows carry the text's claim). `better_first` lists the labels in the paper's
quality order, best first; the report checks our held-out bits per token against it where the rows
are comparable (`bits_comparable`: P-NAR's loss covers only the masked tokens of a random mask, so
its bits are not a likelihood of the patch and are left out of the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import RenderConfig

NAMES = ("renderer", "size", "rpe", "transfer", "loss_region", "expansion", "render_size")
# The paper's default training switch, laid under every variant's own (like `renderer: ar` in the model).
DEFAULT_TRAIN = {"loss_region": "patch"}


@dataclass(frozen=True)
class Variant:
    label: str
    model: dict = field(default_factory=dict)  # RenderConfig overrides
    train: dict = field(default_factory=dict)  # train-section overrides
    paper: dict = field(default_factory=dict)  # the paper's figures for this row, by column
    default: bool = False  # the paper's default setting: the row the others are compared with
    bits_comparable: bool = True


@dataclass(frozen=True)
class Ablation:
    name: str
    title: str  # where in the paper
    paper_columns: tuple[str, ...]
    variants: tuple[Variant, ...]
    better_first: tuple[str, ...]  # the paper's quality order (labels), best first
    claim: str  # what the paper says, in one sentence

    @property
    def default(self) -> Variant:
        return next(v for v in self.variants if v.default)


def larger_model(base: RenderConfig, overrides: dict) -> dict:
    """The size ablation's larger model: the paper's base -> large step (16 x 768 -> 24 x 1280: 1.5x the
    depth, 5/3 the width, same head width) applied to the run's model, unless `overrides` gives it."""
    if overrides:
        return dict(overrides)
    head = base.d_model // base.n_head
    heads = max(1, round(base.d_model * 5 / 3 / head))
    return {"n_layer": max(base.n_layer + 1, round(base.n_layer * 1.5)), "d_model": heads * head, "n_head": heads}


def build(base: RenderConfig, large: dict, expansions: list[int], render_sizes: list[int]) -> dict[str, Ablation]:
    """Every ablation for a run whose model section gives `base` (its patch size is the default render size)."""
    ar = {"renderer": "ar"}
    e_f = base.expand[2]
    bigger = larger_model(base, large)
    small_name = f"base ({base.n_layer} x {base.d_model})"
    large_name = f"large ({bigger.get('n_layer', base.n_layer)} x {bigger.get('d_model', base.d_model)})"
    # The run's own window and patch are the default rows, so they are always measured.
    e_default, side = base.expand[0], base.patch[0]
    expansions = sorted(set(expansions) | {e_default})
    render_sizes = sorted(set(render_sizes) | {side})
    out = [
        Ablation("renderer", "Table 4a: rendering model", ("Block-FID", "Block-FID (x4)", "CLIP-SIM", "speed"), (
            Variant("NAR", {"renderer": "nar", "tie_embeddings": True},
                    paper={"Block-FID": 92.34, "Block-FID (x4)": 98.67, "CLIP-SIM": 0.2451, "speed": "95x"}),
            Variant("P-NAR", {"renderer": "pnar"}, bits_comparable=False,
                    paper={"Block-FID": 19.86, "Block-FID (x4)": 38.59, "CLIP-SIM": 0.2726, "speed": "15x"}),
            Variant("AR", ar, default=True,
                    paper={"Block-FID": 10.05, "Block-FID (x4)": 17.78, "CLIP-SIM": 0.2753, "speed": "1x"}),
        ), ("AR", "P-NAR", "NAR"),
            "AR renders best and slowest; NAR is 95x and P-NAR 15x faster, quality the other way"),
        Ablation("size", "Table 4b: model size", ("parameters", "depth x width", "Block-FID"), (
            Variant(small_name, {**ar, "n_layer": base.n_layer, "d_model": base.d_model, "n_head": base.n_head},
                    default=True, paper={"parameters": "202M", "depth x width": "16 x 768", "Block-FID": 10.05}),
            Variant(large_name, {**ar, **bigger},
                    paper={"parameters": "809M", "depth x width": "24 x 1280", "Block-FID": 9.71}),
        ), (large_name, small_name), "the larger model is better"),
        Ablation("rpe", "Table 4c: relative position embedding", ("Block-FID", "Block-FID (x4)"), (
            Variant("Pre-RPE", {**ar, "rpe": "pre"}, default=True, paper={"Block-FID": 10.05, "Block-FID (x4)": 17.78}),
            Variant("Post-RPE", {**ar, "rpe": "post"}, paper={"Block-FID": 10.47, "Block-FID (x4)": 18.89}),
        ), ("Pre-RPE", "Post-RPE"), "Pre-RPE (bias on the keys) beats Post-RPE (bias on the logits)"),
        Ablation("transfer", "Table 4d: context transfer", ("Block-FID", "Block-FID (x4)"), (
            Variant("w/o transfer", {**ar, "context_transfer": False},
                    paper={"Block-FID": 15.8, "Block-FID (x4)": 38.32}),
            Variant("w/ transfer", {**ar, "context_transfer": True}, default=True,
                    paper={"Block-FID": 10.21, "Block-FID (x4)": 23.62}),
        ), ("w/ transfer", "w/o transfer"), "context transfer brings a large improvement"),
        Ablation("loss_region", "Table 4e: loss region", ("Block-FID", "convergence epoch"), (
            Variant("patch", ar, DEFAULT_TRAIN, default=True,
                    paper={"Block-FID": 10.05, "convergence epoch": 50}),
            Variant("full", ar, {"loss_region": "full"}, paper={"Block-FID": 11.62, "convergence epoch": 70}),
        ), ("patch", "full"), "one step per patch converges faster (50 epochs) than one step per image (70)"),
        Ablation("expansion", "Fig. 7b: nearby expansion size e_h = e_w", ("Fig. 7b",), tuple(
            Variant(f"e={e}", {**ar, "expand": [e, e, e_f]}, default=(e == e_default),
                    paper={"Fig. 7b": "best from 2 on" if e >= 2 else "worse"})
            for e in expansions
        ), tuple(f"e={e}" for e in sorted(x for x in expansions if x <= min(2, e_default))[::-1]),
            "quality improves quickly up to e = 2, then saturates while FLOPs keep growing"),
        Ablation("render_size", "Fig. 7a: rendering (patch) size", ("Fig. 7a",), tuple(
            Variant(f"patch {p}", {**ar, "patch": [p, p, base.patch[2]]}, default=(p == side),
                    paper={"Fig. 7a": "smaller is worse" if p < side else "the paper's 256 px" if p == side
                           else "larger: out of memory in the paper"})
            for p in render_sizes
        ), tuple(f"patch {p}" for p in sorted(x for x in render_sizes if x <= side)[::-1]),
            "smaller rendering sizes are worse, most of all for x4 wide images"),
    ]
    return {a.name: a for a in out}
