"""``sluiceway new NAME``: write a starter project.

NAME/
    NAME.py           the app: request_filter, upstream_peer, response_filter, logging
    conf.yaml         listen address, workers, logs, timeouts
    NAME.service      a systemd unit (check with -t, then run in the foreground)
    test_NAME.py      tests with the sluiceway pytest plugin (they pass as written)
    README.md         how to test, run and install it
"""

from __future__ import annotations

import keyword
import os
import sys

APP = '''"""{name}: a sluiceway reverse proxy.

Run:   sluiceway run {name}:App -c conf.yaml
Test:  python -m pytest
The upstream is {env} (host:port), default 127.0.0.1:9000.
"""

import logging
import os
import uuid

from sluiceway import HttpPeer, ProxyHttp

log = logging.getLogger("{name}")


class App(ProxyHttp):
    def __init__(self, upstream=None):
        host, _, port = (upstream or os.environ.get("{env}", "127.0.0.1:9000")).rpartition(":")
        self.upstream = (host, int(port))

    def new_ctx(self):
        return {{"request_id": uuid.uuid4().hex[:16]}}

    def request_filter(self, session, ctx):
        """Runs first: answer here (return True) to stop the request."""
        if session.req_header.path.startswith("/admin"):
            session.respond(403, {{"content-type": "text/plain"}}, "forbidden\\n")
            return True
        session.req_header.insert_header("x-request-id", ctx["request_id"])
        return False

    def upstream_peer(self, session, ctx):
        """Where the request goes (the only required hook)."""
        return HttpPeer(self.upstream)

    def response_filter(self, session, upstream_response, ctx):
        """Change the response head before it goes to the client."""
        upstream_response.headers["x-request-id"] = ctx["request_id"]
        upstream_response.headers.pop("server", None)

    def logging(self, session, error, ctx):
        """Runs last, for every request; error is None when all went well."""
        if error is not None:
            log.warning("request %s failed: %s", ctx["request_id"], error)
'''

CONF = '''# {name}: sluiceway configuration. Every key: `sluiceway config example`.
# Check it (and the app) with:  sluiceway run {name}:App -c conf.yaml -t
version: 1
threads: 1                          # worker processes
listen: ["127.0.0.1:8080"]
access_log: true                    # one line per request on standard output
upstream_connect_timeout_seconds: 2
upstream_read_timeout_seconds: 30
grace_period_seconds: 5             # SIGTERM: requests in flight may finish
'''

SERVICE = '''# systemd unit for {name}. Install:
#   sudo cp {name}.service /etc/systemd/system/ && sudo systemctl daemon-reload
#   sudo systemctl enable --now {name}
# Logs (standard output and error) go to the journal: journalctl -u {name}
[Unit]
Description={name} (sluiceway reverse proxy)
After=network-online.target
Wants=network-online.target

[Service]
# Upgrades without downtime (--upgrade) need Type=forking with -d and a
# PIDFile: see "systemd" in sluiceway's docs/operations.md.
Type=simple
WorkingDirectory=/opt/{name}
Environment={env}=127.0.0.1:9000
ExecStartPre=/opt/{name}/venv/bin/sluiceway run {name}:App -c /opt/{name}/conf.yaml -t
ExecStart=/opt/{name}/venv/bin/sluiceway run {name}:App -c /opt/{name}/conf.yaml
# systemctl reload: new configuration and app code; a mistake keeps the old workers
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM: stop accepting, let requests finish within grace_period_seconds
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
'''

TEST = '''"""Tests for {name}, with the sluiceway pytest plugin's fixtures:
origin (a scriptable upstream that records what it gets), proxy_app (the
app under test, built here), client (an httpx client for the proxy)."""

import pytest

from {name} import App


@pytest.fixture
def proxy_app(origin):
    return App(upstream=f"127.0.0.1:{{origin.port}}")


def test_requests_go_upstream_with_a_request_id(client, origin):
    r = client.get("/hello")
    assert r.status_code == 200 and r.text == "hello"
    sent = origin.assert_received("/hello", headers={{"x-request-id": None}})
    assert r.headers["x-request-id"] == sent.header("x-request-id")


def test_admin_is_refused_before_the_upstream(client, origin):
    assert client.get("/admin/users").status_code == 403
    origin.assert_not_received("/admin/*")


def test_the_server_header_is_removed(client, origin):
    origin.route("/page", headers={{"server": "origin/1.0"}}, body="page")
    r = client.get("/page")
    assert r.text == "page" and "server" not in r.headers


def test_an_upstream_that_resets_is_502(client, origin):
    origin.route("/flaky", reset=True)
    assert client.get("/flaky").status_code == 502
'''

README = '''# {name}

A reverse proxy written with sluiceway.

```sh
python3 -m venv venv && . venv/bin/activate
pip install 'sluiceway[testing]'
python -m pytest                                     # the tests in test_{name}.py
{env}=127.0.0.1:9000 sluiceway run {name}:App -c conf.yaml -t   # check
{env}=127.0.0.1:9000 sluiceway run {name}:App -c conf.yaml      # run
```

`{name}.service` runs it under systemd from `/opt/{name}` (a venv in
`/opt/{name}/venv`).
'''


def files(name: str) -> dict:
    env = name.upper() + "_UPSTREAM"
    fmt = dict(name=name, env=env)
    return {
        f"{name}.py": APP.format(**fmt),
        "conf.yaml": CONF.format(**fmt),
        f"{name}.service": SERVICE.format(**fmt),
        f"test_{name}.py": TEST.format(**fmt),
        "README.md": README.format(**fmt),
    }


def main(name: str, force: bool = False, where: str = ".") -> int:
    if not name.isidentifier() or keyword.iskeyword(name) or name in sys.stdlib_module_names \
            or name in ("sluiceway", "test", "tests"):
        print(f"sluiceway new: {name!r} must be a Python module name that is not taken "
              "(letters, digits, underscores; e.g. my_proxy)", file=sys.stderr)
        return 2
    folder = os.path.join(where, name)
    if os.path.exists(folder) and not force:
        print(f"sluiceway new: {folder} exists; choose another name or add --force", file=sys.stderr)
        return 1
    os.makedirs(folder, exist_ok=True)
    for fname, text in files(name).items():
        with open(os.path.join(folder, fname), "w", encoding="utf-8") as f:
            f.write(text)
    env = name.upper() + "_UPSTREAM"
    print(f"sluiceway new: wrote {folder}/ ({', '.join(files(name))})\n"
          f"  cd {name}\n"
          f"  python -m pytest                      # needs: pip install 'sluiceway[testing]'\n"
          f"  {env}=127.0.0.1:9000 sluiceway run {name}:App -c conf.yaml")
    return 0
