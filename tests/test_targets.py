"""The `_target_` allow-list: every target the shipped configs name is allowed; anything else is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finexp.config import config_dir
from finexp.targets import (
    FINEXP_TARGETS,
    TRUST_ENV,
    UntrustedTargetError,
    check_arguments,
    check_target,
    instantiate,
    iter_targets,
)


def shipped_targets() -> set[str]:
    found = set()
    for path in Path(config_dir()).rglob("*.yaml"):
        tree = yaml.safe_load(path.read_text()) or {}
        found |= {target for _, target in iter_targets(tree) if isinstance(target, str) and "${" not in target}
    return found


def test_every_target_in_conf_is_allowed_and_every_finexp_entry_is_used_or_a_schema_default():
    targets = shipped_targets()
    assert "finexp.compile.Trainer" in targets and "finexp.optim.adamw" not in targets  # adamw: a schema default
    for target in targets:
        check_target(target, "conf", "conf/")
    for target in FINEXP_TARGETS:  # each allowed finexp name exists
        module, _, name = target.rpartition(".")
        assert hasattr(__import__(module, fromlist=[name]), name), target


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("builtins.open", "not on the allow-list"),
        ("os.system", "not on the allow-list"),
        ("torch.load", "not on the allow-list"),
        ("finexp.records.write_json", "not on the allow-list"),
        ("torch.optim._functional.sgd", "private"),
        ("pytorch_lightning.callbacks.__builtins__", "private"),
        (None, "not a dotted name"),
    ],
)
def test_targets_off_the_list_are_refused_naming_the_key(target, why):
    with pytest.raises(UntrustedTargetError, match=rf"run/config.yaml: adapter._target_=.*\({why}"):
        check_target(target, "adapter", "run/config.yaml")


def test_a_family_prefix_must_resolve_to_a_subclass_of_the_family_base(tmp_path):
    payload = tmp_path / "pwned"
    node = {"_target_": "torch.optim.sgd.torch.save", "obj": 1, "f": str(payload)}  # looks like an optimizer
    with pytest.raises(UntrustedTargetError, match=r"not a subclass of torch\.optim\.Optimizer"):
        instantiate(node, source="x.yaml")
    assert not payload.exists()
    nested = {"_target_": "pytorch_lightning.Trainer", "plugins": [{"_target_": "os.system", "command": "true"}]}
    with pytest.raises(UntrustedTargetError, match=r"plugins\[0\]._target_='os.system'"):
        instantiate(nested, source="x.yaml")


def test_the_environment_can_trust_a_users_own_callable(monkeypatch):
    with pytest.raises(UntrustedTargetError):
        check_target("collections.OrderedDict", "callbacks.mine", "the config")
    monkeypatch.setenv(TRUST_ENV, "collections.")
    check_target("collections.OrderedDict", "callbacks.mine", "the config")
    assert instantiate({"_target_": "collections.OrderedDict", "a": 1}) == {"a": 1}


def test_unknown_arguments_are_refused_before_anything_is_built():
    with pytest.raises(Exception, match=r"optimizer.lrr is not an argument of finexp.optim.adamw"):
        check_arguments({"_target_": "finexp.optim.adamw", "_partial_": True, "lrr": 1.0}, "optimizer")
    check_arguments({"_target_": "finexp.optim.adamw", "_partial_": True, "lr": 1.0}, "optimizer")
