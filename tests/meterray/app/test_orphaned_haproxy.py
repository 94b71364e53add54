"""A runtime killed outright leaves Serve's HAProxy holding the API port; the next runtime on that port
stops it before starting its own, and leaves any other port's HAProxy alone (the real binary)."""
from __future__ import annotations

import subprocess
import urllib.request

import psutil
from ray.serve._private.haproxy import get_haproxy_binary

from meterray.app.runtime import stop_orphaned_haproxy
from meterray.settings import Settings
from serve_apps.capacity import haproxy_dir
from tests.conftest import wait_for
from tests.ports import port

_CONFIG = """global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend api
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "left behind"
"""


def _running(settings: Settings) -> list[int]:
    config = str(haproxy_dir(settings) / "haproxy.cfg")
    return [p.pid for p in psutil.process_iter(["cmdline"]) if config in (p.info["cmdline"] or [])]


def _left_behind(settings: Settings) -> int:
    """HAProxy on `settings.api_port` with that runtime's configuration, its parent gone (as after kill -9)."""
    run = haproxy_dir(settings)
    run.mkdir(parents=True, exist_ok=True)
    config = run / "haproxy.cfg"
    config.write_text(_CONFIG.format(port=settings.api_port))
    # The shell starts HAProxy in the background and exits: HAProxy's parent is gone, as its manager's is.
    subprocess.run(["sh", "-c", f"'{get_haproxy_binary()}' -db -f '{config}' >/dev/null 2>&1 &"], check=True)

    def serving() -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.api_port}/", timeout=2) as r:
                assert r.read() == b"left behind"
        except OSError:  # not listening yet
            return None
        found = _running(settings)
        return found[0] if len(found) == 1 else None

    return int(wait_for(serving, 30, f"the left-behind HAProxy on port {settings.api_port}"))


def test_the_next_runtime_stops_the_haproxy_a_killed_one_left_on_its_port() -> None:
    base = Settings.from_env()
    ours = base.model_copy(update={"api_port": port("haproxy-orphan")})
    other = base.model_copy(update={"api_port": port("haproxy-other")})
    try:
        orphan, theirs = _left_behind(ours), _left_behind(other)
        assert stop_orphaned_haproxy(ours) == [orphan]
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ours.api_port}/", timeout=2)
            raise AssertionError("the API port is still held")
        except OSError:
            pass  # refused: free for the new runtime's HAProxy
        assert psutil.Process(theirs).is_running(), "another port's HAProxy was stopped"
        assert stop_orphaned_haproxy(ours) == []  # nothing more to do
    finally:
        for pid in _running(ours) + _running(other):
            psutil.Process(pid).kill()
