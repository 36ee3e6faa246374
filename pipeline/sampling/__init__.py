"""Stage 70: generation at any size and in any direction (paper Algorithm 2), streamed to disk.

Reads: the renderer export (pipeline.formats.renderer_io), the VQGAN (pipeline.formats.vqgan_io),
the image manifest for held-out images to extend, clips for first frames.
Writes (under run_dir/samples/): PNG images and MP4 videos, each with a JSON of its settings (and its
code grid as `.codes.npy` when `save_codes` is set).

Entry point: `sample` (the jobs of the `sample` section). `generate` walks the patch grid with the
context pool (AR / NAR / P-NAR, extension from given codes); `stream_decode` turns finished slabs of
codes into pixels in overlapping windows so that memory stays flat however wide the image grows;
`image_to_video` predicts frames from a first frame; `inputs` reads prompt files and sets of manifest
rows; `given` reads the jobs' inputs (pictures, encoded whole or in tiles, and code grids: a single-image
run's canvas or a sample's own codes, continued with their codes unchanged); `sampler` holds the loaded
models. `sample.run_jobs` is also the entry point of the paper's protocol (pipeline.evaluation.protocol,
the one other family that calls into sampling).
"""
