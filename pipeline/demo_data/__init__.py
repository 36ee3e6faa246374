"""Stage 00: the embedded default data set, made offline: procedural landscapes with captions, and videos.

Reads: the `demo_data` section of the run config (counts, sizes, seed).
Writes (under run_dir/demo_data/): `images/*.png` and `videos/*.mp4`, each folder with a `metadata.jsonl`
of captions (the Hugging Face imagefolder layout, which curation ingests like any other source), and
`scenes.jsonl`, the ground truth of every file.

Entry point: `make` (stage 00). `landscape` draws one scene (sky by time of day, sun or moon, clouds,
ridges, water, fields) and its caption from a seed.
"""
