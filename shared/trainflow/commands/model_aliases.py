"""`trainflow promote` and `trainflow rollback`: a person moves a registered model's champion alias, saying why.

Who (TRAINFLOW_USER, USER or the login name) and why are kept in the version's tags
(trainflow.promoted_by / _reason / _at, trainflow.rolled_back_* and trainflow.restored_*).
"""

from __future__ import annotations

import argparse

from trainflow.errors import UserFacingError


def add_alias_parsers(verbs) -> None:
    uri_help = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the project-local .trainflow/mlflow store)"
    promote = verbs.add_parser("promote", help="make a registered version the champion, recording who and why",
                               description="Point the registered model's champion alias at VERSION and record who did it "
                                           "and why in the version's tags. The previous champion stays in the history "
                                           "that `trainflow rollback` returns to.")
    promote.add_argument("name", help="registered model name (register.model_name)")
    promote.add_argument("version", type=int, help="the version to make champion")
    promote.add_argument("--reason", required=True, help="why (kept in the version's tags)")
    promote.add_argument("--alias", default="champion", help="the champion alias (register.champion_alias; default: champion)")
    promote.add_argument("--tracking-uri", help=uri_help)
    promote.set_defaults(handler="trainflow.commands.model_aliases:promote_command")
    rollback = verbs.add_parser("rollback", help="give the champion alias back to the previous champion",
                                description="Point the champion alias back at the version that held it before the "
                                            "current one, recording who and why in both versions' tags.")
    rollback.add_argument("name", help="registered model name (register.model_name)")
    rollback.add_argument("--reason", required=True, help="why (kept in the version's tags)")
    rollback.add_argument("--alias", default="champion", help="the champion alias (default: champion)")
    rollback.add_argument("--tracking-uri", help=uri_help)
    rollback.set_defaults(handler="trainflow.commands.model_aliases:rollback_command")


def _client(args: argparse.Namespace):
    from trainflow.registry.tracking import connect, default_tracking_uri

    return connect(args.tracking_uri or default_tracking_uri())


def _check_reason(reason: str) -> str:
    if not reason.strip():
        raise UserFacingError("--reason is empty; say why, it is kept in the version's tags")
    return reason.strip()


def promote_command(args: argparse.Namespace) -> int:
    from trainflow.registry.promotion import current_user, promote

    user = current_user()
    promote(_client(args), args.name, args.version, _check_reason(args.reason), user, args.alias)
    print(f"{args.name} version {args.version} is now '{args.alias}' (by {user})")
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    from trainflow.registry.promotion import current_user, rollback

    user = current_user()
    previous, restored = rollback(_client(args), args.name, _check_reason(args.reason), user, args.alias)
    print(f"{args.name}: '{args.alias}' moved back from version {previous} to version {restored} (by {user})")
    return 0
