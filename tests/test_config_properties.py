"""Property tests: any preset mapping or --set string is accepted and round-trips, or is
refused with a ConfigError; nothing else ever escapes."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import AuditConfig, apply_sets, validate
from engine.errors import ConfigError

KEYS = list(AuditConfig.model_fields) + ["thresholds.growth", "thresholds.g_floor", "diagnostics.rho_every",
                                         "diagnostics.n_samples", "synthetic.n_train", "synthetic.classes",
                                         "bogus", "thresholds.bogus", "d.x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3))
text_values = st.one_of(st.text(max_size=20), st.sampled_from(
    ["[42]", "[bp, fa]", "1e-3", "-1", "0", "true", "[", "{a: 1}", "nan", ".inf", "!!python/object:os.system", "''"]))


def _check(data, source):
    try:
        cfg = validate(data, source)
    except ConfigError as err:
        assert err.problem and err.hint  # refused: says what and what to do
        return
    again = validate(cfg.dump(), "round trip")  # accepted: the resolved config reproduces itself
    assert again == cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_any_preset_mapping_is_accepted_and_round_trips_or_refused(data):
    nested: dict = {}
    for key, value in data.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    _check(nested, "property preset")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS + ["", "a..b", "x y", "9lives"]), text_values), max_size=4))
def test_any_set_strings_are_accepted_and_round_trip_or_refused(pairs):
    items = [f"{k}={v}" for k, v in pairs]
    try:
        data = apply_sets({}, items)
    except ConfigError as err:
        assert err.problem
        return
    _check(data, "--set")


@given(st.text(max_size=30))
def test_set_without_equals_or_garbage_never_crashes(item):
    try:
        apply_sets({}, [item])
    except ConfigError:
        pass
