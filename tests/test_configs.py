"""The shipped run configs stay valid for every stage, and the config loader's rules hold."""

from pathlib import Path

import pytest

from pipeline import config as config_module
from pipeline.ablation.settings import AblateSection
from pipeline.config import ConfigError, load_config, load_yaml
from pipeline.curation.caption import CaptionConfig
from pipeline.curation.ingest_images import IngestImagesConfig
from pipeline.curation.ingest_videos import IngestVideosConfig
from pipeline.curation.object_filter import FilterConfig
from pipeline.curation.single_image import SingleImageSection
from pipeline.demo_data.make import DemoDataConfig
from pipeline.evaluation.evaluate import EvaluateConfig
from pipeline.evaluation.protocol import ProtocolSection
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
            "sample": SampleSection, "evaluate": EvaluateConfig, "protocol": ProtocolSection,
            "single_image": SingleImageSection, "ablate": AblateSection}


@pytest.mark.parametrize("name", ["demo.yaml", "paper_lhqc.yaml", "paper_lhqv.yaml", "single_image.yaml",
                                  "ablations.yaml"])
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


def test_unknown_top_level_sections_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntrian: {lr: 0.001}\nmodel: {preset: tiny}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown section\(s\) \['trian'\]; known: .*'train'"):
        load_config(bad)
    bad.write_text("run_dir: x\nprofiles: {video: {modle: {d_model: 8}}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: profiles\.video: unknown section\(s\) \['modle'\]"):
        load_config(bad)  # checked even when that profile is not the one asked for
    # every section a stage reads is known (the shipped configs use only those)
    assert set(SECTIONS) | {"run_dir", "seed", "profiles", "model", "single_image_run"} == set(config_module.SECTIONS)


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E-3", 0.001), ("5e+2", 500.0), ("-2e4", -20000.0), ("1.0e-3", 0.001), (".5", 0.5),
    ("1_000.5", 1000.5), (".inf", float("inf")), ("3", 3), ("0x10", 16), ("'1e-3'", "1e-3"), ("1e", "1e"),
    ("e5", "e5"), ("1.2.3", "1.2.3"),
])
def test_numbers_are_read_as_yaml_1_2_reads_them(text, value):
    loaded = load_yaml(f"v: {text}\n")["v"]
    assert loaded == value and type(loaded) is type(value)


def test_an_exponent_without_a_dot_is_a_valid_learning_rate(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train: {lr: 1e-3, micro_batch: 4, global_batch: 8}\n")
    sec = load_config(cfg).section("train", TrainSection)
    assert sec.lr == 0.001 and isinstance(sec.lr, float)
