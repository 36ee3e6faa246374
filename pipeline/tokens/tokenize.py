"""Stage 50: encode images and video clips into VQGAN token sets (pipeline.formats.shards format).

    python -m pipeline.tokens.tokenize --config run.yaml                 # one process
    torchrun --nproc_per_node N -m pipeline.tokens.tokenize --config ... # N ranks (no process group needed)
    python -m pipeline.tokens.tokenize --config run.yaml --merge-only    # join the ranks' indices afterwards

Token sets: run_dir/<out>/images/<split>/ and run_dir/<out>/videos/<split>/ (split "train"/"test"; a
manifest row whose split is still "" counts as train), so the trainer reads .../train and the evaluator
.../test. Items of one token set share one grid: images are (1, s/f, s/f) for the crop side s, clips
(frames, s/f, s/f); a manifest mixing sizes is an error unless `image_size` / `clip_size` fixes one.
`clip_frames` keeps the first N frames of every clip (the paper trains on 5-frame clips and measures
8-frame predictions, so its config cuts 8-frame clips and tokenizes their first 5).

Work split: the items of a token set are cut, in manifest order, into shards of `shard_size` items;
shard k belongs to rank k % WORLD_SIZE and is named shard_name(owner, k). A shard is encoded in
batches that never cross its boundary, written under temporary names and renamed, its done-marker last
(pipeline.formats.shards.write_shard); a re-run skips shards whose marker exists. `plan.json` in each token set
records the world size, shard size and the ids' hash: resuming with a different plan is refused instead
of producing overlapping shards. Rank 0 merges the index once every planned shard's marker exists.

Determinism: the model runs in eval mode, float32, without randomness, and a shard's batches are the
same in every run, so an interrupted-and-resumed run writes the same bytes as an uninterrupted one.

Single-image runs (stage 12 wrote data/single_image/manifest.parquet): each image is encoded whole, in
tiles of `tile` pixels with `tile_margin` pixels of context (model.tiles.encode_tiled), into a code canvas
under run_dir/<out>/single_image/ (pipeline.formats.canvas; pipeline.tokens.single_image).

Config section `tokenize` (TokenizeSection); the VQGAN comes from section `vqgan` (pipeline.formats.vqgan_io),
and its file's sha256 goes into meta.json and every index row.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.errors import entry_point
from pipeline.formats import manifest, shards, vqgan_io
from pipeline.ranks import RankInfo, pick_device, rank_info

log = logging.getLogger("tokenize")


@dataclass
class TokenizeSection:
    image_manifest: str | None = manifest.IMAGE_MANIFEST  # relative to run_dir; null = no images
    clip_manifest: str | None = "data/videos/kept.parquet"  # relative to run_dir; null = no videos
    single_image_manifest: str | None = manifest.SINGLE_IMAGE_MANIFEST  # relative to run_dir; null = none
    tile: int = 256  # single images: encoder tile side in pixels (best: the VQGAN's training crop side)
    tile_margin: int = 32  # single images: pixels of context around each tile (kept codes see them)
    out: str = "tokens"  # relative to run_dir
    image_size: int | None = None  # None: the manifest's `size` (must be one value)
    clip_size: int | None = None  # None: the clip manifest's `size`
    # None: every frame of the clips. A number: the first N frames of each clip, e.g. the paper's
    # 5-frame training clips cut from the 8-frame clips that its Table 2 (image-to-video) needs.
    clip_frames: int | None = None
    batch_size: int = 8  # images (or frames) per forward pass
    shard_size: int = 256  # items per shard
    num_workers: int = 0  # processes decoding pixels ahead of the encoder (0 = in the main process)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    merge_wait_s: float = 3600.0  # how long rank 0 waits for the other ranks' shards before merging

    def __post_init__(self):
        if self.batch_size < 1 or self.shard_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size and shard_size must be >= 1, num_workers >= 0")
        if self.clip_frames is not None and self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1 or null, got {self.clip_frames}")
        if self.tile < 1 or self.tile_margin < 0:
            raise ValueError("tile must be >= 1 and tile_margin >= 0")


@dataclass
class TokenJob:
    kind: Literal["images", "videos"]
    split: str
    folder: Path
    rows: list[dict]
    size: int
    frames: int  # 1 for images

    def shard_count(self, shard_size: int) -> int:
        return (len(self.rows) + shard_size - 1) // shard_size


# ----------------------------------------------------------------------------- reading pixels


def read_clip(path: str | Path, frames: int, size: int) -> np.ndarray:
    """The first `frames` frames of an MP4 as uint8 [frames, size, size, 3] (resized when needed)."""
    import av
    from PIL import Image

    out = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise manifest.ManifestError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                if rgb.shape[:2] != (size, size):
                    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
                out.append(rgb)
                if len(out) == frames:
                    break
    except manifest.ManifestError:
        raise
    except Exception as e:  # PyAV raises many error types for broken files
        raise manifest.ManifestError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    if len(out) < frames:
        raise manifest.ManifestError(f"{path}: has {len(out)} frames, the manifest says {frames}")
    return np.stack(out)


def _pixels(job: TokenJob, row: dict) -> np.ndarray:
    """uint8 [frames, size, size, 3] for one item."""
    if job.kind == "images":
        return manifest.load_image_crop(row["path"], row["crop"], job.size)[None]
    return read_clip(row["path"], job.frames, job.size)


# ----------------------------------------------------------------------------- planning


def _one_value(values: set, what: str, path: Path, option: str) -> int:
    if len(values) != 1:
        raise ConfigError(f"{path}: items have several {what} {sorted(values)}; one token set needs one grid "
                          f"(set tokenize.{option})")
    return int(next(iter(values)))


def plan_jobs(cfg: RunConfig, sec: TokenizeSection, downsample: int, allow_empty: bool = False) -> list[TokenJob]:
    jobs: list[TokenJob] = []
    sources = [("images", sec.image_manifest, manifest.IMAGE_COLUMNS),
               ("videos", sec.clip_manifest, manifest.CLIP_COLUMNS)]
    looked = []
    for kind, rel, columns in sources:
        if rel is None:
            continue
        path = cfg.run_dir / rel if not Path(rel).is_absolute() else Path(rel)
        looked.append(str(path))
        if not path.is_file():
            log.warning("%s: no %s manifest here; %s skipped", path, kind, kind)
            continue
        rows = manifest.read_rows(path, columns)
        if not rows:
            log.warning("%s: empty manifest; %s skipped", path, kind)
            continue
        fixed = sec.image_size if kind == "images" else sec.clip_size
        size = fixed or _one_value({int(r["size"]) for r in rows}, "sizes", path,
                                   "image_size" if kind == "images" else "clip_size")
        if size % downsample:
            raise ConfigError(f"{path}: size {size} is not a multiple of the VQGAN's factor {downsample}")
        frames = 1 if kind == "images" else _one_value({int(r["frames"]) for r in rows}, "frame counts", path,
                                                       "clip_manifest (one frame count per token set)")
        if kind == "videos" and sec.clip_frames is not None:
            if sec.clip_frames > frames:
                raise ConfigError(f"{cfg.path}: tokenize.clip_frames is {sec.clip_frames} but the clips of {path} "
                                  f"have {frames} frames")
            frames = sec.clip_frames
        by_split: dict[str, list[dict]] = {}
        for r in rows:
            by_split.setdefault(r.get("split") or "train", []).append(r)
        for split in sorted(by_split):
            folder = cfg.run_dir / sec.out / kind / split
            jobs.append(TokenJob(kind, split, folder, by_split[split], size, frames))
    if not jobs and not allow_empty:
        raise ConfigError(f"{cfg.path}: nothing to tokenize (looked for {looked or 'no manifests configured'})")
    return jobs


def _plan_record(job: TokenJob, sec: TokenizeSection, world: int) -> dict:
    ids = hashlib.sha256("\n".join(str(r["id"]) for r in job.rows).encode()).hexdigest()
    return {"world_size": world, "shard_size": sec.shard_size, "items": len(job.rows), "ids_sha256": ids,
            "size": job.size, "frames": job.frames}


def check_plan(job: TokenJob, sec: TokenizeSection, world: int) -> None:
    want = _plan_record(job, sec, world)
    path = job.folder / "plan.json"
    if path.is_file():
        have = atomic.read_json(path)
        if have != want:
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            raise shards.ShardError(f"{path}: this token set was started with another plan (old, new): {diff}; "
                                    f"resume with the same settings, or delete {job.folder}")
        return
    atomic.write_json(path, want)


def expected_shards(job: TokenJob, shard_size: int, world: int) -> list[str]:
    return [shards.shard_name(k % world, k) for k in range(job.shard_count(shard_size))]


# ----------------------------------------------------------------------------- encoding


class ItemReader(torch.utils.data.Dataset):
    """Row index -> (index, uint8 pixels [frames, size, size, 3] or None, reason it failed or "")."""

    def __init__(self, job: TokenJob):
        self.job = job

    def __len__(self) -> int:
        return len(self.job.rows)

    def __getitem__(self, i: int):
        try:
            return i, _pixels(self.job, self.job.rows[i]), ""
        except manifest.ManifestError as e:
            return i, None, str(e)


def _batches(job: TokenJob, shard_ids: list[int], shard_size: int, batch_items: int) -> list[tuple[int, list[int]]]:
    """(shard, row indices) for every batch; a batch never crosses a shard boundary, so a shard's batches
    (and so its bytes) are the same whichever shards are left to do."""
    out = []
    for k in shard_ids:
        idx = list(range(k * shard_size, min((k + 1) * shard_size, len(job.rows))))
        out += [(k, idx[i:i + batch_items]) for i in range(0, len(idx), batch_items)]
    return out


def run_job(model, device, sha: str, job: TokenJob, sec: TokenizeSection, ranks: RankInfo) -> dict:
    g = job.size // model.downsample
    meta = shards.TokenSetMeta(grid=(job.frames, g, g), vocab_size=model.config.n_embed,
                               downsample=model.downsample, vqgan_sha256=sha)
    job.folder.mkdir(parents=True, exist_ok=True)
    shards.write_meta(job.folder, meta)
    check_plan(job, sec, ranks.world_size)
    # Temporaries of this rank from a killed run (other ranks' may be in flight: leave them alone).
    for tmp in job.folder.glob(f".shard-R{ranks.rank:03d}-*.tmp"):
        tmp.unlink(missing_ok=True)
    mine = [k for k in range(job.shard_count(sec.shard_size)) if k % ranks.world_size == ranks.rank]
    todo = [k for k in mine if not shards.shard_done(job.folder, shards.shard_name(ranks.rank, k))]
    stats = {"shards": len(mine), "skipped": len(mine) - len(todo), "items": 0, "rejected": 0}
    plan = _batches(job, todo, sec.shard_size, max(1, sec.batch_size // job.frames))
    loader = torch.utils.data.DataLoader(ItemReader(job), batch_sampler=[idx for _, idx in plan],
                                         num_workers=sec.num_workers, collate_fn=list)
    from tqdm import tqdm

    bar = tqdm(total=sum(len(idx) for _, idx in plan), desc=f"tokenize {job.kind}/{job.split} r{ranks.rank}",
               unit=job.kind[:-1], dynamic_ncols=True)
    codes, kept, rejects = [], [], []
    for n, ((k, _), items) in enumerate(zip(plan, loader)):
        good = [(i, px) for i, px, _ in items if px is not None]
        for i, _, reason in items:
            if reason:
                row = job.rows[i]
                rejects.append({"id": str(row["id"]), "path": str(row.get("path")), "reason": reason})
                log.warning("rejected %s: %s", row["id"], reason)
        if good:
            x = torch.from_numpy(np.concatenate([px for _, px in good])).to(device)
            x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            with torch.inference_mode():
                c = model.encode(x)
            codes.append(c.reshape(len(good), job.frames, g, g).cpu().numpy())
            kept += [job.rows[i] for i, _ in good]
        bar.update(len(items))
        if n + 1 == len(plan) or plan[n + 1][0] != k:  # the shard's last batch: write it
            name = shards.shard_name(ranks.rank, k)
            if rejects:
                atomic.write_json(job.folder / f"{name}.rejects.json", rejects)
            out = np.concatenate(codes) if codes else np.zeros((0, job.frames, g, g), dtype=np.int64)
            shards.write_shard(job.folder, name, out, kept, meta)
            stats["items"] += len(kept)
            stats["rejected"] += len(rejects)
            codes, kept, rejects = [], [], []
    bar.close()
    return stats


# ----------------------------------------------------------------------------- merging


def merge(job: TokenJob, sec: TokenizeSection, world: int, wait_s: float) -> int:
    names = expected_shards(job, sec.shard_size, world)
    deadline = time.monotonic() + wait_s
    while True:
        missing = [n for n in names if not shards.shard_done(job.folder, n)]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise shards.ShardError(f"{job.folder}: {len(missing)} planned shard(s) not finished, e.g. "
                                    f"{missing[:4]}; run the missing ranks, then `--merge-only`")
        time.sleep(1.0)
    n = shards.merge_index(job.folder)
    rejects = []
    for p in sorted(job.folder.glob("shard-*.rejects.json")):
        rejects.extend(atomic.read_json(p))
    if rejects:
        manifest.write_rows(job.folder / "rejects.parquet", rejects, ("id", "path", "reason"))
    return n


def _single_image_manifest(cfg: RunConfig, sec: TokenizeSection) -> Path | None:
    if sec.single_image_manifest is None:
        return None
    path = cfg.run_dir / sec.single_image_manifest
    return path if path.is_file() else None


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--merge-only", action="store_true",
                        help="only merge the finished shards' indices (after all ranks have run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    sec = cfg.section("tokenize", TokenizeSection)
    ranks = rank_info()
    downsample = vqgan_io.architecture(cfg).downsample
    single = _single_image_manifest(cfg, sec)
    if single is not None and (sec.tile % downsample or sec.tile_margin % downsample):
        raise ConfigError(f"{cfg.path}: tokenize.tile {sec.tile} and tile_margin {sec.tile_margin} must be "
                          f"multiples of the VQGAN's factor {downsample}")
    jobs = plan_jobs(cfg, sec, downsample, allow_empty=single is not None)
    if args.merge_only:
        for job in jobs:
            world = int(atomic.read_json(job.folder / "plan.json")["world_size"]) if (
                job.folder / "plan.json").is_file() else ranks.world_size
            n = merge(job, sec, world, wait_s=0.0)
            log.info("tokenize: merged %s (%d items)", job.folder, n)
        return 0

    device = pick_device(sec.device, ranks.local_rank, "tokenize.device")
    if device.type == "cuda":  # the same codes on every run
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    model, sha, _ = vqgan_io.load_vqgan(cfg, device)
    t0 = time.monotonic()
    summary = []
    if single is not None:
        from pipeline.tokens.single_image import read_rows, tokenize_canvases

        folder = cfg.run_dir / sec.out / "single_image"
        stats = tokenize_canvases(read_rows(single), folder, model, device, sha, sec.tile, sec.tile_margin, ranks,
                                  sec.batch_size)
        summary.append(f"single_image: {stats['canvases']} canvas(es) encoded, {stats['skipped']} already done "
                       f"-> {folder}")
    for job in jobs:
        stats = run_job(model, device, sha, job, sec, ranks)
        summary.append(f"{job.kind}/{job.split}: {stats['items']} encoded, {stats['rejected']} rejected, "
                       f"{stats['skipped']}/{stats['shards']} shards already done")
    if ranks.is_main:
        for job in jobs:
            n = merge(job, sec, ranks.world_size, sec.merge_wait_s)
            summary.append(f"{job.kind}/{job.split} index: {n} items")
    log.info("tokenize rank %d/%d done in %.1f s: %s", ranks.rank, ranks.world_size, time.monotonic() - t0,
             "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
