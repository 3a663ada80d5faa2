"""The PostgreSQL backend of the store (``spool.url``, issue #27).

The job modules stay the one implementation; this package gives them
connections of the shape they already use (``relay/store/db.py``):

- ``conn``: a synchronous psycopg connection that runs each named statement's
  PostgreSQL twin (``relay/store/sql/pg/``), with rows by name and index;
- ``writer``: the writer thread and its group commit, as SQLite's, on one
  such connection (``synchronous_commit`` on), reconnecting after an outage;
- ``reader``: an autocommit connection for the readers;
- ``migrations``: the numbered schema steps of ``sql/pg/migrations``.
"""
