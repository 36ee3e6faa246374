"""The shipped run configs stay valid for every stage, and the config loader's rules hold."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.curation.caption import CaptionConfig
from pipeline.curation.ingest_images import IngestImagesConfig
from pipeline.curation.ingest_videos import IngestVideosConfig
from pipeline.curation.object_filter import FilterConfig
from pipeline.curation.single_image import SingleImageSection
from pipeline.demo_data.make import DemoDataConfig
from pipeline.evaluation.evaluate import EvaluateConfig
from pipeline.formats.renderer_io import model_config
from pipeline.formats.vqgan_io import VQGANSection, architecture
from pipeline.sampling.sample import SampleSection, check_jobs
from pipeline.tokens.tokenize import TokenizeSection
from pipeline.tokens.train_vqgan import TrainVQGANSection
from pipeline.training.settings import TrainSection

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"demo_data": DemoDataConfig, "ingest_images": IngestImagesConfig, "ingest_videos": IngestVideosConfig,
            "filter": FilterConfig, "caption": CaptionConfig, "vqgan": VQGANSection,
            "train_vqgan": TrainVQGANSection, "tokenize": TokenizeSection, "train": TrainSection,
            "sample": SampleSection, "evaluate": EvaluateConfig, "single_image": SingleImageSection}


@pytest.mark.parametrize("name", ["demo.yaml", "paper_lhqc.yaml", "paper_lhqv.yaml", "single_image.yaml"])
def test_shipped_configs_parse_for_every_stage(name):
    cfg = load_config(ROOT / "configs" / name)
    assert not set(cfg.raw) - set(SECTIONS) - {"run_dir", "seed", "model", "single_image_run"}, \
        "a section no stage reads"
    if cfg.raw.get("single_image_run"):  # stage 95's follow-up run exists
        assert cfg.resolve(cfg.raw["single_image_run"]).is_file()
    for section, cls in SECTIONS.items():
        if cfg.has(section):
            cfg.section(section, cls)
    model_config(cfg)
    architecture(cfg)
    if cfg.has("sample"):
        check_jobs(cfg.section("sample", SampleSection), name)


def test_demo_video_profile_overlays_the_image_settings():
    base = load_config(ROOT / "configs" / "demo.yaml")
    video = load_config(ROOT / "configs" / "demo.yaml", profile="video")
    assert model_config(video).expand == (1, 1, 1) and model_config(base).expand == (2, 2, 0)
    assert model_config(video).d_model == model_config(base).d_model  # merged, not replaced
    assert video.run_dir != base.run_dir
    assert video.section("train", TrainSection).nproc_per_node == 2
    with pytest.raises(ConfigError, match="no profile 'audio'"):
        load_config(ROOT / "configs" / "demo.yaml", profile="audio")


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntrain: {micro_batchh: 4}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train: unknown key\(s\) \['micro_batchh'\]"):
        load_config(bad).section("train", TrainSection)
    bad.write_text("train: {micro_batch: four}\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch: expected an integer"):
        load_config(bad).section("train", TrainSection)
    bad.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad).section("train", TrainSection)
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
