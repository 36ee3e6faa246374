"""Stage 30: one caption per image (LHQC), then the deterministic train/test split.

Config section `caption`:

    caption:
      mode: model                # model | metadata
      model_dir: /models/blip-image-captioning-large   # a transformers directory (save_pretrained)
      prompt: null               # BLIP / GIT: optional text prefix; Florence-2: a task token
      batch_size: 16
      num_beams: 3               # BLIP's captioning setting: beam 3, at least 5 and at most 20 tokens
      min_new_tokens: 5
      max_new_tokens: 20
      recaption: false           # true: the model also replaces captions from the source's metadata
      image_side: 384            # the manifest's crop is read at this side, then the processor resizes
      device: auto               # auto (cuda:LOCAL_RANK when CUDA is available) | cpu | cuda
      dtype: auto                # auto (bf16/fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16
      trust_remote_code: false   # only for model folders that ship their own code
      chunk_size: 512            # items per resumable unit
      merge_timeout_s: 86400
      manifest: data/images/manifest.parquet   # relative to run_dir
      split: {test_count: 5000}  # see pipeline/curation/split.py

Models: any image-to-text model that `AutoProcessor` + `AutoModelForImageTextToText` load (BLIP,
BLIP-2, GIT, Florence-2, ...), or the class named in the folder's config.json `architectures` when
the Auto mapping does not resolve. Loaded with `local_files_only=True`: nothing is downloaded.

Choices:
- Captions already in the manifest (from metadata.jsonl, a dataset's caption column or a URL list)
  are kept unless `recaption: true`; only images without one are captioned.
- `mode: metadata` uses those captions only. An image without one is removed from the manifest
  and listed in data/images/caption_rejects.parquet (reason `no_caption`), so LHQC keeps its "one
  caption each" invariant and one gap never stops the run; if *no* image has a caption the stage
  fails, saying that no captioner is configured.
- A prompt that the model echoes (BLIP, GIT, BLIP-2 decoder-only) is removed from the caption.
  Whitespace is collapsed; an empty caption counts as a failure (reason `empty_caption`).
- Failures (unreadable crop, model error on that image) go to caption_rejects.parquet and the
  image leaves the manifest; everything else in the batch is still captioned.

Work follows the chunk protocol of `pipeline.curation.chunked`: chunks of the items to caption; chunk k
belongs to rank k % WORLD_SIZE and writes data/images/captions/chunk-NNNNNN.parquet (id, caption,
reason, detail) and then its done-marker.
Rank 0 waits for every marker, writes the captions and the split into the manifest in one atomic
replace, and updates caption_rejects.parquet. Re-running finds nothing left to caption and gives
the same manifest.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from pipeline.config import load_config
from pipeline.curation import chunked, split
from pipeline.curation.chunked import fingerprint
from pipeline.errors import PipelineError, entry_point
from pipeline.formats.manifest import (
    IMAGE_COLUMNS,
    IMAGE_MANIFEST,
    ManifestError,
    load_image_crop,
    read_rows,
    write_rows,
)
from pipeline.ranks import RankInfo, rank_info

log = logging.getLogger("caption")

CAPTION_COLUMNS = ("id", "caption", "reason", "detail")
REJECT_COLUMNS = ("id", "path", "source", "reason", "detail")


@dataclass
class CaptionConfig:
    mode: Literal["model", "metadata"] = "metadata"
    model_dir: str | None = None
    prompt: str | None = None
    batch_size: int = 16
    num_beams: int = 3
    min_new_tokens: int = 5
    max_new_tokens: int = 20
    recaption: bool = False
    image_side: int = 384
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    chunk_size: int = 512
    merge_timeout_s: float = 86400.0
    manifest: str = IMAGE_MANIFEST
    split: split.SplitConfig = field(default_factory=split.SplitConfig)

    def __post_init__(self):
        if self.mode == "model" and not self.model_dir:
            raise ValueError("mode: model needs model_dir (a local transformers directory)")
        if min(self.batch_size, self.num_beams, self.max_new_tokens, self.image_side, self.chunk_size) < 1:
            raise ValueError("batch_size, num_beams, max_new_tokens, image_side and chunk_size must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("need 0 <= min_new_tokens <= max_new_tokens")


class CaptionError(PipelineError, RuntimeError):
    pass


# ---------------------------------------------------------------- the model

class Captioner:
    """A transformers image-to-text model from a local folder, batched."""

    def __init__(self, cfg: CaptionConfig, model_dir: Path, local_rank: int = 0):
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        if not model_dir.is_dir():
            raise CaptionError(f"caption.model_dir: not a folder: {model_dir}")
        cuda = torch.cuda.is_available()
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        else:
            self.device = torch.device(f"cuda:{local_rank}" if cfg.device == "cuda" else cfg.device)
        if cfg.dtype == "auto":
            dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
                if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, cfg.dtype)
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}
        try:
            self.processor = AutoProcessor.from_pretrained(model_dir, **kw)
            try:
                model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, **kw)
            except ValueError as auto_error:  # no Auto mapping for this config: use its own class
                archs = AutoConfig.from_pretrained(model_dir, **kw).architectures or []
                cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
                if cls is None:
                    raise CaptionError(f"{model_dir}: no image-to-text class for architectures {archs} "
                                       f"({auto_error})") from auto_error
                model = cls.from_pretrained(model_dir, dtype=dtype, **kw)
            # A folder without a processor config (e.g. a ViT-GPT2 VisionEncoderDecoder) gives an
            # image processor only; its tokenizer decodes.
            self.decoder = self.processor if hasattr(self.processor, "batch_decode") else \
                AutoTokenizer.from_pretrained(model_dir, **kw)
        except (OSError, KeyError) as e:
            raise CaptionError(f"{model_dir}: cannot load the captioner ({e})") from e
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.cfg = cfg
        self.prompt = cfg.prompt
        if self.prompt is None and getattr(model.config, "model_type", "") == "florence2":
            self.prompt = "<CAPTION>"  # Florence-2 needs a task token
        log.info("captioner %s on %s (%s)", type(model).__name__, self.device, str(dtype).replace("torch.", ""))

    def __call__(self, images: Sequence) -> list[str]:
        import torch

        kw: dict[str, Any] = {"images": list(images), "return_tensors": "pt"}
        if self.prompt:
            kw["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kw).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_beams=self.cfg.num_beams, do_sample=False,
                                      min_new_tokens=self.cfg.min_new_tokens,
                                      max_new_tokens=self.cfg.max_new_tokens)
        return [clean_caption(t, self.prompt) for t in self.decoder.batch_decode(out, skip_special_tokens=True)]


def clean_caption(text: str, prompt: str | None) -> str:
    text = " ".join(text.split())
    if prompt:
        p = " ".join(prompt.split())
        if text.lower().startswith(p.lower()):
            text = text[len(p):].strip()
    return re.sub(r"\s+([,.!?;:])", r"\1", text)


# ---------------------------------------------------------------- chunks

def caption_chunk(captioner: Captioner, rows: list[dict], side: int, batch_size: int, bar) -> list[dict]:
    """Captions (or the failure) for each row, in order. Loading runs a batch ahead in threads."""
    def load(r):
        try:
            from PIL import Image

            return Image.fromarray(load_image_crop(r["path"], r["crop"], side)), None
        except (ManifestError, OSError, ValueError) as e:
            return None, str(e)

    out: list[dict] = []
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    with ThreadPoolExecutor(4) as pool:
        pending = pool.map(load, batches[0]) if batches else iter(())
        for b, batch in enumerate(batches):
            loaded = list(pending)
            if b + 1 < len(batches):
                pending = pool.map(load, batches[b + 1])
            ok = [(r, im) for r, (im, _) in zip(batch, loaded) if im is not None]
            texts = _generate(captioner, [im for _, im in ok])
            by_id = {r["id"]: t for (r, _), t in zip(ok, texts)}
            for r, (_, err) in zip(batch, loaded):
                if err is not None:
                    out.append({"id": r["id"], "caption": "", "reason": "unreadable", "detail": err})
                    continue
                t = by_id[r["id"]]
                if isinstance(t, Exception):
                    out.append({"id": r["id"], "caption": "", "reason": "model_error", "detail": f"{t}"})
                elif not t:
                    out.append({"id": r["id"], "caption": "", "reason": "empty_caption",
                                "detail": f"{r['path']}: the model produced no text"})
                else:
                    out.append({"id": r["id"], "caption": t, "reason": "", "detail": ""})
            bar.update(len(batch))
    return out


def _generate(captioner: Captioner, images: list) -> list:
    """Texts for a batch; when the batch fails, image by image so that only the culprit fails."""
    if not images:
        return []
    try:
        return captioner(images)
    except (RuntimeError, ValueError) as e:
        if len(images) == 1:
            return [e]
        log.warning("a batch of %d failed (%s); captioning its images one by one", len(images), e)
        return [_generate(captioner, [im])[0] for im in images]


def _model_stamp(model_dir: Path | None) -> list:
    """The model folder's files (name, size, mtime): weights replaced in place redo the captions."""
    if model_dir is None or not model_dir.is_dir():
        return [str(model_dir)]
    return [str(model_dir)] + sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                     for p in model_dir.iterdir() if p.is_file())


def run(cfg: CaptionConfig, run_dir: Path, resolve, ranks: RankInfo | None = None) -> dict:
    ranks = ranks or rank_info()
    t0 = time.monotonic()
    manifest = run_dir / cfg.manifest
    out_dir = manifest.parent
    rows = read_rows(manifest, IMAGE_COLUMNS)
    if cfg.mode == "metadata":
        need: list[dict] = []
        missing = [r for r in rows if not str(r["caption"] or "").strip()]
        if rows and len(missing) == len(rows):
            raise CaptionError(f"no image in {manifest} has a caption, and no captioner is configured "
                               "(caption.mode: metadata). Set caption.mode: model with caption.model_dir, "
                               "or give captions in the source (metadata.jsonl, a caption column, a URL list)")
    else:
        need = [r for r in rows if cfg.recaption or not str(r["caption"] or "").strip()]
        missing = []
    model_dir = resolve(cfg.model_dir) if cfg.model_dir else None
    chunks = chunked.split(need, cfg.chunk_size)
    setting = {k: getattr(cfg, k) for k in ("prompt", "num_beams", "min_new_tokens", "max_new_tokens",
                                             "image_side", "dtype")}
    model = _model_stamp(model_dir) if chunks else None
    fps = [fingerprint({"model": model, **setting, "items": [(r["id"], r["path"], r["crop"]) for r in c]})
           for c in chunks]
    plan = chunked.ChunkPlan(out_dir / "captions", fps, "caption", log, ranks)
    todo = plan.todo()
    log.info("%d image(s), %d to caption in %d chunk(s); rank %d of %d has %d left", len(rows), len(need),
             len(chunks), ranks.rank, ranks.world_size, len(todo))
    if todo:
        captioner = Captioner(cfg, model_dir, ranks.local_rank)
        with tqdm(total=sum(len(chunks[k]) for k in todo), desc="caption", unit="img", file=sys.stderr) as bar:
            for k in todo:
                plan.start(k)
                result = caption_chunk(captioner, chunks[k], cfg.image_side, cfg.batch_size, bar)
                write_rows(plan.rows(k), result, CAPTION_COLUMNS)
                plan.finish(k, {"items": len(result)})
    if not ranks.is_main:
        return {"captioned_chunks": len(todo)}
    plan.wait(cfg.merge_timeout_s)
    return _merge(cfg, manifest, rows, missing, plan.read_all(), t0)


def _merge(cfg: CaptionConfig, manifest: Path, rows: list[dict], missing: list[dict],
           chunk_rows: list[dict], t0: float) -> dict:
    results = {r["id"]: r for r in chunk_rows}
    rejected: dict[str, dict] = {}
    for r in missing:
        rejected[r["id"]] = {"id": r["id"], "path": r["path"], "source": r["source"], "reason": "no_caption",
                             "detail": f"{r['path']}: no caption in the source's metadata (caption.mode: metadata)"}
    kept = []
    for r in rows:
        res = results.get(r["id"])
        if r["id"] in rejected:
            continue
        if res is not None and res["reason"]:
            rejected[r["id"]] = {"id": r["id"], "path": r["path"], "source": r["source"], "reason": res["reason"],
                                 "detail": res["detail"]}
            continue
        kept.append({**r, "caption": res["caption"]} if res is not None else r)
    if not kept:
        raise CaptionError(f"no image of {manifest} got a caption ({len(rejected)} failed); "
                           f"see {manifest.parent / 'caption_rejects.parquet'}")
    kept = split.apply(kept, cfg.split)
    rej_path = manifest.parent / "caption_rejects.parquet"
    earlier = read_rows(rej_path) if rej_path.is_file() else []
    all_rejects = {r["id"]: r for r in earlier} | rejected
    write_rows(rej_path, sorted(all_rejects.values(), key=lambda r: r["id"]), REJECT_COLUMNS)
    write_rows(manifest, kept, IMAGE_COLUMNS)  # captions and split in one atomic replace
    splits = Counter(r["split"] for r in kept)
    reasons = Counter(r["reason"] for r in rejected.values())
    summary = {"seen": len(rows), "kept": len(kept), "rejected": dict(sorted(reasons.items())),
               "captioned": sum(1 for r in results.values() if not r["reason"]),
               "split": {k: splits[k] for k in ("train", "test", "unused")},
               "seconds": round(time.monotonic() - t0, 3)}
    log.info("caption: seen %d, kept %d (captioned now %d), rejected %d %s, split %s, %.1f s", len(rows),
             len(kept), summary["captioned"], len(rejected), summary["rejected"], summary["split"],
             summary["seconds"])
    return summary


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.curation.caption", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="run YAML (section caption)")
    args = ap.parse_args(argv)
    chunked.setup_logging()
    run_cfg = load_config(args.config)
    if not (run_cfg.has("caption") or run_cfg.has("ingest_images")):
        log.info("%s has neither caption nor ingest_images: no images to caption, nothing to do", run_cfg.path)
        return 0
    run(run_cfg.section("caption", CaptionConfig), run_cfg.run_dir, run_cfg.resolve)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
