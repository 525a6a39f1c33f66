"""Configuration loading: defaults, profiles, and errors that name the file, key and expectation."""

from __future__ import annotations

import pytest

from cvr.config import Config, ConfigError, load_config


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_local_profile():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.profile == "local"
    assert cfg.spark.master == "local[*]"
    assert cfg.storage.root == "./data"


def test_file_overrides_profile_and_root_overrides_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 5\n  lr: 1\nstorage:\n  root: /x\n")
    cfg = load_config(path, root="/y")
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.storage.root == "/y"


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "epoch" in msg and "epochs" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: big\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "batch_size" in msg and "expected int" in msg and "'big'" in msg


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="expected int"):
        load_config(write(tmp_path, "train:\n  np: true\n"))


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: configuration file not found"):
        load_config(missing)


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_value_range_validation(tmp_path):
    with pytest.raises(ConfigError, match="storage.format"):
        load_config(write(tmp_path, "storage:\n  format: orc\n"))


def test_profiles(tmp_path):
    assert load_config(profile="standalone").spark.master.startswith("spark://")
    cluster = load_config(profile="cluster")
    assert cluster.storage.format == "delta" and cluster.train.np == 8
    with pytest.raises(ConfigError, match="--profile"):
        load_config(profile="laptop")


def test_standalone_profile_needs_spark_url(tmp_path):
    path = write(tmp_path, "spark:\n  master: local[2]\n")
    with pytest.raises(ConfigError, match="spark://"):
        load_config(path, profile="standalone")


def test_digest_changes_with_config(tmp_path):
    a = load_config()
    b = load_config(write(tmp_path, "train:\n  epochs: 9\n"))
    assert a.digest() == load_config().digest()
    assert a.digest() != b.digest()


def test_learning_rate_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="train.lr' expected a learning rate > 0, got 0.0"):
        load_config(write(tmp_path, "train:\n  lr: 0\n"))
