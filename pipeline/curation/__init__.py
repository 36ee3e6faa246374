"""Stages 10-30: from raw images and videos to manifests of usable, captioned, split items (LHQC, LHQ-V).

Reads: image folders, datasets saved on disk or URL lists; video folders, URL lists or Pexels JSON
exports; a Mask R-CNN state dict and a captioner directory, by path.
Writes (under run_dir/data/): `images/manifest.parquet` and `videos/clips.parquet` (pipeline.formats.manifest),
the cut clips (`videos/clips/*.mp4`), `rejects.parquet` files naming every dropped item and why.

Entry points: `ingest_images` (stage 10), `single_image` (12: one large image, or a few, as the whole data
set; writes data/single_image/: the pixels as .npy and manifest.parquet with training and held-out boxes),
`ingest_videos` (15), `object_filter` (20), `caption` (30, ending with `split`). `chunked` is the
protocol they share: work in chunks per rank, a chunk done only when its marker exists, a final merge;
`image_checks`, `image_sources` and `download` serve ingest; `detectors` loads the object filter's Mask R-CNN.
"""
