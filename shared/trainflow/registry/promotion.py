"""Challenger -> champion: which alias a registered version takes, and the people's promote and rollback.

A version that passes its gates takes the challenger alias. It also takes the champion alias only
when there is no champion yet or it beats the champion by register.promotion_margin on the same
test split: the lower end of the paired-bootstrap interval of the improvement for tasks with
per-record outputs, the improvement in the recorded numbers otherwise (text-to-image's gate
metrics). The decision's sentence is kept as the version's `trainflow.promotion` tag. The
registered model's `trainflow.champion_history` tag lists the versions that held the champion
alias, oldest first, so `rollback` knows where to go back to.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import math
import os

from trainflow.config import Gate, RegisterConfig
from trainflow.errors import UserFacingError
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.registry.gates import ChampionEvidence, champion_shortfall

PROMOTION_TAG = "trainflow.promotion"
HISTORY_TAG = "trainflow.champion_history"


@dataclasses.dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def comparison_gates(cfg: RegisterConfig, compares_per_record: bool, headline_metric: str) -> list[Gate]:
    """What a challenger is compared with the champion on: the beat_champion gates, else the gates' metrics
    (tasks without per-record outputs), else the task's first headline metric."""
    chosen = [gate for gate in cfg.gates if gate.beat_champion]
    if not chosen and not compares_per_record:
        chosen = [Gate(metric=metric, beat_champion=True) for metric in dict.fromkeys(g.metric for g in cfg.gates)
                  if _has_direction(metric)]
    return chosen or [Gate(metric=headline_metric, beat_champion=True)]


def _has_direction(metric: str) -> bool:
    try:
        is_lower_better(metric)
        return True
    except UserFacingError:
        return False


def decide_by_bootstrap(gates: list[Gate], evidence: ChampionEvidence, margin: float) -> PromotionDecision:
    """Promote when every compared metric's improvement interval lies above `margin` (per-record tasks)."""
    if evidence.version is None:
        return PromotionDecision(True, "no champion yet, so the first version past the gates becomes champion")
    shortfalls = [reason for gate in gates if (reason := champion_shortfall(gate, evidence, margin))]
    if shortfalls:
        return PromotionDecision(False, "stays challenger: " + "; ".join(shortfalls))
    return PromotionDecision(True, f"beats the champion (version {evidence.version}) by more than {margin:g} on "
                                   f"{', '.join(g.metric for g in gates)} (paired bootstrap on the same test split)")


def decide_by_numbers(gates: list[Gate], numbers: dict[str, float], champion_version: int | None,
                      champion_numbers: dict[str, float], margin: float) -> PromotionDecision:
    """Promote when every compared metric improves on the champion's recorded value by more than `margin`."""
    if champion_version is None:
        return PromotionDecision(True, "no champion yet, so the first version past the gates becomes champion")
    shortfalls = []
    for gate in gates:
        mine, theirs = numbers.get(gate.metric), champion_numbers.get(gate.metric)
        if mine is None or theirs is None or not (math.isfinite(mine) and math.isfinite(theirs)):
            shortfalls.append(f"{gate.metric}: the candidate's ({mine}) or the champion's ({theirs}) value is missing "
                              "or not finite, so 'beat the champion' cannot be checked")
            continue
        improvement = (theirs - mine) if is_lower_better(gate.metric) else (mine - theirs)
        if improvement <= margin:
            shortfalls.append(f"{gate.metric} = {mine:.4f} vs the champion's (version {champion_version}) {theirs:.4f}: "
                              f"improvement {improvement:+.4f} is not more than the margin {margin:g}")
    if shortfalls:
        return PromotionDecision(False, "stays challenger: " + "; ".join(shortfalls))
    return PromotionDecision(True, f"beats the champion (version {champion_version}) by more than {margin:g} on "
                                   f"{', '.join(g.metric for g in gates)}")


def apply_decision(client, cfg: RegisterConfig, version: int, decision: PromotionDecision) -> None:
    """Give `version` the challenger alias, record the decision, and the champion alias when it is promoted.

    Safe to repeat: a retry after a crash at any point ends with the same aliases and tags.
    """
    client.set_registered_model_alias(cfg.model_name, cfg.challenger_alias, str(version))
    client.set_model_version_tag(cfg.model_name, str(version), PROMOTION_TAG, decision.reason[:5000])
    if decision.promote:
        _make_champion(client, cfg.model_name, cfg.champion_alias, version)


def _history(client, name: str) -> list[int]:
    tag = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [int(v) for v in tag.split(",") if v.strip().isdigit()]


def _make_champion(client, name: str, alias: str, version: int) -> None:
    client.set_registered_model_alias(name, alias, str(version))
    history = _history(client, name)
    if not history or history[-1] != version:
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(map(str, history + [version]))[-5000:])


def current_user() -> str:
    """Who runs the command: $TRAINFLOW_USER, $USER or the login name."""
    for name in ("TRAINFLOW_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _stamp(client, name: str, version: int, action: str, reason: str, user: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key, value in ((f"trainflow.{action}_by", user), (f"trainflow.{action}_reason", reason), (f"trainflow.{action}_at", now)):
        client.set_model_version_tag(name, str(version), key, value[:5000])


def promote(client, name: str, version: int, reason: str, user: str, alias: str = "champion") -> None:
    """A person makes `version` the champion; who and why go into the version's tags. UserFacingError when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise UserFacingError(f"registered model {name!r} has no version {version}; list them with the MLflow UI or "
                              "`mlflow models` and name an existing one") from None
    _make_champion(client, name, alias, version)
    _stamp(client, name, version, "promoted", reason, user)


def rollback(client, name: str, reason: str, user: str, alias: str = "champion") -> tuple[int, int]:
    """Give the champion alias back to the version that held it before; returns (from, to). UserFacingError when none did."""
    from trainflow.registry.champion import find_champion

    current = find_champion(client, name, alias)
    if current is None:
        raise UserFacingError(f"registered model {name!r} has no {alias!r} alias, so there is nothing to roll back")
    history = _history(client, name)
    earlier = [v for v in history if v != int(current.version)]
    if not earlier:
        raise UserFacingError(f"version {current.version} is the only version of {name!r} that has been {alias}, so there "
                              "is no earlier one to roll back to; promote a version instead")
    target = earlier[-1]
    client.set_registered_model_alias(name, alias, str(target))
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(map(str, earlier)))
    _stamp(client, name, int(current.version), "rolled_back", reason, user)
    _stamp(client, name, target, "restored", reason, user)
    return int(current.version), target
