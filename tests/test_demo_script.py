"""``scripts/demo``: the whole demo as a user runs it, on a broker and port of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .relay_support import REPO_ROOT, read_until

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

#: Not the shared broker (19092), nor the demo's default (19592): a broker of this test.
KAFKA_PORT = 19594


@pytest.fixture(autouse=True)
def own_broker():
    """The demo starts the broker on KAFKA_PORT and stops it; should a test fail half
    way (the demo killed before its clean-up), stop it here."""
    yield
    if broker_running():
        subprocess.run(
            [str(REPO_ROOT / "scripts" / "kafka-local"), "stop"], env=demo_env(), check=False
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_running() -> bool:
    status = subprocess.run(
        [str(REPO_ROOT / "scripts" / "kafka-local"), "status"], env=demo_env(), capture_output=True
    )
    return status.returncode == 0


def demo_env() -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_PORT": str(KAFKA_PORT),
        "KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
    }
    for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(name, None)  # the demo makes its own
    return env


def demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(REPO_ROOT / "scripts" / "demo"),
            "--python",
            sys.executable,  # this environment has the demo extra: no pip install here
            "--dir",
            str(tmp_path / "demo"),
            *args,
        ],
        env=demo_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # as in a terminal: Ctrl-C goes to the whole group
    )


def test_check_mode_passes_and_stops_everything(tmp_path):
    port = free_port()
    process = demo(tmp_path, "--check", "--port", str(port), "--messages", "120")
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, output
    assert "check passed: every event ended where it should" in output
    assert "consumed               118  (chat history rows: 118)" in output
    assert "dead                   2  ['message 39 [fail]', 'message 79 [fail]']" in output
    assert "DeliberateFailure" in output
    assert "default (sqlite): 120 row(s)" in output  # outbox_status's report
    assert not broker_running()  # it started the broker, so it stopped it
    assert "database is locked" not in (tmp_path / "demo" / "consumer.log").read_text()
    assert not list((tmp_path / "demo").glob("*.alive"))  # the workers exited


def test_ctrl_c_stops_the_children_cleanly(tmp_path):
    port = free_port()
    process = demo(tmp_path, "--port", str(port), "--messages", "30")
    try:
        output = read_until(process, "Ctrl-C stops", timeout=180)
        assert "password" in output and f"http://127.0.0.1:{port}/admin/" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10) as page:
            assert page.status == 200
        assert len(list((tmp_path / "demo").glob("*.alive"))) == 2
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, output + rest
    assert "SIGINT received; stopping" in rest
    assert "demo: stopped;" in rest
    assert not list((tmp_path / "demo").glob("*.alive"))  # relay and consumer exited
    with pytest.raises(ConnectionRefusedError):  # the web server is gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not broker_running()
