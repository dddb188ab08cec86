"""Database sources: PostgreSQL, MongoDB, Redis, OpenSearch/Elasticsearch, ClickHouse.

Each reads in parallel splits planned up front, optionally incrementally from
a cursor committed after the run's outputs, and has a ``check()``.
"""
