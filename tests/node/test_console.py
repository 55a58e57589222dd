"""The admin console over HTTP: token, CSRF, remote refusal, bad parameters, actions,
and the JSON API behind every page (a real node, real sockets, a real state file)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
from urllib.parse import urlencode, urlsplit

import pytest
import trio

from node.config import ConfigError, load_config
from node.console.auth import TOKEN_FILE, Keys, load_or_create_token
from node.console.svg import line_plot
from tests.conftest import make_grid
from tests.node.test_jobs import grid_of

ON = {"console": {"listen": "127.0.0.1:0"}, "monitor": {"interval": 0.1}}


def request(url: str, method: str = "GET", path: str = "/", *, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def call(*args, **kw):
    return await trio.to_thread.run_sync(lambda: request(*args, **kw))


def bearer(node) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.console.keys.token}"}


def form(node, **fields) -> tuple[bytes, dict[str, str]]:
    return urlencode(fields).encode(), {**bearer(node), "Content-Type":
                                        "application/x-www-form-urlencoded"}


def as_json(node, csrf: bool = True, **fields) -> tuple[bytes, dict[str, str]]:
    h = {**bearer(node), "Content-Type": "application/json"}
    if csrf:
        h["X-CSRF-Token"] = node.console.keys.csrf
    return json.dumps(fields).encode(), h


async def test_token_file_is_private_and_kept(tmp_path):
    token = load_or_create_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    os.chmod(path, 0o644)
    assert load_or_create_token(tmp_path) == token  # the same token, the mode closed again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = Keys(token)
    assert keys.is_token(token) and not keys.is_token(token[:-1] + "x")
    assert keys.session != token and keys.csrf != token and keys.csrf != keys.session


def test_a_remote_console_needs_the_explicit_flag(tmp_path):
    with pytest.raises(ConfigError, match="allow_remote"):
        load_config(None, {"console": {"listen": "0.0.0.0:9000"}})
    cfg = load_config(None, {"console": {"listen": "0.0.0.0:9000", "allow_remote": True}})
    assert cfg.console.allow_remote


def test_plots_escape_labels_and_say_when_empty():
    svg = line_plot([(0.0, 1.0), (60.0, 3.0)], title="a<b",
                    marks=[(30.0, "add <x>", "add")])
    assert "a&lt;b" in svg and "add &lt;x&gt;" in svg and "<polyline" in svg
    assert 'class="mark add"' in svg
    assert "no samples yet" in line_plot([], title="t")


async def test_login_pages_api_and_refusals(short_tmp, caplog):
    caplog.set_level(logging.INFO, logger="gridnode")  # as `gridnode run` sets it
    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, **ON)
        url = node.console.url
        assert url and url.startswith("http://127.0.0.1:")
        token = node.console.keys.token
        assert (node.datadir.root / TOKEN_FILE).read_text().strip() == token

        # No token: 401 for pages and API; a wrong token at login: 401, no cookie.
        for path in ("/", "/api/node", "/jobs", "/api/grid"):
            status, _, body = await call(url, path=path)
            assert status == 401, path
        status, headers, _ = await call(url, path="/login?token=wrong")
        assert status == 401 and "set-cookie" not in headers
        # The login link sets an HttpOnly, SameSite=Strict cookie that opens the pages.
        status, headers, _ = await call(url, path=f"/login?token={token}")
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        jar = {"Cookie": cookie.split(";")[0]}
        status, headers, body = await call(url, path="/", headers=jar)
        assert status == 200 and node.cert.name in body.decode()
        assert "default-src 'self'" in headers["content-security-policy"]
        assert f'content="{node.console.keys.csrf}"' in body.decode()

        # Every page answers; every API twin is JSON.
        for path in ("/", "/grid", "/jobs", "/datasets", "/health", "/?level=warning"):
            status, _, _ = await call(url, path=path, headers=jar)
            assert status == 200, path
        status, _, body = await call(url, path="/api/node", headers=bearer(node))
        data = json.loads(body)
        assert status == 200 and data["id"] == node.key.id.hex()
        assert data["site_controls"]["drained"] is False
        assert any("node.started" in e["line"] for e in data["logs"])
        status, _, body = await call(url, path="/api/grid", headers=bearer(node))
        assert status == 200 and json.loads(body)["nodes"][0]["self"] is True
        while len(node.monitor.series["load"]) < 3:  # noqa: ASYNC110 - the monitor's own pace
            await trio.sleep(0.05)
        status, _, body = await call(url, path="/api/health?hours=1", headers=bearer(node))
        load = json.loads(body)["series"]["load"]
        assert status == 200 and len(load) >= len(node.monitor.series["load"]) > 1
        assert [t for t, _ in load] == sorted(t for t, _ in load)

        # Malformed parameters: 400 with a short message; unknown things: 404.
        for path in ("/api/jobs?state=sleeping", "/api/health?hours=nan",
                     "/api/health?hours=-1", "/api/node?level=loud", "/api/jobs/xyz",
                     "/api/datasets/no-colon"):
            status, _, body = await call(url, path=path, headers=bearer(node))
            assert status == 400, path
            assert len(json.loads(body)["error"]) < 200
        status, _, _ = await call(url, path="/api/jobs/" + "ab" * 20, headers=bearer(node))
        assert status == 404
        status, _, body = await call(url, path="/jobs/xyz", headers=jar)
        assert status == 400 and b"error" in body

        # Actions: no token 401, no or wrong CSRF 403, nothing changes.
        body, h = as_json(node, reason="disk swap")
        status, _, _ = await call(url, "POST", "/api/node/drain", body=body,
                                  headers={"Content-Type": "application/json"})
        assert status == 401
        body, h = as_json(node, csrf=False, reason="disk swap")
        status, _, _ = await call(url, "POST", "/api/node/drain", body=body, headers=h)
        assert status == 403
        body, h = form(node, reason="disk swap", csrf="0" * 48)
        status, _, _ = await call(url, "POST", "/api/node/drain", body=body, headers=h)
        assert status == 403
        # The cookie alone is no CSRF token either (a page elsewhere could send it).
        status, _, _ = await call(url, "POST", "/api/node/drain", body=b"reason=x",
                                  headers={**jar, "Content-Type":
                                           "application/x-www-form-urlencoded"})
        assert status == 403
        assert node.site.drain is None and node.console.counters["refused_csrf"] == 3
        # Missing reason or bad values: 400, nothing changes.
        body, h = as_json(node)
        status, _, _ = await call(url, "POST", "/api/node/drain", body=body, headers=h)
        assert status == 400 and node.site.drain is None
        for cores in (-1, node.cfg.capacity.cores + 1, "four", 1.5):
            body, h = as_json(node, cores=cores, reason="test")
            status, _, _ = await call(url, "POST", "/api/node/slots", body=body, headers=h)
            assert status == 400, cores
        assert node.site.offered_cores == node.cfg.capacity.cores
        status, _, _ = await call(url, "POST", "/api/node/drain", body=b"[1,2]",
                                  headers=as_json(node)[1])
        assert status == 400
        body, h = as_json(node, csrf=False, reason="x", csrf_=1)
        status, _, _ = await call(url, "POST", "/api/node/drain",
                                  body=body.replace(b"csrf_", b"csrf"), headers=h)
        assert status == 403  # a CSRF token that is not even a string

        # A good drain from a form: redirected back, logged with who and why, stored.
        body, h = form(node, reason="disk swap", csrf=node.console.keys.csrf)
        status, headers, _ = await call(url, "POST", "/api/node/drain", body=body, headers=h)
        assert status == 303 and headers["location"] == "/?done=drained%3A%20disk%20swap%3B%20" \
            "running%20jobs%20finish"
        assert node.site.drain is not None and node.site.drain.reason == "disk swap"
        assert node.site.drain.who == "console@127.0.0.1"
        assert node.site.claim_plan(4).jobs == 0
        body, h = as_json(node, cores=1, reason="leave a core to the OS")
        status, _, got = await call(url, "POST", "/api/node/slots", body=body, headers=h)
        assert status == 200 and json.loads(got)["offered_cores"] == 1
        assert node.executor.cores == 1
        status, _, got = await call(url, "GET", "/api/node?level=warning", headers=bearer(node))
        lines = [e["line"] for e in json.loads(got)["logs"]]
        assert any("site.drained" in x and "disk swap" in x for x in lines)
        body, h = as_json(node, reason="swap done")
        status, _, got = await call(url, "POST", "/api/node/resume", body=body, headers=h)
        assert status == 200 and json.loads(got)["drained"] is False
        nursery.cancel_scope.cancel()


async def test_drain_and_slots_survive_a_restart(short_tmp):
    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, **ON)
        for path, fields in (("drain", {"reason": "maintenance"}),
                             ("slots", {"cores": 0, "reason": "nothing now"})):
            body, h = as_json(node, **fields)
            status, _, _ = await call(node.console.url, "POST", f"/api/node/{path}",
                                      body=body, headers=h)
            assert status == 200
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, **ON)
        assert node.site.drain is not None and node.site.drain.reason == "maintenance"
        assert node.executor.cores == 0 and node.site.claim_plan(8).jobs == 0
        nursery.cancel_scope.cancel()


async def test_remote_clients_are_refused_unless_allowed(short_tmp):
    """A request from another host (its scope as the server would build it)."""
    from starlette.requests import Request

    from node.console.app import HttpError

    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, **ON)
        console = node.console
        auth = (b"authorization", f"Bearer {console.keys.token}".encode())
        remote = Request({"type": "http", "method": "GET", "path": "/api/node",
                          "headers": [auth], "client": ("192.0.2.7", 5000)})
        with pytest.raises(HttpError) as refused:
            console._check(remote)
        assert refused.value.status == 403 and console.counters["refused_remote"] == 1
        console.allow_remote = True  # console.allow_remote = true in the config
        assert console._check(remote) == "console@192.0.2.7"
        nursery.cancel_scope.cancel()
