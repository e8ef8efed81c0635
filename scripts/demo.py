"""The demo's second half, run by scripts/demo in its virtualenv (see that script).

Sets up an SQLite database in DIR (migrate, an admin user with a random password,
a few conversations) and the demo's topics on the local broker, starts the relay,
the consumer and the web server as child processes, posts MESSAGES chat messages
over HTTP (FAILING of them marked to fail in the handler), shows the outbox's
counts live until every event reached its final status, then prints the figures.
Interactive: the servers keep running until Ctrl-C. ``--check``: exit 0 only if
every event ended where it should, then stop.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"
AUTHORS = ("ana", "bo", "chen", "dara", "eli")


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop everything."""


def on_signal(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


class Children:
    """The relay, the consumer and the web server: each in a process group of its own,
    so Ctrl-C in the terminal reaches only us and we stop them in order."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 - closed with the child
        self.processes[name] = subprocess.Popen(
            [sys.executable, str(MANAGE), *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.directory / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the {name} exited with code {process.returncode}:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to each group (the workers finish the batch in hand), then SIGKILL."""
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                say(f"the {name} did not stop within {timeout:.0f} s; killing it")
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        self.processes.clear()


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def wait_for_web(url: str, children: Children, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer at {url} in {timeout:.0f} s") from None
            time.sleep(0.2)


def post_messages(base: str, conversations: list[int], count: int, failing: set[int]) -> int:
    """POST ``count`` messages round-robin over the conversations; return how many got 202."""

    def post(index: int) -> int:
        conversation = conversations[index % len(conversations)]
        marker = " [fail]" if index in failing else ""
        body = json.dumps(
            {"author": AUTHORS[index % len(AUTHORS)], "text": f"message {index}{marker}"}
        ).encode()
        request = urllib.request.Request(
            f"{base}/chat/{conversation}/messages",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return 1 if response.status == 202 else 0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2 * (attempt + 1))
        return 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(pool.map(post, range(count)))


def counts() -> dict[str, int]:
    from django.db.models import Count

    from django_outbox.models import OutboxMessage, Status

    found = dict(
        OutboxMessage.objects.order_by()
        .values_list("status")
        .annotate(n=Count("*"))
        .values_list("status", "n")
    )
    result = {status: found.get(status, 0) for status in Status.values}
    result["retried"] = OutboxMessage.objects.filter(retry_count__gt=0).count()
    return result


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def watch(
    total: int, children: Children, timeout: float, live: bool, posted: Callable[[], bool]
) -> dict[str, int]:
    """Show the counts until every row is final (or ``timeout``); return the last counts."""
    started = time.monotonic()
    printed = 0.0
    while True:
        children.check_alive()
        all_posted = posted()  # before counting: a row posted after the count is not missed
        now = counts()
        done = now["consumed"] + now["dead"]
        elapsed = time.monotonic() - started
        line = (
            f"{elapsed:5.1f}s {bar(done, total)}  pending {now['pending']:>4}  "
            f"published {now['published']:>4}  consumed {now['consumed']:>4}  "
            f"dead {now['dead']:>2}  retried {now['retried']:>2}"
        )
        finished = all_posted and now["pending"] == 0 and now["published"] == 0
        if live:
            print("\r" + line, end="\n" if finished else "", flush=True)
        elif finished or elapsed - printed >= 2:
            print(line, flush=True)
            printed = elapsed
        if finished:
            return now
        if elapsed > timeout:
            if live:
                print()
            say(f"not every event was final after {timeout:.0f} s")
            return now
        time.sleep(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--kafka", required=True, help="bootstrap address")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--failing", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args()

    directory: Path = options.dir.resolve()
    if directory.exists():
        shutil.rmtree(directory)  # each run starts from an empty database
    directory.mkdir(parents=True)
    run = secrets.token_hex(4)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{directory / 'demo.sqlite3'}",
        "KAFKA_BOOTSTRAP_SERVERS": options.kafka,
        # Topics and group of this run only: records of an earlier run on the same
        # broker name outbox ids of another database.
        "CHAT_TOPIC": f"demo.chat.{run}",
        "OUTBOX_DEFAULT_TOPIC": f"demo.events.{run}",
        "OUTBOX_CONSUMER_GROUP": f"demo-{run}",
        "OUTBOX_MAX_RETRY": "3",
        "OUTBOX_RETRY_BACKOFF_BASE": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    sys.path[:0] = [str(ROOT), str(ROOT / "testproject")]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children = Children(directory, env)
    try:
        return demo(options, directory, env, children)
    except Stop as stop:
        print()
        say(f"{stop} received; stopping")
        return 1 if options.check else 0
    except RuntimeError as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        if children.processes:
            say("stopping the relay, the consumer and the web server")
            children.stop()
            say(f"stopped; logs in {directory}")


def demo(
    options: argparse.Namespace, directory: Path, env: dict[str, str], children: Children
) -> int:
    started = time.monotonic()
    say(f"database {env['DATABASE_URL']} (SQLite, WAL), Kafka {options.kafka}")
    manage(env, "migrate", "--verbosity", "0")
    import django

    django.setup()
    from django.contrib.auth.models import User

    from django_outbox.models import OutboxMessage
    from testproject.chat.models import ChatHistory, Conversation

    password = secrets.token_urlsafe(12)
    User.objects.create_superuser("admin", "admin@example.com", password)
    conversations = [
        Conversation.objects.create(title=f"conversation {n + 1}").pk
        for n in range(options.conversations)
    ]
    say(f"created the admin user and {len(conversations)} conversations")
    print(
        manage(env, "outbox_topics", "--create", "--partitions", "3", "--replication-factor", "1")
    )

    children.start(
        "relay",
        "outbox_relay",
        "--interval",
        "0.2",
        "--health-file",
        str(directory / "relay.alive"),
    )
    children.start(
        "consumer",
        "outbox_consume",
        "--poll-timeout",
        "0.2",
        "--health-file",
        str(directory / "consumer.alive"),
    )
    children.start("web", "runserver", "--noreload", f"127.0.0.1:{options.port}")
    base = f"http://127.0.0.1:{options.port}"
    wait_for_web(f"{base}/admin/login/", children)
    say(f"relay, consumer and web server running (logs in {directory})")

    step = max(options.messages // (options.failing + 1), 1)
    failing = {step * (n + 1) - 1 for n in range(options.failing)} if options.failing else set()
    say(
        f"posting {options.messages} messages over {len(conversations)} conversations "
        f"(keys), {len(failing)} marked [fail] (their handler always fails: retried, then dead)"
    )
    # Post in the background and watch meanwhile: the counts move while requests arrive.
    with ThreadPoolExecutor(max_workers=1) as background:
        posting = background.submit(post_messages, base, conversations, options.messages, failing)
        live = sys.stdout.isatty() and not options.check
        final = watch(options.messages, children, options.timeout, live, posting.done)
        posted = posting.result()
    say(f"{posted} of {options.messages} posts accepted (202)")

    dead_rows = OutboxMessage.objects.dead()
    dead_texts = sorted(
        (
            json.loads(payload)["data"]["text"]
            for payload in dead_rows.values_list("payload", flat=True)
        ),
        key=lambda text: int(text.split()[1]),  # "message 99 [fail]"
    )
    errors = set(dead_rows.values_list("last_error", flat=True))
    history = ChatHistory.objects.count()
    expected_dead = [f"message {i} [fail]" for i in sorted(failing)]
    print()
    print(f"  messages posted        {posted} of {options.messages}")
    print(f"  consumed               {final['consumed']}  (chat history rows: {history})")
    print(f"  dead                   {final['dead']}  {dead_texts}")
    for error in errors:
        last_line = (error or "").strip().splitlines()[-1:] or [""]
        print(f"    last error: {last_line[0]}")
    print(f"  retried at least once  {final['retried']}")
    print(f"  pending / published    {final['pending']} / {final['published']}")
    print(f"  wall time              {time.monotonic() - started:.1f} s")
    print()
    print(manage(env, "outbox_status"))
    ok = (
        posted == options.messages
        and final["consumed"] == posted - len(failing)
        and history == posted - len(failing)
        and dead_texts == expected_dead
        and final["pending"] == 0
        and final["published"] == 0
    )
    if options.check:
        say("check passed: every event ended where it should" if ok else "check FAILED")
        return 0 if ok else 1
    print(f"  admin: {base}/admin/  user admin, password {password}")
    print("  Ctrl-C stops the relay, the consumer, the web server (and the broker it started).")
    while True:
        children.check_alive()
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
