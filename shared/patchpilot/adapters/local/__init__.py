"""The local runtime: SQLite store and queue, a simulated fleet, a virtual clock."""
