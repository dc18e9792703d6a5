"""Registration gates: directions from the one metric table, absent numbers never pass, the champion rule."""

from __future__ import annotations

import functools

import pytest
import torch

from trainflow.evaluation.paired import compare_arrays
from trainflow.config import Gate, RegisterConfig, parse_section
from trainflow.errors import ConfigError
from trainflow.metrics.regression_metrics import regression_metrics
from trainflow.registry.gates import ChampionEvidence, champion_shortfall, failed_gates
from trainflow.registry.promotion import decide_by_bootstrap, decide_by_numbers


def gates(*specs: dict) -> list[Gate]:
    return parse_section(RegisterConfig, {"model_name": "m", "gates": list(specs)}, "the register section").gates


@pytest.mark.parametrize("metric,value,base,passes", [
    ("fid", 3.0, 9.0, True), ("fid", 9.0, 3.0, False),                  # lower is better
    ("test_loss", 0.2, 1.0, True), ("test_loss", 1.0, 0.2, False),      # test_ + loss
    ("prompt_accuracy", 0.9, 0.1, True), ("prompt_accuracy", 0.1, 0.9, False),
    ("kid", 0.01, 0.02, True), ("clip_score", 20.0, 25.0, False),
])
def test_beat_base_follows_the_metric_direction_table(metric, value, base, passes):
    failures = failed_gates(gates({"metric": metric, "beat_base": True}), {metric: value, f"base_{metric}": base})
    assert (failures == []) == passes
    if not passes:
        assert failures == [f"{metric} = {value:.4f} does not beat the base model's {base:.4f}"]


def test_a_gate_on_a_metric_that_was_not_computed_fails():
    failures = failed_gates(gates({"metric": "clip_score", "min": 20}, {"metric": "fid", "beat_base": True}), {"fid": 3.0})
    assert failures == ["clip_score was not computed, so its gate cannot pass",
                        "base_fid was not computed, so 'beat the base model' cannot be checked"]


def test_min_and_max_bounds():
    checked = gates({"metric": "accuracy", "min": 0.9}, {"metric": "ece", "max": 0.05})
    assert failed_gates(checked, {"accuracy": 0.95, "ece": 0.01}) == []
    assert failed_gates(checked, {"accuracy": 0.85, "ece": 0.2}) == [
        "accuracy = 0.8500 is below the minimum 0.9", "ece = 0.2000 is above the maximum 0.05"]


def test_a_comparison_gate_on_a_metric_of_unknown_direction_is_a_config_error():
    with pytest.raises(ConfigError, match="gates.0: trainflow does not know whether higher or lower is better for metric 'sharpness'"):
        gates({"metric": "sharpness", "beat_champion": True})
    with pytest.raises(ConfigError, match="needs at least one of min, max, beat_base, beat_champion"):
        gates({"metric": "accuracy"})
    assert gates({"metric": "sharpness", "min": 1.0})[0].min == 1.0  # a bound needs no direction


def _regression_comparison(noise_a: float, noise_b: float, key: str) -> dict:
    """Two models' predictions of the same 300 targets; a's errors have `noise_a` spread, b's `noise_b`."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(300, 1, generator=generator, dtype=torch.float64) * 10
    a = targets + noise_a * torch.randn(300, 1, generator=generator, dtype=torch.float64)
    b = targets + noise_b * torch.randn(300, 1, generator=generator, dtype=torch.float64)
    metric_fn = functools.partial(regression_metrics, target_names=["y"])
    return compare_arrays(metric_fn, {"predictions": a, "targets": targets}, {"predictions": b, "targets": targets},
                          key, n_resamples=400, seed=0)


def test_beat_champion_passes_only_when_the_improvement_interval_is_above_the_margin():
    gate = gates({"metric": "rmse", "beat_champion": True})
    better = _regression_comparison(1.0, 3.0, "rmse")  # lower rmse: improvement = champion − candidate > 0
    assert better["improvement"] > 0 and better["improvement_low"] > 0 and better["p_better"] > 0.99
    assert champion_shortfall(gate[0], ChampionEvidence("m", "champion", 4, {"rmse": better})) is None
    too_small = champion_shortfall(gate[0], ChampionEvidence("m", "champion", 4, {"rmse": better}),
                                   margin=better["improvement_low"] + 0.01)
    assert "not better than the champion by more than" in too_small
    same = _regression_comparison(2.0, 2.0, "rmse")
    assert same["improvement_low"] < 0 < same["improvement_high"]
    failure = champion_shortfall(gate[0], ChampionEvidence("m", "champion", 4, {"rmse": same}))
    assert "not better than the champion with 95% confidence" in failure and "version 4" in failure
    decision = decide_by_bootstrap(gate, ChampionEvidence("m", "champion", 4, {"rmse": same}), 0.0)
    assert not decision.promote and decision.reason.startswith("stays challenger: rmse = ")
    assert decide_by_bootstrap(gate, ChampionEvidence("m", "champion", 4, {"rmse": better}), 0.0).promote
    worse = _regression_comparison(3.0, 1.0, "r2")  # higher is better: a worse r2 gives a negative improvement
    assert worse["improvement_high"] < 0 and worse["verdict"] == "b is better than a with 95% confidence"


def test_beat_champion_with_no_champion_passes_and_without_evidence_fails():
    gate = gates({"metric": "accuracy", "beat_champion": True, "confidence": 0.9})
    assert gate[0].confidence == 0.9
    assert champion_shortfall(gate[0], ChampionEvidence("m", "champion", None)) is None
    assert champion_shortfall(gate[0], None) == (
        "accuracy: the champion comparison was not run, so 'beat the champion' cannot be checked")
    unavailable = ChampionEvidence("m", "champion", 2, unavailable={"accuracy": "the champion could not be downloaded"})
    assert champion_shortfall(gate[0], unavailable) == (
        "accuracy: cannot compare with the champion: the champion could not be downloaded")
    assert failed_gates(gate, {}) == [], "beat_champion decides promotion, not registration"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinite_metrics_fail_their_gates_by_name(bad):
    checked = gates({"metric": "accuracy", "min": 0.5}, {"metric": "fid", "beat_base": True})
    assert failed_gates(checked, {"accuracy": bad, "fid": 2.0, "base_fid": 3.0}) == [
        f"accuracy = {bad} is not a finite number, so its gate cannot pass"]
    assert failed_gates(checked, {"accuracy": 0.9, "fid": 2.0, "base_fid": bad}) == [
        f"base_fid = {bad} is not a finite number, so 'beat the base model' cannot be checked"]


def test_text_to_image_promotion_compares_recorded_numbers_in_the_metrics_direction():
    compared = gates({"metric": "fid", "beat_champion": True}, {"metric": "prompt_accuracy", "beat_champion": True})
    assert decide_by_numbers(compared, {"fid": 2.0, "prompt_accuracy": 0.9}, None, {}, 0.0).promote
    better = decide_by_numbers(compared, {"fid": 2.0, "prompt_accuracy": 0.9}, 3, {"fid": 2.5, "prompt_accuracy": 0.8}, 0.01)
    assert better.promote and "version 3" in better.reason
    worse = decide_by_numbers(compared, {"fid": 2.0, "prompt_accuracy": 0.9}, 3, {"fid": 1.5, "prompt_accuracy": 0.8}, 0.0)
    assert not worse.promote and "fid = 2.0000 vs the champion's (version 3) 1.5000: improvement -0.5000" in worse.reason
    missing = decide_by_numbers(compared, {"fid": float("nan"), "prompt_accuracy": 0.9}, 3, {"fid": 1.5, "prompt_accuracy": 0.8}, 0.0)
    assert not missing.promote and "missing or not finite" in missing.reason
