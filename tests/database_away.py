"""The database going away, for tests: every query fails as if the server refused the
connection. Simulated with Django's own query hook (`connection.execute_wrapper`) on the
thread that queries, i.e. at the database boundary; the fault lane
(tests/faults/test_postgres_down.py) stops a real PostgreSQL instead."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import OperationalError, connection


@contextmanager
def database_away(after: int = 0, matching: str = "") -> Iterator[list[str]]:
    """Every query (past the first `after` that contain `matching`) fails as if the
    server refused the connection."""
    seen: list[str] = []

    def refuse(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if matching in sql:
            seen.append(sql)
            if len(seen) > after:
                raise OperationalError("connection refused (the test's database is away)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield seen
