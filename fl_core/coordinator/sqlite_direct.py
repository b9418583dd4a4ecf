"""The upload path's statements on SQLite, run straight on the ``sqlite3`` connection.

An upload runs five registry statements (the key and upload context, the nonce, the claim,
the acceptance, and a read on a retry). On SQLite the statement itself takes a few
microseconds; SQLAlchemy's execution around it (execution context, parameter and result
processing, the compiled-cache lookup) took about 65 us each, a fifth of the coordinator's
interpreter time under a burst of uploads (profiled with py-spy). Here each statement is
compiled once by SQLAlchemy, for the engine's dialect and with its bind and result
processors, and then executed on the DBAPI connection directly. Nothing else changes:

- the SQL is SQLAlchemy's own compilation of the same statement object;
- values go through the same bind processors and rows through the same result processors
  (JSON columns decoded, booleans as ``bool``), with attribute access as on a ``Row``;
- a ``sqlite3`` error becomes the SQLAlchemy exception it would have been (``IntegrityError``
  on a duplicate key, ``OperationalError`` on a locked database);
- the transaction is the connection's own: the ``sqlite3`` module begins one before the first
  write, and :func:`commit` / :func:`rollback` end it together with SQLAlchemy's view of it.

Used only for a Core ``sa.Connection`` on SQLite whose pool record carries the DBAPI
connection (``make_engine`` puts it there, :data:`INFO_KEY`); ORM sessions and PostgreSQL
take SQLAlchemy's path unchanged (``execute`` falls through to ``session.execute``).
Tests: ``tests/fl_core/coordinator/test_registry.py`` compares both paths row for row.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

__all__ = ["INFO_KEY", "commit", "execute", "rollback"]

INFO_KEY = "fl_sqlite3"
"""Where a SQLite engine's pool record keeps the ``sqlite3.Connection`` (``record.info``)."""


_FROM_PARAMS = object()


class _Compiled(NamedTuple):
    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]
    """(name, bind processor, the statement's own value or ``_FROM_PARAMS``)"""
    row: Any  # a namedtuple class for the result columns, or None (no rows)
    processors: tuple[Callable[[Any], Any] | None, ...]


_CACHE: dict[tuple[Any, frozenset[str]], _Compiled | None] = {}
"""By statement (kept alive by its key, so no other can take its place) and parameter names."""


class Result:
    """What the registry uses of a ``CursorResult``: ``first()`` and ``rowcount``."""

    __slots__ = ("_compiled", "_cursor", "rowcount")

    def __init__(self, cursor: sqlite3.Cursor, compiled: _Compiled) -> None:
        self._cursor = cursor
        self._compiled = compiled
        self.rowcount = cursor.rowcount

    def first(self) -> Any:
        """The first row (None without one); the cursor is closed, as SQLAlchemy's is (an
        open SELECT would hold its read snapshot)."""
        try:
            values = self._cursor.fetchone()
        finally:
            self._cursor.close()
        if values is None:
            return None
        c = self._compiled
        pairs = zip(c.processors, values, strict=True)
        return c.row._make(p(v) if p is not None else v for p, v in pairs)


def _driver_connection(session: Session | sa.Connection) -> sqlite3.Connection | None:
    if not isinstance(session, sa.Connection):
        return None
    found: sqlite3.Connection | None = session.info.get(INFO_KEY)
    return found


def _row_type(names: list[str]) -> Any:
    """A row class with attribute access by column name, as SQLAlchemy's ``Row``."""
    return collections.namedtuple("Row", names)


def _compile(stmt: Any, params: Mapping[str, Any], dialect: sa.Dialect) -> _Compiled | None:
    """The statement for direct execution, or None where SQLAlchemy does more than bind
    the given values (Python-side column defaults to compute, expanding ``IN`` binds, a
    required value missing): those keep SQLAlchemy's path."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(params))
    if compiled.insert_prefetch or compiled.update_prefetch:
        return None
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if bind.expanding or (name not in params and bind.required):
            return None
    binds = tuple(
        (
            name,
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            _FROM_PARAMS if name in params else compiled.binds[name].effective_value,
        )
        for name in compiled.positiontup
    )
    row: Any = None
    processors: tuple[Callable[[Any], Any] | None, ...] = ()
    if isinstance(stmt, sa.Select):
        columns = list(stmt.selected_columns)
        row = _row_type([str(c.key) for c in columns])
        processors = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
    return _Compiled(str(compiled), binds, row, processors)


def execute(session: Session | sa.Connection, stmt: Any, params: Mapping[str, Any]) -> Any:
    """``session.execute(stmt, params)``, straight on ``sqlite3`` where it can be."""
    raw = _driver_connection(session)
    if raw is None:
        return session.execute(stmt, params)
    key = (stmt, frozenset(params))
    try:
        compiled = _CACHE[key]
    except KeyError:  # the registry builds these statements once (functools.cache)
        assert isinstance(session, sa.Connection)
        compiled = _CACHE[key] = _compile(stmt, params, session.dialect)
    if compiled is None:
        return session.execute(stmt, params)
    args = []
    for name, process, own in compiled.binds:
        value = params[name] if own is _FROM_PARAMS else own
        args.append(value if process is None else process(value))
    try:
        cursor = raw.execute(compiled.sql, args)
    except sqlite3.Error as exc:
        raise _as_sqlalchemy(exc, compiled.sql, args) from exc
    return Result(cursor, compiled)


def commit(session: Session | sa.Connection) -> None:
    """End the transaction: SQLAlchemy's and any the direct statements began."""
    _end(session, "commit")


def rollback(session: Session | sa.Connection) -> None:
    """Roll back SQLAlchemy's transaction and any the direct statements began."""
    _end(session, "rollback")


def _end(session: Session | sa.Connection, how: str) -> None:
    """``commit`` or ``rollback`` SQLAlchemy's transaction, then sqlite3's if one is still
    open (SQLAlchemy did not begin one when only direct statements ran)."""
    getattr(session, how)()
    raw = _driver_connection(session)
    if raw is not None and raw.in_transaction:
        try:
            getattr(raw, how)()
        except sqlite3.Error as exc:
            raise _as_sqlalchemy(exc, how.upper(), ()) from exc


def _as_sqlalchemy(exc: sqlite3.Error, sql: str, args: Any) -> sa.exc.StatementError:
    """The SQLAlchemy exception SQLAlchemy would have raised for ``exc`` (``IntegrityError``,
    ``OperationalError``, ...), with the original as ``.orig``."""
    return sa.exc.DBAPIError.instance(sql, args, exc, sqlite3.Error)
