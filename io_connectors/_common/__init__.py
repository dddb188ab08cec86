"""Private parts shared by the connectors: one way for each.

- `arrow`: rows (dicts, JSON text) to Arrow, with one set of type rules.
- `errors`: `ConnectorError`, the base of every connector's error class.
- `masking`: secrets resolved from options or the environment, masked in
  every message that leaves a connector.
- `retry`: transient failures retried with jittered exponential backoff.
- `state`: the cursor store of incremental reads (directory, s3://, gs://,
  PostgreSQL).
- `times`: times to the nanosecond where Python's stop at the microsecond
  (epoch counts, nanosecond times of day, Avro's nanosecond timestamps).

Not an API: connectors import these; users import `io_connectors`.
"""
