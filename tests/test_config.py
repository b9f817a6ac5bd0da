"""TrainConfig / method configs: typed coercion, validation messages, --set parsing, routing of keys."""

import pytest

from trainables.config import ConfigError, TrainConfig, coerce_dataclass, parse_overrides
from trainables.trial import TrialSpec


def test_parse_overrides_reads_yaml_literals_and_never_evaluates():
    out = parse_overrides(["temperature=0.1", "selfcon_pos=[false,true,false]", "schedule=cosine",
                           "mean=[0.5, 0.4, 0.3]", "x=__import__('os').system('false')"])
    assert out["temperature"] == 0.1
    assert out["selfcon_pos"] == [False, True, False]
    assert out["schedule"] == "cosine"
    assert out["mean"] == [0.5, 0.4, 0.3]
    assert out["x"] == "__import__('os').system('false')"  # a plain string, not evaluated


@pytest.mark.parametrize("item", ["noequals", "=1", "k=[unclosed"])
def test_parse_overrides_rejects_malformed(item):
    with pytest.raises(ConfigError):
        parse_overrides([item])


def test_recipe_applies_under_user_values():
    spec = TrialSpec.from_settings("ce", {"epochs": 3})
    assert spec.train.lr == 0.8 and spec.train.epochs == 3
    spec = TrialSpec.from_settings("ce", {"lr": 0.1})
    assert spec.train.lr == 0.1


def test_simclr_defaults_differ_from_supcon():
    assert TrialSpec.from_settings("simclr").method_config.temperature == 0.5
    assert TrialSpec.from_settings("supcon").method_config.temperature == 0.1


def test_flat_roundtrip():
    spec = TrialSpec.from_settings("supcon", {"temperature": 0.2, "lr_decay_epochs": [3, 5], "schedule": "step",
                                              "epochs": 6})
    flat = spec.flat()
    assert flat["method"] == "supcon" and flat["temperature"] == 0.2 and flat["lr_decay_epochs"] == [3, 5]
    again = TrialSpec.from_settings(flat.pop("method"), flat)
    assert again == spec


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "sgd, lars, adam"),
        ({"amp": "fp8"}, "auto, off, bf16, fp16"),
        ({"no_such_field": 1}, "unknown setting `no_such_field`"),
        ({"epochs": 2.5}, "`epochs` must be an integer"),
        ({"sync_bn": "yes"}, "`sync_bn` must be true or false"),
        ({"schedule": "step"}, "lr_decay_epochs"),
        ({"std": [0.1, 0.0, 0.1]}, "std"),
        ({"mean": [0.1, 0.2]}, "mean"),
    ],
)
def test_invalid_settings_name_the_field(settings, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        TrialSpec.from_settings("supcon", settings)


def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError, match="ce.*simclr.*supcon"):
        TrialSpec.from_settings("byol")


def test_batch_must_divide_world():
    spec = TrialSpec.from_settings("supcon", {"batch_size": 5})
    spec.check_world(1)
    with pytest.raises(ConfigError, match="multiple of the number of workers"):
        spec.check_world(2)


def test_coerce_converts_lists_to_tuples_and_ints_to_floats():
    cfg = coerce_dataclass(TrainConfig, {"lr": 1, "mean": [0.5, 0.5, 0.5]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("field", "allowed"), [("stem", "auto, cifar, imagenet"), ("optimizer", "sgd, lars, adam"),
                                                ("lr_scaling", "none, linear"), ("schedule", "cosine, step, constant"),
                                                ("amp", "auto, off, bf16, fp16")])
def test_literal_fields_are_checked_against_their_annotation(field: str, allowed: str) -> None:
    """Built directly (not through coerce_dataclass), every Literal field is still checked, from its annotation."""
    with pytest.raises(ConfigError, match=rf"^`{field}` must be one of {allowed}; got {field}='bad'$"):
        TrainConfig(**{field: "bad"})


def test_sweep_choices_come_from_their_annotation() -> None:
    from search.spec import SAMPLERS, SweepConfig

    assert SAMPLERS == ("tpe", "random", "cmaes", "gp", "nsga2")
    with pytest.raises(ConfigError, match=r"^`sampler` must be one of tpe, random, cmaes, gp, nsga2; got sampler='x'$"):
        SweepConfig(name="s", space="supcon", storage_path="/tmp", sampler="x")


def test_yaml_flow_is_what_set_parses() -> None:
    from trainables.config import yaml_flow

    assert yaml_flow((False, True, False)) == "[false,true,false]" and yaml_flow([1, 30]) == "[1,30]"
    assert parse_overrides([f"x={yaml_flow([True, 0.5])}"]) == {"x": [True, 0.5]}
