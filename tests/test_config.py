"""Presets and --set: every mistake is named with its key, its value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import apply_sets, list_presets, load_config, parse_set, shipped_presets, validate
from engine.errors import ConfigError

PROTOCOL_PRESETS = ["digits_default", "synthetic_default", "cifar100_d256_L4", "cifar10_d256_L4", "cifar100_d512_L2",
                    "cifar100_d512_L4", "cifar100_d512_L8", "cifar100_d512_L12", "cifar100_d256_L4_noln",
                    "cifar100_d256_L4_random"]


@pytest.mark.parametrize("name", sorted(shipped_presets()))
def test_every_shipped_preset_validates_and_names_itself(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert list_presets()[name] and not list_presets()[name].startswith("(invalid")


def test_the_protocol_presets_are_shipped_with_their_settings():
    for name in PROTOCOL_PRESETS:
        assert name in list_presets()
    flagship = load_config("cifar100_d256_L4")
    assert (flagship.dataset, flagship.d, flagship.L, flagship.terminal_ln) == ("cifar100", 256, 4, True)
    assert (flagship.lr, flagship.weight_decay, flagship.batch_size, flagship.seeds) == (1e-3, 0.01, 128, [42, 123, 456])
    assert load_config("cifar100_d256_L4_noln").terminal_ln is False
    assert load_config("cifar100_d256_L4_random").random_targets is True
    assert [load_config(f"cifar100_d512_L{L}").L for L in (2, 4, 8, 12)] == [2, 4, 8, 12]


def test_no_preset_means_the_embedded_digits_default():
    cfg = load_config(None)
    assert (cfg.name, cfg.dataset, cfg.model, cfg.d, cfg.L, cfg.terminal_ln) == ("digits_default", "digits", "resmlp",
                                                                               64, 4, True)


def test_shipped_presets_are_the_yaml_files_in_presets():
    here = Path(__file__).resolve().parent.parent / "presets"
    assert set(shipped_presets()) == {p.stem for p in here.glob("*.yaml")} >= set(PROTOCOL_PRESETS)
    assert all(path.read_text(encoding="utf-8") == (here / f"{name}.yaml").read_text(encoding="utf-8")
               for name, path in shipped_presets().items())


def test_threads_defaults_to_one_and_is_set_like_any_key():
    assert load_config(None).threads == 1
    assert load_config(None, ["threads=3"]).threads == 3


def test_set_overrides_top_level_and_nested_keys():
    cfg = load_config(None, ["epochs=2", "seeds=[42]", "thresholds.growth=100", "diagnostics.rho_every=5"])
    assert (cfg.epochs, cfg.seeds, cfg.thresholds.growth, cfg.diagnostics.rho_every) == (2, [42], 100.0, 5)


def test_unknown_key_names_it_and_lists_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["epoch=2"])
    msg = str(err.value)
    assert "unknown key 'epoch'" in msg and "epochs" in msg


def test_unknown_nested_key_lists_that_section():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["thresholds.grwth=3"])
    assert "thresholds.grwth" in str(err.value) and "g_floor" in str(err.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["epochs=many"])
    assert "epochs = 'many'" in str(err.value) and "integer" in str(err.value)


@pytest.mark.parametrize("item,key", [("epochs=0", "epochs"), ("d=-3", "d"), ("lr=0", "lr"),
                                      ("methods=[bp,sgd]", "methods"), ("dataset=mnist", "dataset"),
                                      ("device=tpu", "device"), ("penalties=[-1]", "penalties"),
                                      ("seeds=[]", "seeds"), ("threads=0", "threads"),
                                      ("threads=two", "threads")])
def test_out_of_range_values_are_refused_with_what_is_allowed(item, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [item])
    msg = str(err.value)
    assert key in msg
    assert "→" in msg  # every error carries what to do


def test_unknown_method_lists_known_methods():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["methods=[bp,sgd]"])
    assert "'sgd'" in str(err.value) and "dfa" in str(err.value)


def test_malformed_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\n  d: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert "not valid YAML" in str(err.value) and "line" in str(err.value)


def test_unknown_preset_lists_shipped_ones():
    with pytest.raises(ConfigError) as err:
        load_config("cifar1000")
    assert "unknown preset 'cifar1000'" in str(err.value) and "synthetic_default" in str(err.value)


def test_yaml_tags_are_not_constructed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        load_config(str(evil))


def test_set_needs_key_equals_value():
    with pytest.raises(ConfigError):
        parse_set("epochs")
    with pytest.raises(ConfigError):
        parse_set("../x=1")
    assert parse_set("penalties=[1e-3, 0.1]") == (["penalties"], [1e-3, 0.1])


def test_audit_name_cannot_escape_the_runs_dir():
    with pytest.raises(ConfigError):
        validate({"name": "../../etc"})
    with pytest.raises(ConfigError):
        validate({"name": "a/b"})


def test_apply_sets_does_not_mutate_the_input():
    data = {"thresholds": {"growth": 50}}
    out = apply_sets(data, ["thresholds.growth=10"])
    assert data == {"thresholds": {"growth": 50}} and out["thresholds"]["growth"] == 10


@pytest.mark.parametrize("sets, words", [
    (["dataset=synthetic", "model=cnn", "synthetic.in_dim=32"], "needs images"),
    (["dataset=synthetic", "model=vit_mini", "synthetic.in_dim=64", "patch=3"], "patch = 3 does not divide"),
    (["model=vit_mini", "heads=5"], "heads = 5 does not divide d = 64"),
])
def test_image_model_refusals_name_the_key_and_leave_nothing_written(tmp_path, sets, words):
    from typer.testing import CliRunner

    from faeval_tui.cli import app

    res = CliRunner().invoke(app, ["run", *[a for s in sets for a in ("--set", s)], "--runs-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
