"""Stages 40-50: the VQGAN (taming-compatible) and the token shards the renderer trains on.

Reads: the manifests of curation (pipeline.formats.manifest), the clips, and a VQGAN given by path
(taming `last.ckpt`) or trained here.
Writes: `vqgan/vqgan.safetensors` + `vqgan.json` (pipeline.formats.vqgan_io) and
`tokens/{images,videos}/{train,test}/` token shards (pipeline.formats.shards).

Entry points: `train_vqgan` (stage 40; losses in `vqgan_losses`), `tokenize` (stage 50), and
`decode` (codes back to a PNG or MP4, to look at a token set). `single_image` serves both for a
single-image run: random crops of the image for the VQGAN, and its tiled encoding into a code canvas
(pipeline.formats.canvas) under `tokens/single_image/`.
"""
