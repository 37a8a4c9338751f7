"""Data access: every SQL statement of the program lives in these modules, parameterized.

Each module offers plain functions taking a ``sqlite3.Connection`` (run by the DatabaseWriter
inside its batch transaction) and a ``*Repository`` class over a ConnectionPool for reads and
synchronous writes.
"""
