"""`trainflow lineage NAME@ALIAS` (or NAME VERSION): where a registered version came from.

Prints the version, its aliases, the MLflow run it was registered from, its trainflow.lineage.* tags
(trainflow.registry.lineage) and the run's dataset inputs; --json prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re

from trainflow.errors import UserFacingError
from trainflow.redaction import redact_text

CONNECT_TRIES = 3
_NAME_AT_ALIAS = re.compile(r"(?P<name>[^@\s]+)@(?P<alias>[A-Za-z0-9_-]+)")


def add_lineage_parser(verbs) -> None:
    lineage = verbs.add_parser(
        "lineage", help="show where a registered model version came from (data, split, config, code, image, run)",
        description="Print a registered version's lineage: the dataset's content hash and its MLflow dataset input, "
                    "the split manifest's and the config's hashes, the trainflow version, git commit, container image, "
                    "KFP run id and pipeline name, as the register stage recorded them (trainflow.lineage.* tags). "
                    "Name the version as NAME@ALIAS (e.g. digits-classifier@champion) or as NAME VERSION.")
    lineage.add_argument("model", metavar="NAME@ALIAS|NAME", help="registered model name with an alias, or the name alone "
                         "followed by VERSION")
    lineage.add_argument("version", nargs="?", type=int, metavar="VERSION", help="version number (when MODEL has no @ALIAS)")
    lineage.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the "
                                                "project-local .trainflow/mlflow store)")
    lineage.add_argument("--json", action="store_true", help="print the lineage as one JSON object instead of lines")
    lineage.set_defaults(handler="trainflow.commands.lineage:lineage_command")


def parse_reference(model: str, version: int | None) -> tuple[str, str | None, int | None]:
    """(name, alias, version) from NAME@ALIAS or NAME VERSION; UserFacingError for anything else."""
    shown = redact_text(model)[:200]
    if "@" in model:
        found = _NAME_AT_ALIAS.fullmatch(model)
        if found is None:
            raise UserFacingError(f"'{shown}' is not NAME@ALIAS (a model name, '@', and an alias of letters, digits, "
                                  "'-' or '_'); e.g. digits-classifier@champion")
        if version is not None:
            raise UserFacingError(f"give either NAME@ALIAS or NAME VERSION, not both ('{shown}' and {version})")
        return found.group("name"), found.group("alias"), None
    if not model.strip():
        raise UserFacingError("the model name is empty; give NAME@ALIAS or NAME VERSION")
    if version is None:
        raise UserFacingError(f"'{shown}' names no version; give NAME@ALIAS (e.g. {shown}@champion) or NAME VERSION")
    if version < 1:
        raise UserFacingError(f"version {version} does not exist: registered versions start at 1")
    return model, None, version


def lineage_command(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from trainflow.registry.lineage import read_lineage
    from trainflow.registry.tracking import connect, default_tracking_uri

    name, alias, version = parse_reference(args.model, args.version)
    client = connect(args.tracking_uri or default_tracking_uri(), tries=CONNECT_TRIES)
    try:
        if alias is not None:
            version = int(client.get_model_version_by_alias(name, alias).version)
        found = read_lineage(client, name, version)
    except MlflowException as error:
        asked = f"{name}@{alias}" if alias is not None else f"{name} version {version}"
        reason = " ".join(redact_text(error.message).split())[:300]
        raise UserFacingError(f"no registered model version {redact_text(asked)} in this tracking store ({reason}); "
                              "check the name and alias or version, and --tracking-uri") from None
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    for line in lineage_lines(found):
        print(line)
    return 0


def lineage_lines(found: dict) -> list[str]:
    """The lineage as aligned 'key: value' lines (what `trainflow lineage` prints)."""
    rows = [("model", found["model_name"]), ("version", str(found["version"])),
            ("aliases", ", ".join(found["aliases"]) or "none"), ("mlflow run", found["run_id"] or "none")]
    lineage = found["lineage"]
    rows += [(key, value) for key, value in lineage.items()]
    if not lineage:
        rows.append(("lineage", "none recorded (registered before trainflow kept lineage)"))
    for entry in found["dataset_inputs"]:
        rows.append(("dataset input", f"{entry['name']} (digest {entry['digest']}, {entry['source_type']} "
                                      f"{entry['source']})"))
    width = max(len(key) for key, _ in rows)
    return [f"{key + ':':<{width + 1}} {value}" for key, value in rows]
