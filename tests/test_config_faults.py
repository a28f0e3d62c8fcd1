"""Hostile or impossible configurations: each is refused with a ConfigError that names the
file or key and says what to do, quickly, before anything is allocated or written.

F8 encoding and nesting, F9 alias bombs and huge reprs, F10 bools as numbers and
cross-field combinations every run would fail on, F11 sizes that cannot fit in memory.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.config import load_config, shipped_presets, validate
from engine.errors import ConfigError
from engine.sizing import check_fits, estimate_bytes, param_count, run_count
from engine.yamlsafe import MAX_YAML_DEPTH, MAX_YAML_NODES

GiB = 1 << 30


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs preset: each level lists the previous one ``width`` times (~700 bytes)."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f'{names[0]}: &{names[0]} [' + ", ".join(['"x"'] * width) + "]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
    lines.append(f"description: *{names[-1]}")
    return "\n".join(lines) + "\n"


def deep(levels: int) -> str:
    return "description: " + "[" * levels + "]" * levels + "\n"


def refused(preset: str | None = None, sets: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(preset, sets)
    assert err.value.problem and err.value.hint
    return str(err.value)


def write(tmp_path: Path, data: str | bytes, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ---- F8: encoding and nesting -------------------------------------------------------------------

def test_a_preset_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, "description: café\nepochs: 2\n".encode("latin-1"))
    msg = refused(str(path))
    assert str(path) in msg and "UTF-8" in msg and "line 1" in msg


def test_a_utf8_preset_with_a_byte_order_mark_still_loads(tmp_path):
    path = write(tmp_path, "\ufeffdescription: café\nepochs: 2\n".encode("utf-8"))
    cfg = load_config(str(path))
    assert (cfg.description, cfg.epochs) == ("café", 2)


@pytest.mark.parametrize("text", [deep(20_000), deep(MAX_YAML_DEPTH + 1),
                                  "".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "x: 1\n"],
                         ids=["flow-20000", "flow-just-over", "block-200"])
def test_yaml_nested_beyond_the_limit_is_refused_naming_the_file(tmp_path, text):
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    msg = refused(str(path))
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in msg and f"{MAX_YAML_DEPTH} levels" in msg and "at line " in msg


def test_nesting_a_legitimate_preset_uses_is_accepted(tmp_path):
    path = write(tmp_path, "diagnostics:\n  n_samples: 512\n  rho_samples: 512\nseeds: [1, 2]\n")
    assert load_config(str(path)).diagnostics.n_samples == 512
    # at the limit the loader reads it, and validation refuses the value for its type, not its depth
    msg = refused(str(write(tmp_path, deep(MAX_YAML_DEPTH - 1), "ok_depth.yaml")))
    assert "description" in msg and "levels" not in msg


def test_a_set_value_nested_too_deep_is_refused_naming_the_key():
    msg = refused(None, ["description=" + "[" * 20_000 + "]" * 20_000])
    assert "--set description" in msg and f"{MAX_YAML_DEPTH} levels" in msg


def test_a_set_value_yaml_cannot_construct_is_taken_as_its_text():
    msg = refused(None, ["epochs=" + "1" * 5000])  # more digits than Python converts
    assert "epochs = '111" in msg and "integer" in msg and len(msg) < 500
    assert load_config(None, ["description=2024-13-45"]).description == "2024-13-45"  # no such date


@pytest.mark.parametrize("text", ["epochs: " + "9" * 5000 + "\n", "description: 2024-13-45\n"],
                         ids=["5000-digit-int", "bad-date"])
def test_a_value_yaml_cannot_construct_is_refused_with_its_line(tmp_path, text):
    path = write(tmp_path, "name: x\n" + text)
    msg = refused(str(path))
    assert str(path) in msg and "line 2" in msg


def test_a_huge_preset_file_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path, "description: '" + "x" * (2 << 20) + "'\n")
    msg = refused(str(path))
    assert str(path) in msg and "MiB" in msg


# ---- F9: alias bombs and huge reprs -------------------------------------------------------------

def test_a_billion_laughs_preset_is_refused_fast(tmp_path):
    text = laughs()
    assert len(text) < 800
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    msg = refused(str(path))
    assert time.perf_counter() - t0 < 0.5
    assert str(path) in msg and "alias" in msg and f"{MAX_YAML_NODES:,}" in msg and len(msg) < 1000


def test_a_billion_laughs_set_value_is_refused_fast():
    body = laughs().replace("\n", ", ").replace("description: ", "z: ")
    t0 = time.perf_counter()
    msg = refused(None, ["thresholds={" + body.rstrip(", ") + "}"])
    assert time.perf_counter() - t0 < 0.5 and "alias" in msg and "--set thresholds" in msg


def test_a_self_referencing_alias_is_refused(tmp_path):
    msg = refused(str(write(tmp_path, "seeds: &s [1, *s]\n")))
    assert "alias" in msg and "line 1" in msg


def test_small_aliases_are_still_allowed(tmp_path):
    cfg = load_config(str(write(tmp_path, "methods: &m [fa, dfa]\npenalty_methods: *m\nseeds: [&s 7]\n")))
    assert cfg.methods == cfg.penalty_methods == ["fa", "dfa"] and cfg.seeds == [7]


def test_a_validation_message_never_builds_a_huge_repr():
    leaf: list = ["x"] * 9
    for _ in range(7):  # 9^8 ≈ 43 million shared leaves: a repr of it is ~200 MB
        leaf = [leaf] * 9
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        validate({"description": leaf, "seeds": leaf, "name": "n" * 10_000_000})
    assert time.perf_counter() - t0 < 0.5
    msg = str(err.value)
    assert len(msg) < 1000 and "description" in msg and "seeds" in msg and "name" in msg


def test_many_unknown_keys_give_a_bounded_message():
    with pytest.raises(ConfigError) as err:
        validate({f"bogus{i}": i for i in range(1000)})
    msg = str(err.value)
    assert "unknown key 'bogus0'" in msg and "epochs" in msg and "more" in msg and len(msg) < 2000


# ---- F10: types and cross-field combinations ----------------------------------------------------

@pytest.mark.parametrize("item,key", [
    ("d=true", "d"), ("L=false", "L"), ("epochs=true", "epochs"), ("lr=true", "lr"), ("r=true", "r"),
    ("workers=true", "workers"), ("seeds=[true]", "seeds.0"), ("penalties=[1e-3, true]", "penalties.1"),
    ("thresholds.growth=true", "thresholds.growth"), ("synthetic.n_train=true", "synthetic.n_train"),
    ("diagnostics.rho_eps=true", "diagnostics.rho_eps"), ("diagnostics.n_samples=false", "diagnostics.n_samples")])
def test_a_bool_is_never_a_number(item, key):
    msg = refused(None, [item])
    assert f"{key} = " in msg and ("integer" in msg or "number" in msg)


@pytest.mark.parametrize("item,key", [("download=1", "download"), ("terminal_ln=yes_please", "terminal_ln"),
                                      ("epochs=2.5", "epochs"), ("lr='0.1'", "lr"), ("d='64'", "d")])
def test_other_type_confusions_are_refused(item, key):
    assert f"{key} = " in refused(None, [item])


def test_ints_written_for_floats_are_still_floats(tmp_path):
    cfg = load_config(None, ["lr=1", "r=2", "thresholds.growth=100", "penalties=[1, 0.5]", "weight_decay=0"])
    assert (cfg.lr, cfg.r, cfg.thresholds.growth, cfg.penalties, cfg.weight_decay) == (1.0, 2.0, 100.0, [1.0, 0.5], 0.0)
    assert all(isinstance(v, float) for v in (cfg.lr, cfg.r, cfg.thresholds.growth, *cfg.penalties))
    cfg = load_config(str(write(tmp_path, "lr: 1\nepochs: 3\nterminal_ln: false\n")))
    assert (cfg.lr, cfg.epochs, cfg.terminal_ln) == (1.0, 3, False)


def test_a_synthetic_test_set_smaller_than_the_diagnostic_set_is_refused():
    msg = refused("synthetic_default", ["synthetic.n_test=16"])
    assert "synthetic.n_test" in msg and "diagnostics.n_samples" in msg and "→" in msg
    # equal is enough, and a smaller diagnostic set fits a smaller test set
    assert load_config("synthetic_default", ["synthetic.n_test=1024"]).synthetic.n_test == 1024
    load_config("synthetic_default", ["synthetic.n_test=64", "diagnostics.n_samples=64", "diagnostics.rho_samples=64"])
    # CIFAR ignores the synthetic section
    assert load_config("cifar100_d256_L4", ["synthetic.n_test=16"]).synthetic.n_test == 16


def test_a_diagnostic_set_larger_than_cifar_test_set_is_refused():
    msg = refused("cifar10_d256_L4", ["diagnostics.n_samples=20000"])
    assert "diagnostics.n_samples" in msg and "10,000" in msg and "cifar10" in msg
    assert load_config("cifar100_d256_L4", ["diagnostics.n_samples=10000"]).diagnostics.n_samples == 10000


def test_the_existing_cross_field_rules_still_hold():
    assert "rho_samples" in refused(None, ["diagnostics.rho_samples=2048"])
    assert "stability_batches" in refused(None, ["diagnostics.stability_batches=3"])


# ---- F11: sizes inside the limits that cannot fit ------------------------------------------------

def test_param_count_matches_the_resmlp():
    from engine.model import ResMLP

    for args in [(32, 10, 16, 2, 1.0, True), (3072, 100, 64, 3, 0.5, False), (7, 3, 5, 1, 2.3, True)]:
        model = ResMLP(*args)
        assert param_count(*args) == sum(p.numel() for p in model.parameters()), args


def test_estimate_bytes_values():
    flagship = load_config("cifar100_d256_L4")
    # measured (docs/bench.md): 1,192-1,506 MiB summed PSS, 1,768-2,077 MiB summed RSS for this audit
    assert 1.0 * GiB < estimate_bytes(flagship) < 2.5 * GiB
    huge = validate({"d": 65536, "L": 256})
    assert estimate_bytes(huge) > 16 * param_count(32, 10, 65536, 256, 1.0, True) > 10**13
    small = validate({"d": 16, "L": 1, "workers": 1})
    assert 250 << 20 < estimate_bytes(small) < 600 << 20  # mostly the interpreter and torch themselves
    # each knob that costs memory raises the estimate
    base = validate({"d": 512, "L": 4, "workers": 1})
    for key, value in [("d", 1024), ("L", 8), ("r", 4.0), ("batch_size", 4096), ("workers", 2)]:
        assert estimate_bytes(base.model_copy(update={key: value})) > estimate_bytes(base), key
    more_samples = base.model_copy(update={"diagnostics": base.diagnostics.model_copy(update={"n_samples": 8192})})
    assert estimate_bytes(more_samples) > estimate_bytes(base)
    # the synthetic data counts: 10M × 100k float32 is 4 TB
    data = validate({"synthetic": {"n_train": 10_000_000, "in_dim": 100_000}})
    assert estimate_bytes(data) > 4 * 10**12
    # workers beyond the number of runs cost nothing
    one_run = validate({"methods": ["bp"], "seeds": [1]})
    assert run_count(one_run) == 1
    assert estimate_bytes(one_run.model_copy(update={"workers": 8})) == estimate_bytes(
        one_run.model_copy(update={"workers": 2}))


def test_check_fits_names_the_estimate_the_available_memory_and_what_to_lower():
    cfg = validate({"d": 4096, "L": 16})
    need = estimate_bytes(cfg)
    check_fits(cfg, available=need * 2)  # fits: no error
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, available=need // 3)
    msg = str(err.value)
    assert "GiB" in msg and "available" in msg and "d=4096" in msg and "L=16" in msg
    assert "→" in msg and "d" in err.value.hint and "L" in err.value.hint and "batch_size" in err.value.hint


def test_load_config_refuses_a_model_that_cannot_fit():
    t0 = time.perf_counter()
    msg = refused(None, ["d=65536", "L=256"])
    assert time.perf_counter() - t0 < 1.0 and "memory" in msg and "d=65536" in msg


def test_load_config_refuses_synthetic_data_that_cannot_fit():
    msg = refused("synthetic_default", ["synthetic.n_train=10000000", "synthetic.in_dim=100000"])
    assert "memory" in msg and "synthetic" in msg


@pytest.mark.parametrize("name", sorted(shipped_presets()))
def test_every_shipped_preset_fits_this_machine(name):
    check_fits(load_config(name))
    assert estimate_bytes(load_config(name)) < 4 * GiB


# ---- through the CLI: exit 2, one message, nothing written --------------------------------------

CLI_CASES = {
    "latin1": ("name: café\n".encode("latin-1"), [], "UTF-8"),
    "deep": (deep(20_000), [], "levels"),
    "laughs": (laughs(), [], "alias"),
    "bool-d": ("epochs: 1\n", ["d=true"], "d = True"),
    "small-test-set": ("epochs: 1\n", ["synthetic.n_test=16"], "synthetic.n_test"),
    "too-big": ("epochs: 1\n", ["d=65536", "L=256"], "memory"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_cli_refuses_with_exit_2_and_writes_nothing(tmp_path, case):
    data, sets, expect = CLI_CASES[case]
    preset = write(tmp_path, data, "preset.yaml")
    runs = tmp_path / "runs"
    args = ["run", "--runs-dir", str(runs), "--preset", str(preset)]
    for item in sets:
        args += ["--set", item]
    res = CliRunner().invoke(app_(), args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "error: " in res.output and "→" in res.output
    assert expect in res.output
    assert not runs.exists() or not any(runs.iterdir())


def app_():
    from faeval_tui.cli import app

    return app


def test_an_audits_directory_or_config_yaml_given_as_a_preset_is_named_as_such(tmp_path):
    from engine.runstore import write_config

    audit = tmp_path / "audit"
    audit.mkdir()
    write_config(audit, load_config(None, ["epochs=2"]).dump())
    message = refused(str(audit / "config.yaml"))
    assert "is an audit's config.yaml (it has a schema line), not a preset" in message
    assert f"faeval-tui resume {audit}" in message and "unknown key" not in message
    message = refused(str(audit))
    assert "is an audit directory, not a preset file" in message and f"faeval-tui watch {audit}" in message
    assert "does not exist" not in message
    assert "is a directory, not a preset file" in refused(str(tmp_path / "audit" / ".." ))
    # the same settings without the schema line load as a preset
    copy = write(tmp_path, "".join(line for line in (audit / "config.yaml").read_text().splitlines(True)
                                   if not line.startswith("schema:")), "copy.yaml")
    assert load_config(str(copy)).epochs == 2
