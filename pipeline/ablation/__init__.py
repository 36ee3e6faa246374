"""The paper's ablations (section 4.3: Table 4a-e, Fig. 7a-b), one command each, at any scale.

Reads: the run config (sections `model` and `train` as every variant's base, `ablate` for the budget and
the variants' settings, `evaluate`/`sample`/`vqgan` when the paper's metrics have weights), a training
token set and a held-out one (pipeline.formats.shards).
Writes (under `ablate.run_dir`, default run_dir/ablations): `variants/<key>/` one folder per distinct
variant (its config, its training run, its per-epoch validation curve, a done marker), and per ablation
`NAME/table.md`, `NAME/results.json`, `NAME/curves.png`, `NAME/speed.json`.

Entry point: `ablate` (`./run.sh ablate NAME --config C.yaml`). `variants` defines each ablation's rows and
the paper's figures; `runner` trains and measures one variant by running the other stages' entry points
as subprocesses (stage 60's script, `training.curve`, stages 70 and 80, `pipeline.bench render`), never by
importing them; `paper_metrics` decides whether Block-FID / IS / CLIP-SIM can run; `report` the rows, the
convergence epochs, the verdict and the Markdown; `curves` the PNG; `settings` the `ablate` section.
"""
