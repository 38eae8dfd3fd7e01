"""The feedback store: one database for served requests, feedback, rewards, A/B experiments
and deployment / audit events, in SQLite (WAL) under the home directory or in PostgreSQL.

:mod:`~qlp_ray.store.schema` holds the tables and their versioned migrations,
:mod:`~qlp_ray.store.records` the validated records, :mod:`~qlp_ray.store.database` the
store itself. No Ray.
"""
