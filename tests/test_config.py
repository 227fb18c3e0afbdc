"""Config loading: defaults, overrides, and errors that name the bad key and value."""
from __future__ import annotations

import pytest

from imgshards.config import ConfigError, load_config


def test_default_config_file_loads_and_validates():
    config = load_config()
    assert config.preprocess.size == 224
    assert config.ingest.split.train == pytest.approx(0.8)
    assert "jpg" in config.ingest.extensions


def test_overrides_are_typed_from_yaml():
    config = load_config(overrides=["preprocess.size=96", "preprocess.output_format=png", "ingest.split.train=0.7",
                                    "ingest.split.test=0.2", "input=/data/raw"])
    assert config.preprocess.size == 96
    assert config.preprocess.output_format == "png"
    assert config.ingest.split.train == pytest.approx(0.7)
    assert config.input == "/data/raw"


@pytest.mark.parametrize(
    "override, message",
    [
        ("preprocess.sise=96", "preprocess.sise"),
        ("nonsense=1", "nonsense"),
        ("preprocess.size=0", "preprocess.size"),
        ("preprocess.size=big", "preprocess.size"),
        ("preprocess.output_format=gif", "preprocess.output_format"),
        ("preprocess.quality=101", "preprocess.quality"),
        ("ingest.split.train=0.9", "ingest.split"),
        ("ingest.max_bytes=3000000000", "ingest.max_bytes"),
        ("ingest.extensions=[]", "ingest.extensions"),
        ("ingest.content=link", "ingest.content"),
        ("preprocess.draft=maybe", "preprocess.draft"),
        ("export.row_group_size_mb=0", "export.row_group_size_mb"),
        ("preprocess", "key=value"),
        ("preprocess.resize=stretch", "preprocess.resize"),
        ("preprocess.pad_value=300", "preprocess.pad_value"),
        ("preprocess.output_format=raw", "export.codec"),  # raw arrays are not JPEG/PNG
        ("preprocess.augment.ops=[spin]", "preprocess.augment.ops"),
        ("preprocess.augment.splits=[holdout]", "preprocess.augment.splits"),
        ("preprocess.augment.copies=-1", "preprocess.augment.copies"),
        ("preprocess.augment.brightness=2", "preprocess.augment.brightness"),
    ],
)
def test_bad_settings_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(overrides=[override])


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess:\n  size: 64\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"preprocess\.colour"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_fingerprint_follows_the_settings_it_covers():
    a = load_config()
    b = load_config(overrides=["preprocess.size=64"])
    c = load_config(overrides=["ingest.max_pixels=1000"])
    assert a.fingerprint("preprocess") == load_config().fingerprint("preprocess")
    assert a.fingerprint("preprocess") != b.fingerprint("preprocess")
    assert a.fingerprint("preprocess") == c.fingerprint("preprocess")
    # The backend does not change what rows are for; it is recorded per row instead.
    assert a.output_fingerprint() == load_config(overrides=["preprocess.backend=dali-cpu"]).output_fingerprint()
    assert a.output_fingerprint() != b.output_fingerprint()


def test_unknown_backend_fails():
    with pytest.raises(ConfigError, match="preprocess.backend"):
        load_config(overrides=["preprocess.backend=cuda"])
