"""Everything around the network: the stages of the NUWA-Infinity pipeline, one sub-package each.

    demo_data/   stage 00        procedural landscapes, captions and videos (the embedded default set)
    curation/    stages 10-30    image and video ingest, object filter, captions, train/test split
    tokens/      stages 40-50    VQGAN training, tokenisation into token shards, decoding back to pixels
    training/    stages 60-65    render-and-optimize on DeepSpeed: loop, data, checkpoints, telemetry, export
    sampling/    stage 70        any size, any direction, extension, image-to-video, streamed to disk
    evaluation/  stages 80-90    held-out bits per token, Block-FID, IS, CLIP-SIM, FVD, the paper's
                                 Tables 1-3 as commands (85), the run summary
    ablation/    ./run.sh ablate the paper's ablations (Table 4, Fig. 7): variants trained and measured by
                                 running the stages above as subprocesses, tables, JSON and curves
    bench/                       benchmarks that print JSON (`python -m pipeline.bench NAME`)

What passes between stages lives in `formats/` (manifests, token shards, clips, VQGAN weights, the
renderer export, the caption tokenizer); `config`, `atomic`, `ranks`, `errors` (how every stage fails:
one line, an exit status) and `lifeline` (no process outlives its stage) are the helpers every stage
uses. A stage family imports `model`, `formats` and those helpers, never another stage family, with
two documented exceptions: evaluation runs the trainer's held-out pass (`training.validate`), and the
paper's protocol (`evaluation.protocol`) samples what each table measures through the sampling
stage's public entry point (`sampling.sample.run_jobs`).
`tests/test_layout.py` holds the tree to these rules.
"""
