"""Typed configs: defaults < YAML < flags; clear errors for unknown keys and wrong types."""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from anomalign.config import (add_config_arguments, build_config, config_from_args, load_config, option,
                              save_config)
from anomalign.errors import ConfigError


@dataclass(kw_only=True)
class Cfg:
    path: Path = option(help="input", positional=True)
    steps: int = option(10, "training steps")
    lr: float = option(1e-4, "learning rate")
    mode: Literal["a", "b"] = option("a", "mode")
    tags: list[str] = option(default_factory=lambda: ["x"], help="tags")
    ema: bool = option(True, "use EMA")
    out: Path | None = option(None, "output")


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, Cfg)
    return config_from_args(Cfg, p.parse_args(argv))


def test_defaults_yaml_and_flag_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("steps: 50\nlr: 0.01\nmode: b\ntags: [p, q]\n")
    cfg = parse(["data", "--config", str(y), "--steps", "7", "--no-ema"])
    assert cfg == Cfg(path=Path("data"), steps=7, lr=0.01, mode="b", tags=["p", "q"], ema=False)
    assert parse(["data"]) == Cfg(path=Path("data"))


def test_unknown_key_and_bad_type_name_the_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stpes: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown option\(s\) \['stpes'\]"):
        parse(["data", "--config", str(y)])
    y.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'steps'.*expected an integer"):
        parse(["data", "--config", str(y)])
    y.write_text("mode: c\n")
    with pytest.raises(ConfigError, match=r"'c' is not one of \['a', 'b'\]"):
        parse(["data", "--config", str(y)])
    y.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse(["data", "--config", str(y)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse(["data", "--config", str(tmp_path / "none.yaml")])


def test_save_and_load_round_trip(tmp_path):
    cfg = build_config(Cfg, {"path": "d", "steps": 3, "out": "o"})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Cfg, tmp_path / "config.yaml") == cfg


def test_yaml_is_read_safely(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("path: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, y)


def test_recipes_are_defaults_that_given_options_override():
    from anomalign.segmenter.train import TrainSegmenterConfig
    measured = build_config(TrainSegmenterConfig, dict(train="d", out="o"))
    assert (measured.preset, measured.anomaly_weight, measured.dice_weight, measured.train_normals) == \
        ("unet-tiny", 5.0, 1.0, False)
    assert measured.fb_warmup_steps == measured.max_steps // 2 == 1600 and measured.temperature == 0.1
    paper = build_config(TrainSegmenterConfig, dict(train="d", out="o", recipe="paper", anomaly_weight=3.0))
    assert (paper.preset, paper.anomaly_weight, paper.dice_weight, paper.fb_warmup_steps, paper.temperature,
            paper.fb_rows, paper.train_normals) == ("tiny", 3.0, 0.0, 0, 0.5, 0, True)
    with pytest.raises(ConfigError, match="unknown recipe 'fast'; choose one of"):
        build_config(TrainSegmenterConfig, dict(train="d", out="o", recipe="fast"))
