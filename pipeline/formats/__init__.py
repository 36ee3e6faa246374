"""The files that pass between stages, each with its reader and its writer (atomic, checked on read).

    manifest.py        Parquet manifests of images and clips (curation -> tokens)
    video_io.py        MP4 clips: probe, cut, read frames, write (curation, tokens, sampling, demo data)
    shards.py          token shards: int16 code arrays + Parquet index + meta.json (tokens -> training, evaluation)
    canvas.py          code canvases: a single large image as one code grid with its training and held-out boxes
                       (tokens -> training, sampling, evaluation)
    vqgan_io.py        VQGAN weights: taming `.ckpt` or our safetensors + vqgan.json (tokens -> sampling, training)
    renderer_io.py     the trained renderer's export: safetensors + renderer.json (training -> sampling, evaluation)
    text_tokenizer.py  the caption tokenizer shipped with the export (training -> sampling, evaluation)

No stage logic lives here: a module in `formats` imports only `model` and the shared helpers.
"""
