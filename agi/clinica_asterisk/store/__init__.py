"""The call store and the outbox (SQLite), and their one transaction contract."""
