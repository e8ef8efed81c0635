"""Settings of the demo project, from the environment (django-environ).

DATABASE_URL               default: SQLite file testproject/db.sqlite3
SQLITE_TIMEOUT             seconds an SQLite writer waits for the lock (default 20)
KAFKA_BOOTSTRAP_SERVERS    default: 127.0.0.1:19092 (scripts/kafka-local start)
OUTBOX_DEFAULT_TOPIC       default: outbox.events
CHAT_TOPIC                 topic of chat.message.created (default chat.messages)
OUTBOX_CONSUMER_GROUP      default: testproject
OUTBOX_MAX_RETRY           default: 20 (scripts/demo uses 3, so its failing event dies soon)
OUTBOX_RETRY_BACKOFF_BASE  seconds before the first retry (default 1)
OUTBOX_DEAD_LETTER_TOPIC   e.g. {topic}.DLT (default: none, no dead-letter copies)
DJANGO_DEBUG, DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; absent is fine

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="insecure-demo-key-change-me")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_outbox",
    "testproject.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "testproject.wsgi.application"


def database(url_var: str, default: str) -> dict:
    config = env.db(url_var, default=default)
    if config["ENGINE"] == "django.db.backends.mysql":
        config.setdefault("OPTIONS", {})["charset"] = "utf8mb4"
        config["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    elif config["ENGINE"] == "django.db.backends.sqlite3":
        # The web server, the relay and the consumer write one file at once: WAL lets
        # readers go on beside the writer, the timeout makes writers queue for the
        # lock, and IMMEDIATE takes it at BEGIN (a read lock upgraded later would fail
        # at once with "database is locked" instead of waiting).
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            "timeout": env.float("SQLITE_TIMEOUT", default=20.0),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    return config


DATABASES = {"default": database("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
LOGIN_URL = "admin:login"

# The outbox table carries the Go service's column comments; SQLite has no column
# comments and Django warns about each one there (harmless).
SILENCED_SYSTEM_CHECKS = ["fields.W163"]

OUTBOX_KAFKA_BOOTSTRAP_SERVERS = env.list("KAFKA_BOOTSTRAP_SERVERS", default=["127.0.0.1:19092"])
OUTBOX_DEFAULT_TOPIC = env.str("OUTBOX_DEFAULT_TOPIC", default="outbox.events")
OUTBOX_TOPICS = {"chat.message.created": env.str("CHAT_TOPIC", default="chat.messages")}
OUTBOX_CONSUMER_GROUP = env.str("OUTBOX_CONSUMER_GROUP", default="testproject")
OUTBOX_MAX_RETRY = env.int("OUTBOX_MAX_RETRY", default=20)
OUTBOX_RETRY_BACKOFF_BASE = env.float("OUTBOX_RETRY_BACKOFF_BASE", default=1.0)
OUTBOX_DEAD_LETTER_TOPIC = env.str("OUTBOX_DEAD_LETTER_TOPIC", default=None)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django_outbox": {"handlers": ["console"], "level": "INFO"}},
}
