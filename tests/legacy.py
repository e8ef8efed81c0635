"""The legacy table as the Go service (GORM, MySQL dialect) creates it, for the schema tests."""

from __future__ import annotations

from django.apps import apps
from django.db import connection

#: Exactly the statement GORM v1.31's AutoMigrate runs for model/outbox.go on MySQL/MariaDB
#: (tests/interop/go/model/outbox.go, verbatim from the Go service), table options aside.
LEGACY_MYSQL_DDL = (
    "CREATE TABLE `agent_outbox_messages` (`id` bigint AUTO_INCREMENT,"
    "`biz_type` varchar(64) NOT NULL COMMENT '事件类型',"
    "`topic` varchar(128) NOT NULL COMMENT 'Kafka Topic',"
    "`message_key` varchar(128) NOT NULL COMMENT 'Kafka 消息键',"
    "`payload` longtext NOT NULL COMMENT '业务载荷(JSON)',"
    "`status` varchar(32) NOT NULL COMMENT 'pending/published/consumed/dead',"
    "`retry_count` bigint NOT NULL DEFAULT 0 COMMENT '已重试次数',"
    "`max_retry` bigint NOT NULL DEFAULT 20 COMMENT '最大重试次数',"
    "`next_retry_at` datetime(3) NULL COMMENT '下次重试时间',"
    "`last_error` text COMMENT '最后一次错误',"
    "`published_at` datetime(3) NULL COMMENT '投递到 Kafka 时间',"
    "`consumed_at` datetime(3) NULL COMMENT '消费完成时间',"
    "`created_at` datetime(3) NULL,`updated_at` datetime(3) NULL,"
    "PRIMARY KEY (`id`),"
    "INDEX `idx_outbox_status_next` (`status`,`next_retry_at`,`biz_type`))"
    " DEFAULT CHARSET=utf8mb4"
)

#: The Go model's column comments (``comment:`` tags), which its AutoMigrate keeps.
GO_COMMENTS = {
    "biz_type": "事件类型",
    "topic": "Kafka Topic",
    "message_key": "Kafka 消息键",
    "payload": "业务载荷(JSON)",
    "status": "pending/published/consumed/dead",
    "retry_count": "已重试次数",
    "max_retry": "最大重试次数",
    "next_retry_at": "下次重试时间",
    "last_error": "最后一次错误",
    "published_at": "投递到 Kafka 时间",
    "consumed_at": "消费完成时间",
}

#: (column, MySQL COLUMN_TYPE, nullable, default) in table order.
LEGACY_MYSQL_COLUMNS = [
    ("id", "bigint(20)", False, None),
    ("biz_type", "varchar(64)", False, None),
    ("topic", "varchar(128)", False, None),
    ("message_key", "varchar(128)", False, None),
    ("payload", "longtext", False, None),
    ("status", "varchar(32)", False, None),
    ("retry_count", "bigint(20)", False, "0"),
    ("max_retry", "bigint(20)", False, "20"),
    ("next_retry_at", "datetime(3)", True, "NULL"),
    ("last_error", "text", True, "NULL"),
    ("published_at", "datetime(3)", True, "NULL"),
    ("consumed_at", "datetime(3)", True, "NULL"),
    ("created_at", "datetime(3)", True, "NULL"),
    ("updated_at", "datetime(3)", True, "NULL"),
]

#: The nearest native types on PostgreSQL: (column, data type, nullable, default).
POSTGRES_COLUMNS = [
    ("id", "bigint", False, None),
    ("biz_type", "character varying(64)", False, None),
    ("topic", "character varying(128)", False, None),
    ("message_key", "character varying(128)", False, None),
    ("payload", "text", False, None),
    ("status", "character varying(32)", False, None),
    ("retry_count", "bigint", False, "0"),
    ("max_retry", "bigint", False, "20"),
    ("next_retry_at", "timestamp with time zone", True, None),
    ("last_error", "text", True, None),
    ("published_at", "timestamp with time zone", True, None),
    ("consumed_at", "timestamp with time zone", True, None),
    ("created_at", "timestamp with time zone", True, None),
    ("updated_at", "timestamp with time zone", True, None),
]

SQLITE_COLUMNS = [
    ("id", "integer", False, None),
    ("biz_type", "varchar(64)", False, None),
    ("topic", "varchar(128)", False, None),
    ("message_key", "varchar(128)", False, None),
    ("payload", "text", False, None),
    ("status", "varchar(32)", False, None),
    ("retry_count", "bigint", False, "0"),
    ("max_retry", "bigint", False, "20"),
    ("next_retry_at", "datetime", True, None),
    ("last_error", "text", True, None),
    ("published_at", "datetime", True, None),
    ("consumed_at", "datetime", True, None),
    ("created_at", "datetime", True, None),
    ("updated_at", "datetime", True, None),
]

INDEX_NAME = "idx_outbox_status_next"
INDEX_COLUMNS = ["status", "next_retry_at", "biz_type"]


def drop_app_tables() -> None:
    """Back to a production database before the app: none of its tables (MySQL)."""
    tables = [model._meta.db_table for model in apps.get_app_config("django_outbox").get_models()]
    with connection.cursor() as cursor:
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
