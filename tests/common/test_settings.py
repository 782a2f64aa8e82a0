"""Settings helpers: URLs as operators write them."""

from __future__ import annotations

import pytest

from services.common.settings import asyncpg_url, nats_servers, sqlalchemy_url


def test_nats_url_may_list_a_cluster() -> None:
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_postgres_urls_convert_both_ways() -> None:
    url = "postgresql://u:p@h:5432/db"
    assert sqlalchemy_url(url) == "postgresql+asyncpg://u:p@h:5432/db"
    assert asyncpg_url(sqlalchemy_url(url)) == url
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        sqlalchemy_url("mysql://h/db")
