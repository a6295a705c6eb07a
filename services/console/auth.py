"""Who may use the console, and what each may see.

People are listed in the users file (``MRHUB_CONSOLE__USERS_PATH``)::

    users:
      - name: li.steward          # what they type to sign in; recorded as the actor
        display: 李管理员           # shown on the page
        role: steward             # steward | region | hospital
        scope: "140000"           # region: a province (2 digits + 0000) or prefecture
                                  # (4 digits + 00); hospital: the institution id;
                                  # steward: the province they steward (shown only)
        password: "$argon2id$…"    # `mrhub console add-user` writes it

Passwords are argon2id hashes (argon2-cffi); the file is reloaded when it changes, so a
person removed from it is signed out at their next request.

A signed-in session is an encrypted, authenticated cookie (aiohttp-session's Fernet storage):
HttpOnly, SameSite=Strict, Secure unless ``MRHUB_CONSOLE__SECURE_COOKIES=false``; it holds
the person's name, when they signed in, the session's CSRF token and a random session id
that the console keeps while the session is live (:class:`LiveSessions`): signing out ends
it, even for a copied cookie, and a restart of the console signs everyone out. Every form that
changes something carries that token in a hidden ``csrf_token`` field; a POST without it (or
with another session's) is refused with 403 before any handler runs (:func:`csrf_middleware`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.common.config_yaml import load_mapping
from services.common.errors import ConfigError

__all__ = [
    "ROLES",
    "Role",
    "User",
    "Users",
    "csrf_middleware",
    "csrf_token",
    "current_user",
    "require",
]

log = logging.getLogger(__name__)

Role = Literal["steward", "region", "hospital"]
ROLES: tuple[Role, ...] = ("steward", "region", "hospital")

#: What each role is called on the page.
ROLE_NAMES: dict[str, str] = {"steward": "数据管理员", "region": "区域查看", "hospital": "医院查看"}

_HASHER = PasswordHasher()
#: A hash verified against when the name is unknown: the answer takes as long as for a
#: known name, so timing does not tell which names exist.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

USER_KEY = "user"
CSRF_KEY = "csrf"
SIGNED_IN_KEY = "signed_in_at"
SID_KEY = "sid"


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    scope: str
    display: str
    password_hash: str

    def sees_region(self, region_code: str) -> bool:
        """Whether a region viewer (or a steward) may see figures of ``region_code`` (an
        institution's 6-digit code)."""
        if self.role == "steward":
            return True
        if self.role != "region":
            return False
        scope = self.scope.rstrip("0") or self.scope
        if len(scope) % 2:
            scope += "0"
        return region_code.startswith(scope)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def _parse(doc: Any, source: str) -> dict[str, User]:
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), list):
        raise ConfigError(f"{source}: expected a mapping with a 'users' list")
    users: dict[str, User] = {}
    for i, entry in enumerate(doc["users"]):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: users[{i}] is not a mapping")
        name = str(entry.get("name") or "")
        role = entry.get("role")
        scope = str(entry.get("scope") or "")
        password = str(entry.get("password") or "")
        if not name or role not in ROLES or not password.startswith("$argon2"):
            raise ConfigError(
                f"{source}: users[{i}] needs a name, a role ({', '.join(ROLES)}) and an argon2 "
                "password hash"
            )
        if role in ("region", "hospital") and not scope:
            raise ConfigError(f"{source}: users[{i}] ({name}): a {role} viewer needs a scope")
        if name in users:
            raise ConfigError(f"{source}: users[{i}]: {name!r} is listed twice")
        users[name] = User(
            name, cast(Role, role), scope, str(entry.get("display") or name), password
        )
    return users


class Users:
    """The users file, reloaded when it changes (checked at most once a second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._checked = 0.0
        self._users: dict[str, User] = {}
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._users, self._signature = {}, None
                return
            signature = (st.st_mtime_ns, st.st_size)
            if signature == self._signature:
                return
            try:
                self._users = _parse(
                    load_mapping(self.path, what="console users file"), str(self.path)
                )
            except ConfigError:
                if force:
                    raise
                log.exception("console users file not reloaded; the previous one stays")
                return
            self._signature = signature

    def get(self, name: str) -> User | None:
        self.refresh()
        return self._users.get(name)

    def __len__(self) -> int:
        self.refresh()  # /readyz counts the people: a file written after start must count
        return len(self._users)

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.get(name)
        try:
            _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user


# ----------------------------------------------------------------------------- sessions


class LiveSessions:
    """The sessions signed in on this console and not signed out: a random id per sign-in,
    kept in the encrypted cookie and here with its expiry. A cookie whose id is not here —
    signed out, expired, or from before a restart of the console — signs nobody in, so
    signing out ends the session even for a copy of the cookie. Bounded: past ``limit`` live
    sessions, the oldest sign-in is ended."""

    def __init__(self, max_age_s: float, *, limit: int = 20_000) -> None:
        self.max_age_s = max_age_s
        self.limit = limit
        self._until: dict[str, float] = {}  # insertion order = sign-in order

    def start(self) -> str:
        now = time.monotonic()
        for sid in [s for s, until in self._until.items() if until <= now]:
            del self._until[sid]
        while len(self._until) >= self.limit:
            del self._until[next(iter(self._until))]
        sid = secrets.token_urlsafe(24)
        self._until[sid] = now + self.max_age_s
        return sid

    def live(self, sid: object) -> bool:
        if not isinstance(sid, str):
            return False
        until = self._until.get(sid)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._until[sid]
            return False
        return True

    def end(self, sid: object) -> None:
        if isinstance(sid, str):
            self._until.pop(sid, None)

    def __len__(self) -> int:
        return len(self._until)


async def sign_in(request: web.Request, user: User) -> None:
    """A new session (a fresh identity: no fixation), with its own CSRF token."""
    from services.console.app import CONSOLE

    session = await new_session(request)
    session[USER_KEY] = user.name
    session[SID_KEY] = request.app[CONSOLE].sessions.start()
    session[SIGNED_IN_KEY] = int(time.time())
    session[CSRF_KEY] = secrets.token_urlsafe(32)


async def sign_out(request: web.Request) -> None:
    from services.console.app import CONSOLE

    session = await get_session(request)
    request.app[CONSOLE].sessions.end(session.get(SID_KEY))
    session.invalidate()


async def current_user(request: web.Request) -> User | None:
    """The signed-in person, or None (no session, expired, signed out, or no longer in the
    users file)."""
    from services.console.app import CONSOLE

    ctx = request.app[CONSOLE]
    session = await get_session(request)
    name = session.get(USER_KEY)
    if not isinstance(name, str) or not ctx.sessions.live(session.get(SID_KEY)):
        return None
    return ctx.users.get(name)


async def csrf_token(request: web.Request) -> str:
    session: Session = await get_session(request)
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


#: Paths a POST may reach without a session's CSRF token: signing in has no session yet
#: (the login form is protected by SameSite=Strict and by the password itself).
CSRF_EXEMPT = frozenset({"/login"})


@web.middleware
async def csrf_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in CSRF_EXEMPT:
        session = await get_session(request)
        expected = session.get(CSRF_KEY)
        given = ""
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            value = form.get("csrf_token")
            given = value if isinstance(value, str) else ""
        given = given or request.headers.get("X-CSRF-Token", "")
        if (
            not isinstance(expected, str)
            or not given
            or not hmac.compare_digest(expected.encode(), given.encode())
        ):
            from services.console.app import render_error

            return await render_error(
                request,
                403,
                "表单已失效或来源不明（缺少 CSRF 令牌），未做任何更改。请刷新页面后重试。",
            )
    return await handler(request)


# ----------------------------------------------------------------------------- roles

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def require(*roles: Role) -> Callable[[H], H]:
    """A view only these roles may open. Anyone else signed in gets 403; nobody signed in is
    sent to the sign-in page (the app's middleware does that before this runs)."""

    def wrap(handler: H) -> H:
        async def view(request: web.Request) -> web.StreamResponse:
            user = await current_user(request)
            if user is None:
                raise web.HTTPSeeOther("/login")
            if user.role not in roles:
                from services.console.app import render_error

                return await render_error(request, 403, "您的角色无权查看此页面。")
            request["user"] = user
            result: web.StreamResponse = await handler(request)
            return result

        view.__name__ = getattr(handler, "__name__", "view")
        view.__doc__ = handler.__doc__
        return cast(H, view)

    return wrap
