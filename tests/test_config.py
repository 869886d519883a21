"""Typed config: YAML + key=value overrides, clear errors naming keys and types."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from reidbench.config import ConfigError, diff_keys, flatten, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 1e-3
    milestones: tuple[int, ...] = (30, 50)
    kind: Literal["adam", "sgd"] = "adam"


@dataclass
class Top:
    name: str = "x"
    epochs: int = 10
    root: str | None = None
    amp: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_overrides_with_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 3\noptim:\n  lr: 0.1\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\n")
    cfg = load_config(Top, [tmp_path / "child.yaml"], ["optim.lr=5e-5", "optim.milestones=[1, 2]", "amp=true"])
    assert cfg.name == "child" and cfg.epochs == 3 and cfg.amp is True
    assert cfg.optim.lr == 5e-5 and cfg.optim.milestones == (1, 2)


def test_misspelt_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config(Top, overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        load_config(Top, overrides=["epoch=1"])


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"'epochs': expected int, got 'ten'"):
        load_config(Top, overrides=["epochs=ten"])
    with pytest.raises(ConfigError, match=r"'optim.kind': expected one of \['adam', 'sgd'\].*did you mean 'adam'"):
        load_config(Top, overrides=["optim.kind=adan"])
    with pytest.raises(ConfigError, match=r"'amp': expected bool"):
        load_config(Top, overrides=["amp=1"])


def test_int_accepted_for_float_and_null_for_optional():
    cfg = load_config(Top, overrides=["optim.lr=1", "root=null"])
    assert isinstance(cfg.optim.lr, float) and cfg.root is None


def test_no_unsafe_yaml(tmp_path):
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_config(Top, [tmp_path / "evil.yaml"])
    # override values are parsed as data, never evaluated
    assert parse_overrides(["name=__import__('os')"]) == {"name": "__import__('os')"}


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])


def test_flatten_and_diff():
    a = {"optim": {"lr": 1, "kind": "adam"}, "seed": 0}
    b = {"optim": {"lr": 2, "kind": "adam"}, "seed": 0, "new": 1}
    assert flatten(a) == {"optim.lr": 1, "optim.kind": "adam", "seed": 0}
    assert diff_keys(a, b) == ["new", "optim.lr"]


def test_cli_help_does_not_import_torch():
    """``reidbench --help`` and argument errors answer at once (0.3 s) instead of after
    torch's and transformers' imports (3+ s)."""
    import subprocess
    import sys

    code = ("import sys; from reidbench.cli import build_parser; build_parser(); "
            "heavy = sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
