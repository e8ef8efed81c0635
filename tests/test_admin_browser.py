"""The admin in a real headless Chromium: log in, filter dead messages, retry them.

Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium,
/usr/bin/chromedriver); nothing is downloaded. Saves screenshots of the list and of a
detail page in the test's tmp_path, and into docs/img/ (for docs/admin.rst) when
OUTBOX_UPDATE_SCREENSHOTS=1, so that an ordinary run leaves the work tree clean.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from django_outbox.models import OutboxMessage, Status, lease_expiry, retry_time

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
        "/usr/bin/chromedriver): apt-get install chromium chromium-driver",
    ),
]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1500,900",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(browser: Any, name: str, directory: Path) -> Path:
    """The whole page, however long; also into docs/img/ when asked to."""
    height = browser.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight,"
        " document.getElementById('container').scrollHeight)"
    )
    browser.set_window_size(1500, min(max(height, 600), 2400))
    path = directory / name
    assert browser.save_screenshot(str(path)), f"Chromium saved no {name}"
    if os.environ.get("OUTBOX_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS_IMAGES / name)
    browser.set_window_size(1500, 900)
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas
    return path


def envelope(event_type: str, key: str, data: dict[str, Any]) -> tuple[str, str]:
    event_id = str(uuid.uuid4())
    document = {
        "event_id": event_id,
        "event_type": event_type,
        "version": 1,
        "occurred_at": "2026-11-27T19:00:00.000000Z",
        "key": key,
        "headers": {"trace_id": uuid.uuid4().hex[:16]},
        "data": data,
    }
    return event_id, json.dumps(document, separators=(",", ":"))


def seed() -> list[OutboxMessage]:
    now = timezone.now()
    made = []
    samples = [
        ("chat.message.created", "chat.messages", Status.CONSUMED, {}),
        ("chat.message.created", "chat.messages", Status.CONSUMED, {}),
        ("user.signed_up", "users", Status.PUBLISHED, {}),
        ("chat.message.created", "chat.messages", Status.PENDING, {}),
        (
            "billing.invoice.paid",
            "billing",
            Status.PENDING,
            {
                "retry_count": 3,
                "next_retry_at": retry_time(now, 240),
                "last_error": "KafkaTimeoutError: Failed to update metadata after 2.0 secs.",
            },
        ),
        (
            "chat.message.created",
            "chat.messages",
            Status.PENDING,
            {
                "next_retry_at": lease_expiry(now, 60),
            },
        ),
        (
            "billing.invoice.paid",
            "billing",
            Status.DEAD,
            {
                "retry_count": 20,
                "last_error": "handler billing.events.on_invoice_paid failed: "
                "ValueError: unknown currency 'XBT'\nTraceback (most recent call last): ...",
            },
        ),
        (
            "chat.message.created",
            "chat.messages",
            Status.DEAD,
            {
                "retry_count": 20,
                "last_error": "KafkaTimeoutError: Batch for TopicPartition(topic='chat.messages', "
                "partition=2) containing 1 record(s) expired",
            },
        ),
    ]
    for n, (event_type, topic, status, extra) in enumerate(samples):
        key = f"conversation-{40 + n}" if event_type.startswith("chat") else f"customer-{7 + n}"
        _event_id, payload = envelope(event_type, key, {"text": f"hello #{n}", "author": "ada"})
        if status in (Status.PUBLISHED, Status.CONSUMED):
            extra = {**extra, "published_at": now - datetime.timedelta(seconds=5)}
        if status == Status.CONSUMED:
            extra = {**extra, "consumed_at": now - datetime.timedelta(seconds=4)}
        made.append(
            OutboxMessage.objects.create(
                event_type=event_type,
                topic=topic,
                message_key=key,
                payload=payload,
                status=status,
                **extra,
            )
        )
    return made


def test_filter_dead_and_retry_them(live_server, browser, transactional_db, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("admin", "admin@example.com", "correct horse")
    rows = seed()
    dead = [row for row in rows if row.status == Status.DEAD]

    browser.get(f"{live_server.url}/admin/login/?next=/admin/django_outbox/outboxmessage/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("correct horse")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    browser.find_element(By.ID, "outbox-summary")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == len(rows)
    browser.find_element(By.ID, "toggle-nav-sidebar").click()  # more room for the columns
    screenshot(browser, "admin-list.png", tmp_path)

    browser.find_element(By.CSS_SELECTOR, '#changelist-filter a[href="?state=dead"]').click()
    assert "state=dead" in browser.current_url
    listed = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(listed) == len(dead)
    browser.find_element(By.ID, "action-toggle").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry_now")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()

    message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success")
    assert message.text == "2 outbox messages will be retried now."
    assert not OutboxMessage.objects.dead().exists()
    assert OutboxMessage.objects.due().filter(pk__in=[row.pk for row in dead]).count() == 2

    browser.get(f"{live_server.url}/admin/django_outbox/outboxmessage/{dead[0].pk}/change/")
    envelope_text = browser.find_element(By.CSS_SELECTOR, ".field-envelope pre").text
    assert json.loads(envelope_text)["key"] == dead[0].message_key
    assert (
        "retry requested by admin (was dead, 20/20 retries)"
        in browser.find_element(By.CSS_SELECTOR, ".field-last_error_text pre").text
    )
    screenshot(browser, "admin-detail.png", tmp_path)
