"""The time-left estimate: per-method epoch costs from the records, dealt to the workers."""
from __future__ import annotations

import pytest

from engine.eta import epoch_cost, method_costs, remaining_seconds, time_left, untimed
from engine.fmt import duration
from engine.records import End, Epoch, Header, Start
from engine.runstore import RunLog


def epoch(i: int, train_s: float | None, diag_s: dict[str, float] | None = None) -> Epoch:
    """An epoch record whose measurements do not matter here, only its timings."""
    one = [1.0, 1.0]
    return Epoch(epoch=i, test_acc=0.5, test_loss=1.0, h_norm=one, g_norm=one, a_norm=one, cos=one, cos_std=one,
                 cos_excluded=[0, 0], growth=1.0, g_L=1.0, stability=0.0, gamma=1.0, deep_cos=1.0,
                 train_s=train_s, diag_s=diag_s or {})


def log(method: str, costs: list[tuple[float, dict]], total: int | None = 10, end: str | None = None) -> RunLog:
    out = RunLog(f"{method}-x")
    if total is not None:
        out.add(Header(run_id=f"{method}-x", method=method, seed=0, epochs=total, dataset="synthetic"))
        out.add(Start(epoch=0))
    for i, (train_s, diag_s) in enumerate(costs):
        out.add(epoch(i + 1, train_s, diag_s))
    if end:
        out.add(End(status=end, epoch=len(costs)))
    return out


def test_an_epoch_costs_its_training_and_every_diagnostic():
    assert epoch_cost(epoch(1, 2.0, {"accuracy": 0.25, "rho": 1.0})) == pytest.approx(3.25)
    assert epoch_cost(epoch(1, 2.0)) == 2.0
    assert epoch_cost(epoch(1, None, {"probe": 0.5})) == 0.5  # nothing trained (an audit_model record)


def test_method_costs_average_every_measured_epoch_of_the_method():
    runs = [("bp", log("bp", [(2.0, {}), (4.0, {"rho": 0.5})])), ("bp", log("bp", [(3.0, {})])),
            ("fa", log("fa", [(5.0, {})]))]
    assert method_costs(runs) == pytest.approx({"bp": (2.0 + 4.5 + 3.0) / 3, "fa": 5.0})


def test_runs_are_dealt_to_the_slot_that_frees_first():
    # frozen done; bp running with 6 of 10 epochs left at 1 s; two fa runs queued, none measured
    frozen = log("frozen", [(0.5, {})] * 10, end="finished")
    bp = log("bp", [(1.0, {})] * 4)
    fa1, fa2 = log("fa", [], total=None), log("fa", [], total=None)
    runs = [("frozen", frozen, "finished"), ("bp", bp, "running"), ("fa", fa1, "queued"), ("fa", fa2, "queued")]
    # fa has no epoch yet: the audit's mean (0.75 s) per epoch, 10 epochs each (the audit's length)
    # two slots: bp 6 s | fa 7.5 s; then the second fa joins bp's slot: 6 + 7.5 = 13.5
    assert remaining_seconds(runs, workers=2, epochs=10) == pytest.approx(13.5)
    # one slot: everything in a row
    assert remaining_seconds(runs, workers=1, epochs=10) == pytest.approx(6 + 7.5 + 7.5)


def test_nothing_measured_is_no_estimate_and_nothing_pending_is_zero():
    assert remaining_seconds([("bp", log("bp", []), "running")], workers=2, epochs=10) is None
    done = log("bp", [(1.0, {})] * 10, end="finished")
    stopped = log("fa", [(1.0, {})] * 3, end="stopped")  # stays stopped until someone resumes it
    assert remaining_seconds([("bp", done, "finished"), ("fa", stopped, "stopped")], workers=2, epochs=10) == 0.0


@pytest.mark.parametrize("seconds, text", [(0.2, "0 s"), (44.6, "45 s"), (89, "1 min"), (720, "12 min"),
                                           (3599, "1 h 00 min"), (3900, "1 h 05 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text


def test_the_text_says_when_a_method_still_to_train_is_not_timed_yet():
    """The digits default trains frozen first: bp, fa and dfa queued behind it cost far more
    than frozen's epochs, the only ones measured, and the estimate says it is low."""
    frozen = log("frozen", [(0.5, {})] * 4)
    runs = [("frozen", frozen, "running"), ("bp", log("bp", [], total=None), "queued"),
            ("fa", log("fa", [], total=None), "queued"), ("frozen", log("frozen", [], total=None), "queued")]
    assert untimed(runs) == ["bp", "fa"]
    left = remaining_seconds(runs, workers=1, epochs=10)
    assert left == pytest.approx(6 * 0.5 + 3 * 10 * 0.5)
    assert time_left(runs, workers=1, epochs=10) == f"about {duration(left)} left, more once bp, fa are timed"
    runs[1] = ("bp", log("bp", [(2.0, {})]), "running")
    assert time_left(runs, workers=1, epochs=10).endswith(", more once fa is timed")
    runs[2] = ("fa", log("fa", [(2.0, {})], end="finished"), "finished")  # timed, and ended
    assert untimed(runs) == [] and time_left(runs, 1, 10) == f"about {duration(remaining_seconds(runs, 1, 10))} left"
    assert time_left([("bp", log("bp", []), "running")], workers=2, epochs=10) is None
