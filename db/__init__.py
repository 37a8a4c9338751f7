"""Persistence: WAL-mode SQLite (connection.py), schema and migrations (schema.py), the batching
background writer (writer.py), typed errors (errors.py) and all SQL (repositories/).

The lowest layer with config and utils: nothing here imports tracking/, capture/ or above.
"""
