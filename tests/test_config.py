"""The one YAML-config base (`medfuse.config.YamlConfig`) behind the model, cohort and stage configs."""

from __future__ import annotations

import pytest

from medfuse.errors import ConfigError, InputError
from medfuse.model.config import ModelConfig
from medfuse.synth.cohort import SynthConfig
from medfuse.train.config import GRPOConfig, SFTConfig

CONFIGS = [
    ModelConfig(d_model=64, fusion="late", finding_threshold=0.3),
    SynthConfig(n=7, p_cxr=0.25, disease_rules={"sepsis": {"base": 0.1}}),
    SFTConfig(cohort="c", out="o", init="i", langs=["zh"], task_weights={"diagnosis": 4.0}),
    GRPOConfig(cohort="c", out="o", init="i", group_size=3, reward_weights={"jaccard": 1.0}),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_config_written_as_yaml_reads_back_equal(config, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    again = type(config).from_yaml(path)
    assert again == config and again.as_dict() == config.as_dict()
    assert all(type(config).help().values()), "every field has help text"


def test_flags_override_the_file_and_ints_are_fine_for_floats(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("cohort: c\nout: o\ninit: i\nlr: 1\nbatch_size: 2\n", encoding="utf-8")
    cfg = SFTConfig.from_yaml(path, {"batch_size": 8, "epochs": None})
    assert cfg.batch_size == 8 and cfg.epochs == 1 and cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize("cls", [ModelConfig, SynthConfig, SFTConfig])
def test_bad_config_files_are_one_error_naming_the_file(cls, tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputError, match="config file not found") as e:
        cls.from_yaml(missing)
    assert str(missing) in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: [unclosed", encoding="utf-8")
    with pytest.raises(InputError, match="invalid YAML") as e:
        cls.from_yaml(bad)
    assert len(str(e.value).splitlines()) == 1
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(InputError, match="mapping"):
        cls.from_yaml(listed)


def test_unknown_keys_wrong_types_and_bad_values_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text("n: 10\nsede: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cohort\.yaml: unknown key 'sede'"):
        SynthConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="n: expected int, got 'ten'"):
        SynthConfig.from_dict({"n": "ten"})
    with pytest.raises(ConfigError, match="n: must be a positive integer, got 0"):
        SynthConfig.from_dict({"n": 0})
    with pytest.raises(ConfigError, match="max_steps: must be a positive integer or null, got 0"):
        SFTConfig.from_dict({"cohort": "c", "out": "o", "init": "i", "max_steps": 0})
    with pytest.raises(ConfigError, match=r"tokens\.ecg: must be an integer >= 2"):
        ModelConfig.from_dict({"tokens": {"ecg": 1}})
