"""The recommended cluster DeepSpeed configs (docs/multinode.md) load and train two CPU ranks.

Real launcher runs (torchrun, gloo) of the tiny preset, reusing tests/test_train_deepspeed's helpers. DeepSpeed
has no CPU quantizer kernels, so the ZeRO++ config runs here with qwZ and qgZ off and its hpZ partition at the
two ranks; everything else is the shipped file.
"""

import json

import numpy as np
import pytest

from pipeline.training.settings import REPO_DS_CONFIGS
from tests.test_train_data import make_token_set
from tests.test_train_deepspeed import losses, train, write_config

pytestmark = pytest.mark.slow

CPU_ONLY = {"cluster_zero3pp_bf16": {"zero_optimization": {"zero_quantized_weights": False,
                                                           "zero_quantized_gradients": False,
                                                           "zero_hpz_partition_size": 2}}}


@pytest.mark.parametrize("name", ["node_zero2_bf16", "cluster_zero3pp_bf16"])
def test_cluster_config_trains_two_ranks(name, tmp_path):
    shipped = json.loads((REPO_DS_CONFIGS / f"{name}.json").read_text())
    assert shipped["bf16"] == {"enabled": True, "check_grad_overflow": False}
    for key, value in CPU_ONLY.get(name, {}).get("zero_optimization", {}).items():
        assert key in shipped["zero_optimization"] and shipped["zero_optimization"][key] != value
    data = make_token_set(tmp_path / "data", n=8)
    run = tmp_path / name
    # About 40 s each on an idle 2-core machine; the limit allows for a JIT rebuild of DeepSpeed's comm op, which
    # a run under another path to the same venv (the stage scripts' torchrun) triggers.
    out = train(write_config(run, data, micro_batch=2, epochs=1, ds_config=name, ds_overrides=CPU_ONLY.get(name, {})),
                ranks=2, timeout=600)
    stage = shipped["zero_optimization"]["stage"]
    assert f"world size 2 (gloo), ZeRO stage {stage}, bf16" in out
    loss, steps = losses(run)
    assert steps == [4, 8] and len(loss) == 8 and np.isfinite(loss).all()
    assert (run / "train" / "export" / "renderer.safetensors").is_file()
