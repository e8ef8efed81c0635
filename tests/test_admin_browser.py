"""The admin in a real headless Chromium, 1280 px wide with Django's navigation sidebar open:
log in, filter dead messages and retry them, retry a failure group, replay a rejected record;
the list never scrolls sideways and no status badge is cut.

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

from django_outbox.kafka import record_headers
from django_outbox.models import OutboxMessage, Status, attempts, lease_expiry, retry_time
from django_outbox.models.inbox import RejectedRecord, RejectionReason, encode_headers
from tests.consumer_support import registered

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
#: The narrowest desktop the admin must fit, with the navigation sidebar open.
WIDTH = 1280

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
        f"--window-size={WIDTH},900",
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
    browser.set_window_size(WIDTH, min(max(height, 600), 2400))
    path = directory / name
    assert browser.save_screenshot(str(path)), f"Chromium saved no {name}"
    if os.environ.get("OUTBOX_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS_IMAGES / name)
    browser.set_window_size(WIDTH, 900)
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
        if n == 0:
            key = str(uuid.uuid4())  # the default key, the event id: the widest
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
    # The oldest row is from three days ago: its times show the date too.
    old = now - datetime.timedelta(days=3)
    OutboxMessage.objects.filter(pk=made[0].pk).update(
        created_at=old, published_at=old, consumed_at=old, updated_at=old
    )
    made[0].refresh_from_db()
    return made


def log_in(browser: Any, live_server: Any, next_path: str) -> None:
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("admin", "admin@example.com", "correct horse")
    browser.get(f"{live_server.url}/admin/login/?next={next_path}")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("correct horse")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


#: Every status badge of the list, with its cell's and the table area's rectangles.
LAYOUT = """
const results = document.querySelector('#changelist .results');
const area = results.getBoundingClientRect();
const badges = [...document.querySelectorAll('#result_list .outbox-badge')].map(badge => {
  const cell = badge.closest('td').getBoundingClientRect();
  const own = badge.getBoundingClientRect();
  return {text: badge.textContent, left: own.left, right: own.right, top: own.top,
          bottom: own.bottom, cellLeft: cell.left, cellRight: cell.right, cellTop: cell.top,
          cellBottom: cell.bottom};
});
return {
  sidebarOpen: document.querySelector('.main').classList.contains('shifted')
      && document.getElementById('nav-sidebar').getBoundingClientRect().width > 100,
  viewport: document.documentElement.clientWidth,
  pageWidth: document.documentElement.scrollWidth,
  resultsScroll: results.scrollWidth, resultsClient: results.clientWidth,
  areaLeft: area.left, areaRight: area.right,
  badges: badges,
};
"""


def assert_list_fits(browser: Any) -> None:
    """No horizontal scrollbar, on the page or the table; every badge whole, inside its cell."""
    layout = browser.execute_script(LAYOUT)
    assert layout["viewport"] == WIDTH or layout["viewport"] >= WIDTH - 20  # a scrollbar's width
    assert layout["sidebarOpen"], "the navigation sidebar must be open"
    assert layout["pageWidth"] <= layout["viewport"], layout
    assert layout["resultsScroll"] <= layout["resultsClient"], layout
    assert layout["badges"], "no status badge on the page"
    for badge in layout["badges"]:
        assert badge["left"] >= badge["cellLeft"] - 0.5, badge
        assert badge["right"] <= badge["cellRight"] + 0.5, badge
        assert badge["top"] >= badge["cellTop"] - 0.5, badge
        assert badge["bottom"] <= badge["cellBottom"] + 0.5, badge
        assert badge["right"] <= layout["areaRight"] + 0.5, badge


def test_filter_dead_and_retry_them(live_server, browser, transactional_db, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rows = seed()
    dead = [row for row in rows if row.status == Status.DEAD]
    log_in(browser, live_server, "/admin/django_outbox/outboxmessage/")
    browser.find_element(By.ID, "outbox-summary")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == len(rows)
    assert_list_fits(browser)
    screenshot(browser, "admin-list.png", tmp_path)

    browser.find_element(By.CSS_SELECTOR, '#changelist-filter a[href="?state=dead"]').click()
    assert "state=dead" in browser.current_url
    assert_list_fits(browser)
    listed = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(listed) == len(dead)
    browser.find_element(By.ID, "action-toggle").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry_now")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()

    message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success")
    assert message.text == "2 outbox messages will be retried now."
    assert not OutboxMessage.objects.dead().exists()
    assert OutboxMessage.objects.due().filter(pk__in=[row.pk for row in dead]).count() == 2

    browser.get(f"{live_server.url}/admin/django_outbox/outboxmessage/{dead[0].pk}/history/")
    assert "Retry requested (was dead, 20/20 retries)." in browser.page_source


def test_detail_page_with_its_failed_attempts(live_server, browser, transactional_db, tmp_path):
    from selenium.webdriver.common.by import By

    rows = seed()
    dead = next(
        row
        for row in rows
        if row.event_type == "billing.invoice.paid" and row.status == Status.DEAD
    )
    started = timezone.now() - datetime.timedelta(minutes=30)
    for number in range(1, 4):
        attempts.record(
            "default",
            [(dead.pk, number)],
            error=dead.last_error or "",
            source=attempts.Source.CONSUMER,
            now=started + datetime.timedelta(minutes=10 * number),
            dead=number == 3,
        )
    log_in(browser, live_server, f"/admin/django_outbox/outboxmessage/{dead.pk}/change/")
    envelope_text = browser.find_element(By.CSS_SELECTOR, ".field-envelope pre").text
    assert json.loads(envelope_text)["key"] == dead.message_key
    table = browser.find_elements(By.CSS_SELECTOR, "table.outbox-attempts tbody tr")
    assert len(table) == 3
    assert attempts.worker_name() in table[0].text
    created = browser.find_element(By.CSS_SELECTOR, ".fieldBox.field-created_text .readonly").text
    assert created.endswith(" UTC") and created.count(":") == 2  # seconds and zone
    next_retry = ".fieldBox.field-next_retry_text .readonly"
    assert browser.find_element(By.CSS_SELECTOR, next_retry).text == "-"  # dead: no next retry
    screenshot(browser, "admin-detail.png", tmp_path)


def test_retry_a_failure_group(live_server, browser, transactional_db, tmp_path):
    from selenium.webdriver.common.by import By

    rows = seed()
    timeout_rows = [row for row in rows if (row.last_error or "").startswith("KafkaTimeoutError")]
    log_in(browser, live_server, "/admin/django_outbox/outboxmessage/failures/")
    groups = browser.find_elements(By.CSS_SELECTOR, "#outbox-failure-groups tbody tr")
    assert [g.find_element(By.TAG_NAME, "code").text for g in groups] == [
        "KafkaTimeoutError: Batch for TopicPartition(topic='chat.messages', partition=2) "
        "containing 1 record(s) expired",
        "KafkaTimeoutError: Failed to update metadata after 2.0 secs.",
        "handler billing.events.on_invoice_paid failed: ValueError: unknown currency 'XBT'",
    ]
    screenshot(browser, "admin-failures.png", tmp_path)
    groups[0].find_element(By.TAG_NAME, "a").click()  # the filter of that group
    assert "failure=" in browser.current_url
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 1
    assert_list_fits(browser)

    browser.back()
    browser.find_elements(By.CSS_SELECTOR, "input.outbox-retry-group")[1].click()
    message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success")
    assert message.text.startswith("1 message of the group")
    metadata = next(r for r in timeout_rows if "metadata" in (r.last_error or ""))
    fresh = OutboxMessage.objects.get(pk=metadata.pk)
    assert (fresh.status, fresh.retry_count) == (Status.PENDING, 0)
    assert OutboxMessage.objects.dead().count() == 2  # the other groups are left alone


def test_replay_a_rejected_record_through_its_handler(
    live_server, browser, transactional_db, tmp_path, settings
):
    from selenium.webdriver.common.by import By

    row = seed()[2]  # published, user.signed_up: no handler when it was consumed
    settings.OUTBOX_CONSUMER_GROUP = "browser-group"
    record = RejectedRecord.objects.create(
        consumer_group="browser-group",
        reason=RejectionReason.UNKNOWN_EVENT_TYPE,
        error="no handler registered for event type 'user.signed_up'",
        topic=row.topic,
        partition=1,
        offset=1234,
        key=row.message_key,
        value=row.payload,
        headers=encode_headers(record_headers(row, "default", {})),
        event_id=row.event.event_id,
        event_type=row.event_type,
    )
    handled: list[Any] = []
    log_in(browser, live_server, f"/admin/django_outbox/outboxmessage/{row.pk}/change/")
    assert (
        "No handler is registered"
        in browser.find_element(By.CSS_SELECTOR, ".field-handler_text").text
    )
    browser.find_element(By.CSS_SELECTOR, ".field-rejected_text li a").click()
    assert f"/rejectedrecord/{record.pk}/" in browser.current_url
    screenshot(browser, "admin-rejected.png", tmp_path)
    with registered("user.signed_up", handled.append):
        browser.find_element(By.CSS_SELECTOR, "button[value=rehandle]").click()
        message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success")
    assert message.text == "1 rejected record was replayed."
    assert [event.event_id for event in handled] == [row.event.event_id]
    record.refresh_from_db()
    assert record.replay_outcome == "handled"
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.CONSUMED
