"""The register stage's Markdown: registered or not and why, the champion comparison, every number logged."""

from __future__ import annotations

from typing import Any

from trainflow.registry.gates import ChampionEvidence


def champion_lines(evidence: ChampionEvidence | None) -> list[str]:
    """What was learned about the champion, for a beat_champion gate; empty when no gate asked."""
    if evidence is None:
        return []
    lines = ["## Champion comparison", ""]
    if evidence.version is None:
        return lines + [f"No champion yet: registered model `{evidence.model_name}` has no `{evidence.alias}` alias, "
                        "so a version that passes the gates becomes the first champion.", ""]
    lines += [f"Champion: `{evidence.model_name}` version {evidence.version} (alias `{evidence.alias}`), run on the "
              "candidate's test split; per-record paired bootstrap. Improvement is candidate − champion in the "
              "metric's better direction.", "",
              "| metric | candidate | champion | improvement | interval | P(candidate better) | verdict |",
              "|---|---|---|---|---|---|---|"]
    for key, result in evidence.comparisons.items():
        lines.append(f"| {key} | {result['a']:.4f} | {result['b']:.4f} | {result['improvement']:+.4f} | "
                     f"{result['improvement_low']:+.4f} to {result['improvement_high']:+.4f} ({result['confidence']:.0%}) | "
                     f"{result['p_better']:.3f} | {result['verdict']} |")
    for key, reason in evidence.unavailable.items():
        lines.append(f"| {key} | — | — | — | — | — | not compared: {reason} |")
    return lines + [""]


def registration_markdown(outcome: dict[str, Any], numbers: dict[str, float], evidence: ChampionEvidence | None) -> str:
    """The whole report: outcome, alias move, champion comparison, then every metric logged to MLflow."""
    lines = ["# Model registration", ""]
    if outcome["registered"]:
        lines.append(f"Registered **{outcome['model_name']}** version **{outcome['model_version']}** as "
                     f"`{outcome['challenger_alias']}`.")
        if outcome["promoted"]:
            lines.append(f"Alias `{outcome['champion_alias']}` now points to it (the champion the next candidate must "
                         f"beat): {outcome['promotion_reason']}.")
        else:
            lines.append(f"Alias `{outcome['champion_alias']}` is unchanged; it {outcome['promotion_reason']}.")
    else:
        lines.append(f"**Not registered** ({outcome['model_name']}); alias `{outcome['champion_alias']}` is unchanged:")
        lines += [f"- {reason}" for reason in outcome["reasons"]]
    lines += ["", *champion_lines(evidence),
              f"MLflow run `{outcome['mlflow_run_id']}` at `{outcome['tracking_uri']}`; dataset sha256 `{outcome['dataset_sha256']}`", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(numbers.items())]
    return "\n".join(lines) + "\n"
