"""``mrhub console …``: the console's people and keys, and what ``mrhub up`` prepares for a
one-machine console.

- ``mrhub console add-user NAME --role steward|region|hospital [--scope S] [--display D]``
  reads the password from standard input (or makes one with ``--generate`` and prints it
  once) and writes its argon2 hash into the users file; the same name again replaces the
  entry (a new password, another role).
- ``mrhub console remove-user NAME`` removes one; they are signed out at their next request.
- ``mrhub console new-key`` prints a new session key (``MRHUB_CONSOLE__SESSION_KEY``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from pathlib import Path

from ruamel.yaml import YAML

from services.common.errors import MrhubError
from services.common.institutions import hash_token
from services.common.settings import Settings
from services.console.auth import ROLES, Users, hash_password

__all__ = ["add_parser", "add_user", "local_console_env", "new_session_key"]


def new_session_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _yaml() -> YAML:
    y = YAML()
    y.default_flow_style = False
    y.allow_unicode = True
    return y


def _read(path: Path) -> dict[str, list[dict[str, str]]]:
    if not path.exists():
        return {"users": []}
    doc = _yaml().load(path.read_text(encoding="utf-8")) or {}
    users = list(doc.get("users") or [])
    return {"users": [dict(u) for u in users]}


def _write(path: Path, doc: dict[str, list[dict[str, str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# the console's people (docs/console.md); `mrhub console add-user` writes it\n")
        _yaml().dump(doc, f)
    os.replace(tmp, path)
    Users(path)  # refuse to leave a file the console would not load


def add_user(
    path: Path, name: str, *, role: str, password: str, scope: str = "", display: str = ""
) -> None:
    if role not in ROLES:
        raise MrhubError(f"role must be one of {', '.join(ROLES)}")
    if role in ("region", "hospital") and not scope:
        raise MrhubError(f"a {role} viewer needs --scope")
    if len(password) < 12:
        raise MrhubError("a password needs at least 12 characters")
    doc = _read(path)
    entry = {"name": name, "role": role, "scope": scope, "display": display or name,
             "password": hash_password(password)}  # fmt: skip
    doc["users"] = [u for u in doc["users"] if u.get("name") != name] + [entry]
    _write(path, doc)


def local_console_env(settings: Settings, env: dict[str, str]) -> str | None:
    """What ``mrhub up`` adds to ``env`` for a console on this machine: a session key and a
    steward token kept in the state directory (the token's hash joins the patient index's
    steward hashes), a users file with one steward when none is configured, and plain-HTTP
    cookies when the console listens on the loopback address only. Returns a line to print
    once (the first steward's password), or None."""
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)

    def kept(name: str, make: str) -> str:
        path = state / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(make)
        return path.read_text().strip()

    if settings.console.session_key is None:
        env["MRHUB_CONSOLE__SESSION_KEY"] = kept("console-session.key", new_session_key())
    if settings.console.steward_token is None:
        token = kept("console-steward.token", "mrs_" + secrets.token_urlsafe(32))
        env["MRHUB_CONSOLE__STEWARD_TOKEN"] = token
        hashes = [*settings.patient_index.steward_token_hashes, hash_token(token)]
        env["MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES"] = json.dumps(hashes)
    if "MRHUB_CONSOLE__SECURE_COOKIES" not in os.environ and settings.console.host in (
        "127.0.0.1",
        "localhost",
    ):
        env["MRHUB_CONSOLE__SECURE_COOKIES"] = "false"
    env.setdefault("MRHUB_CONSOLE__IMAGING_URL",
                   f"http://{settings.imaging.host}:{settings.imaging.port}")  # fmt: skip
    env.setdefault("MRHUB_CONSOLE__INGEST_URL",
                   f"http://{settings.ingest.host}:{settings.ingest.port}")  # fmt: skip
    if "MRHUB_CONSOLE__USERS_PATH" in os.environ or settings.console.users_path.exists():
        return None
    users = state / "console-users.yaml"
    env["MRHUB_CONSOLE__USERS_PATH"] = str(users)
    if users.exists():
        return f"console users: {users} (`mrhub console add-user` adds one)"
    password = secrets.token_urlsafe(12)
    add_user(users, "admin", role="steward", password=password, display="数据管理员")
    return (
        f"console: sign in as 'admin' with password {password} (shown once; users in {users}, "
        "`mrhub console add-user` adds people)"
    )


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.users or settings.console.users_path
    if args.action == "new-key":
        print(new_session_key())
        return 0
    if args.action == "remove-user":
        doc = _read(path)
        kept = [u for u in doc["users"] if u.get("name") != args.name]
        if len(kept) == len(doc["users"]):
            print(f"no user {args.name!r} in {path}", file=sys.stderr)
            return 1
        _write(path, {"users": kept})
        print(f"removed {args.name} from {path}")
        return 0
    generated = secrets.token_urlsafe(12)
    password = generated if args.generate else sys.stdin.readline().rstrip("\n")
    add_user(path, args.name, role=args.role, password=password, scope=args.scope or "",
             display=args.display or "")  # fmt: skip
    print(f"{args.name} ({args.role}) written to {path}")
    if args.generate:
        print(f"password (shown once): {password}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("console", help="the console's people and session key")
    csub = p.add_subparsers(dest="action", required=True)
    q = csub.add_parser("add-user", help="add or replace a person (password on stdin)")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=ROLES)
    q.add_argument("--scope", help="region: a 6-digit province/prefecture code; "
                   "hospital: the institution id")  # fmt: skip
    q.add_argument("--display", help="the name shown on the page")
    q.add_argument("--generate", action="store_true", help="make a password and print it once")
    q.add_argument("--users", type=Path, help="default: MRHUB_CONSOLE__USERS_PATH")
    q = csub.add_parser("remove-user", help="remove a person")
    q.add_argument("name")
    q.add_argument("--users", type=Path, help="default: MRHUB_CONSOLE__USERS_PATH")
    q = csub.add_parser("new-key", help="print a new MRHUB_CONSOLE__SESSION_KEY")
    q.set_defaults(users=None)
    p.set_defaults(func=_cmd)
