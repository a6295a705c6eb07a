"""The console's front door: sign-in, the session cookie, CSRF, roles, headers — tried as an
attacker would (no session, a forged cookie, a guessed password, a cross-site form post)."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.errors import MrhubError
from services.common.institutions import hash_token
from services.common.settings import Settings
from services.console import auth
from services.console import cli as console_cli
from services.console.app import CONSOLE, create_app, render

PASSWORD = "correct horse battery"


def _settings(tmp: Path, **console: object) -> Settings:
    users = tmp / "users.yaml"
    if not users.exists():
        console_cli.add_user(users, "li", role="steward", password=PASSWORD, display="李管理员")
        console_cli.add_user(users, "zhao", role="hospital", password=PASSWORD, scope="H1")
    return Settings(
        console={  # type: ignore[arg-type]
            "users_path": users,
            "session_key": console_cli.new_session_key(),
            "steward_token": "mrs_test",
            "secure_cookies": False,
            **console,
        },
        institutions_path=Path("config/institutions.yaml"),
    )


def _app(settings: Settings) -> web.Application:
    app = create_app(settings)

    @auth.require("steward")
    async def only_stewards(request: web.Request) -> web.StreamResponse:
        return await render(request, "error.html", {"status": 200, "message": "steward page"})

    app.router.add_get("/test/steward-only", only_stewards)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_app(_settings(tmp_path)))) as c:
        yield c


Client = TestClient[web.Request, web.Application]


async def _sign_in(c: Client, name: str = "li", password: str = PASSWORD) -> int:
    r = await c.post("/login", data={"username": name, "password": password},
                     allow_redirects=False)  # fmt: skip
    return r.status


async def _csrf(c: Client, path: str = "/test/steward-only") -> str:
    text = await (await c.get(path)).text()
    marker = 'name="csrf_token" value="'
    assert marker in text, text[:500]
    return text.split(marker, 1)[1].split('"', 1)[0]


async def test_every_page_sends_a_stranger_to_the_sign_in_page(client: Client) -> None:
    for path in ("/", "/test/steward-only", "/reviews", "/figures", "/anything"):
        r = await client.get(path, allow_redirects=False)
        assert (r.status, r.headers.get("Location")) == (303, "/login"), path
    r = await client.post("/logout", data={}, allow_redirects=False)
    assert r.status in (401, 403)
    # the probes are public and say nothing of anyone
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_a_wrong_password_or_an_unknown_name_is_refused_alike(client: Client) -> None:
    assert await _sign_in(client, "li", "wrong password!") == 401
    assert await _sign_in(client, "nobody", PASSWORD) == 401
    r = await client.get("/test/steward-only", allow_redirects=False)
    assert r.status == 303


async def test_signing_in_sets_an_httponly_samesite_strict_cookie(tmp_path: Path) -> None:
    async with TestClient(TestServer(_app(_settings(tmp_path, secure_cookies=True)))) as c:
        r = await c.post("/login", data={"username": "li", "password": PASSWORD},
                         allow_redirects=False)  # fmt: skip
        assert r.status == 303
        raw = r.headers.getall("Set-Cookie")
        assert len(raw) == 1
        morsel = SimpleCookie(raw[0])["mrhub_console"]
        assert morsel["httponly"] and morsel["secure"]
        assert morsel["samesite"] == "Strict"
        # encrypted: neither the user's name (as the session's JSON would hold it) nor the
        # password is in the token's bytes ("li" alone turns up in random base64 by chance)
        token = base64.urlsafe_b64decode(morsel.value + "=" * (-len(morsel.value) % 4))
        assert b'"li"' not in token and PASSWORD.encode() not in token
        assert PASSWORD not in morsel.value


async def test_a_session_is_new_at_each_sign_in(client: Client) -> None:
    """No fixation: a cookie planted before sign-in is not the one that signs in."""
    await client.get("/login")
    before = {c.key: c.value for c in client.session.cookie_jar}
    assert await _sign_in(client) == 303
    after = {c.key: c.value for c in client.session.cookie_jar}
    assert after.get("mrhub_console") and after.get("mrhub_console") != before.get("mrhub_console")


async def test_a_forged_or_tampered_cookie_signs_nobody_in(client: Client) -> None:
    assert await _sign_in(client) == 303
    cookie = next(c for c in client.session.cookie_jar if c.key == "mrhub_console")
    tampered = cookie.value[:-4] + ("AAAA" if not cookie.value.endswith("AAAA") else "BBBB")
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"mrhub_console": tampered})
    r = await client.get("/test/steward-only", allow_redirects=False)
    assert r.status == 303
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"mrhub_console": json.dumps({"user": "li"})})
    r = await client.get("/test/steward-only", allow_redirects=False)
    assert r.status == 303


async def test_a_post_without_the_csrf_token_changes_nothing(client: Client) -> None:
    assert await _sign_in(client) == 303
    r = await client.post("/logout", data={}, allow_redirects=False)
    assert r.status == 403
    assert "CSRF" in await r.text()
    # still signed in: the refused post did not sign out
    assert (await client.get("/test/steward-only", allow_redirects=False)).status == 200
    # another session's token does not count either
    r = await client.post("/logout", data={"csrf_token": "x" * 43}, allow_redirects=False)
    assert r.status == 403
    token = await _csrf(client)
    r = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (303, "/login")
    assert (await client.get("/test/steward-only", allow_redirects=False)).status == 303


async def test_a_role_sees_only_its_pages(client: Client) -> None:
    assert await _sign_in(client, "zhao") == 303
    r = await client.get("/test/steward-only", allow_redirects=False)
    assert r.status == 403
    assert "steward page" not in await r.text()


async def test_someone_removed_from_the_users_file_is_signed_out(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with TestClient(TestServer(_app(settings))) as c:
        assert await _sign_in(c) == 303
        assert (await c.get("/test/steward-only", allow_redirects=False)).status == 200
        users = settings.console.users_path
        text = users.read_text()
        # rewrite the file without li (a different size: the reload notices it at once)
        console_cli._write(users, {"users": [u for u in console_cli._read(users)["users"]
                                             if u["name"] != "li"]})  # fmt: skip
        assert users.read_text() != text
        c.app[CONSOLE].users.refresh(force=True)
        assert (await c.get("/test/steward-only", allow_redirects=False)).status == 303


async def test_guessing_passwords_is_slowed_down(client: Client) -> None:
    for _ in range(10):
        assert await _sign_in(client, "li", "guess guess guess") == 401
    # even the right password waits now
    assert await _sign_in(client, "li", PASSWORD) == 429
    # someone else signing in from the same address (behind the same proxy) is not held up
    assert await _sign_in(client, "zhao", PASSWORD) == 303


async def test_pages_carry_the_security_headers(client: Client) -> None:
    r = await client.get("/login")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_add_user_keeps_only_a_hash_in_a_private_file(tmp_path: Path) -> None:
    users = tmp_path / "u.yaml"
    console_cli.add_user(users, "wang", role="region", password=PASSWORD, scope="140400")
    text = users.read_text()
    assert PASSWORD not in text and "$argon2id$" in text
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    loaded = auth.Users(users)
    assert loaded.authenticate("wang", PASSWORD) is not None
    assert loaded.authenticate("wang", "not the password") is None
    # the same name again replaces the entry
    console_cli.add_user(users, "wang", role="hospital", password=PASSWORD + "!", scope="H9")
    again = auth.Users(users)
    assert len(again) == 1
    assert again.authenticate("wang", PASSWORD) is None
    user = again.authenticate("wang", PASSWORD + "!")
    assert user is not None and user.role == "hospital" and user.scope == "H9"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "steward", "password": "short"}, "12 characters"),
        ({"role": "region", "password": PASSWORD}, "needs --scope"),
        ({"role": "admin", "password": PASSWORD}, "role must be"),
    ],
)
def test_add_user_refuses_what_would_not_work(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(MrhubError, match=message):
        console_cli.add_user(tmp_path / "u.yaml", "x", **kwargs)
    assert not (tmp_path / "u.yaml").exists()


@pytest.mark.parametrize(
    ("scope", "inside", "outside"),
    [("140000", "140402", "130102"), ("140400", "140402", "140502"), ("14", "140402", "150102")],
)
def test_a_region_viewer_sees_its_province_or_prefecture(
    scope: str, inside: str, outside: str
) -> None:
    user = auth.User("v", "region", scope, "v", "$argon2id$x")
    assert user.sees_region(inside)
    assert not user.sees_region(outside)
    hospital = auth.User("h", "hospital", "H1", "h", "$argon2id$x")
    assert not hospital.sees_region(inside)


def test_up_prepares_a_local_console_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("MRHUB_CONSOLE__USERS_PATH", "MRHUB_CONSOLE__SECURE_COOKIES"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings(
        state_dir=tmp_path,
        console={"users_path": tmp_path / "absent.yaml"},  # type: ignore[arg-type]
        patient_index={"steward_token_hashes": ["sha256:" + "0" * 64]},  # type: ignore[arg-type]
    )
    env: dict[str, str] = {}
    note = console_cli.local_console_env(settings, env)
    assert note is not None and "admin" in note
    password = note.split("password ", 1)[1].split(" ", 1)[0]
    users = auth.Users(Path(env["MRHUB_CONSOLE__USERS_PATH"]))
    assert users.authenticate("admin", password) is not None
    hashes = json.loads(env["MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES"])
    assert hashes == ["sha256:" + "0" * 64, hash_token(env["MRHUB_CONSOLE__STEWARD_TOKEN"])]
    assert env["MRHUB_CONSOLE__SECURE_COOKIES"] == "false"
    # the second `up` keeps the same key, token and users, and shows no password
    again: dict[str, str] = {}
    second = console_cli.local_console_env(settings, again)
    assert second is not None and "password" not in second
    for key in ("MRHUB_CONSOLE__SESSION_KEY", "MRHUB_CONSOLE__STEWARD_TOKEN"):
        assert again[key] == env[key]


async def test_signing_out_ends_the_session_even_for_a_copy_of_the_cookie(client: Client) -> None:
    assert await _sign_in(client) == 303
    copied = next(c.value for c in client.session.cookie_jar if c.key == "mrhub_console")
    token = await _csrf(client)
    r = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert r.status == 303
    # someone who kept the cookie (a shared computer, a proxy log) replays it
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({"mrhub_console": copied})
    r = await client.get("/test/steward-only", allow_redirects=False)
    assert (r.status, r.headers.get("Location")) == (303, "/login")


async def test_a_restarted_console_signs_everyone_out(tmp_path: Path) -> None:
    settings = _settings(tmp_path)  # the same session key for both processes
    async with TestClient(TestServer(_app(settings))) as first:
        assert await _sign_in(first) == 303
        cookie = next(c.value for c in first.session.cookie_jar if c.key == "mrhub_console")
    async with TestClient(TestServer(_app(settings))) as second:
        second.session.cookie_jar.update_cookies({"mrhub_console": cookie})
        r = await second.get("/test/steward-only", allow_redirects=False)
        assert (r.status, r.headers.get("Location")) == (303, "/login")


def test_live_sessions_are_bounded_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("services.console.auth.time.monotonic", lambda: clock[0])
    live = auth.LiveSessions(60, limit=3)
    first, second, third = live.start(), live.start(), live.start()
    fourth = live.start()  # past the limit: the oldest sign-in ends
    assert [live.live(s) for s in (first, second, third, fourth)] == [False, True, True, True]
    assert len(live) == 3
    clock[0] += 61
    assert not live.live(second) and not live.live(fourth)
    live.start()
    assert len(live) == 1  # the expired ones were dropped
