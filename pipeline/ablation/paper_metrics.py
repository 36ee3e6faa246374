"""The paper's metrics for an ablation variant (Block-FID, IS, CLIP-SIM): when they can run, and the sections
a variant's config needs for stages 70 (sample) and 80 (evaluate) to compute them.

They need weights that cannot ship (Inception, CLIP). When the run config's `evaluate` section names
neither `inception_weights` nor `clip_model`, every variant records the metrics as skipped with that
reason and nothing is sampled. Otherwise each variant samples the image jobs of the `sample` section
(those without a renderer of their own) with its own renderer and evaluates them against the same
reference. Relative paths are made absolute (they are relative to the run config's folder, and the
variant's config lives elsewhere); outputs (samples, eval) go to the variant's own folder.
"""

from __future__ import annotations

import copy

from pipeline.config import RunConfig
from pipeline.formats import vqgan_io

METRICS = ("block_fid", "inception_score", "clip_sim")
NEEDS = {"block_fid": "inception_weights", "inception_score": "inception_weights", "clip_sim": "clip_model"}
WHY = {"inception_weights": "no Inception weights configured (evaluate.inception_weights)",
       "clip_model": "no CLIP model configured (evaluate.clip_model)"}
EVALUATE_PATHS = ("reference", "reference_videos", "inception_weights", "clip_model", "i3d_weights")
# Keys that point at the base run's own outputs: the variant uses its own (the defaults under its run_dir).
EVALUATE_DROPPED = ("generated", "renderer_export", "validation_tokens", "output_name")
JOB_PATHS = ("input", "prompts_file")


def _evaluate(cfg: RunConfig) -> dict:
    raw = cfg.raw.get("evaluate") or {}
    return raw if isinstance(raw, dict) else {}


def skipped_without_weights(cfg: RunConfig) -> dict[str, str]:
    """{metric: reason} for the paper's metrics whose weights the config does not name."""
    ev = _evaluate(cfg)
    return {m: WHY[NEEDS[m]] for m in METRICS if not ev.get(NEEDS[m])}


def wanted(cfg: RunConfig) -> list[str]:
    """The paper's metrics this config can compute (their weights are named)."""
    skipped = skipped_without_weights(cfg)
    return [m for m in METRICS if m not in skipped]


def variant_sections(cfg: RunConfig) -> dict:
    """The `vqgan`, `sample` and `evaluate` sections of a variant's config (absolute paths, the variant's outputs)."""
    def absolute(value):
        return str(cfg.resolve(value)) if value else value

    vqgan = dict(cfg.raw.get("vqgan") or {})
    vqgan["weights"] = str(vqgan_io.weights_path(cfg))
    sample = copy.deepcopy(cfg.raw.get("sample") or {})
    for key in ("export_dir", "out_dir"):
        sample.pop(key, None)
    jobs = []
    for job in sample.get("jobs") or []:
        if job.get("export_dir") or job.get("mode") == "image_to_video":
            continue  # another renderer's job (e.g. the demo's video model)
        jobs.append({k: absolute(v) if k in JOB_PATHS else v for k, v in job.items()})
    sample["jobs"] = jobs
    ev = {k: v for k, v in _evaluate(cfg).items() if k not in EVALUATE_DROPPED}
    for key in EVALUATE_PATHS:
        if ev.get(key):
            ev[key] = absolute(ev[key])
    ev["metrics"] = wanted(cfg)
    return {"vqgan": vqgan, "sample": sample, "evaluate": ev}
