"""Product-analytics sources (and the Mixpanel sink) as Beam IO, mapped to the `analytics_event` entity.

- `mixpanel`: Raw Event Export (source, per project day) and Import (sink, via the `mixpanel` package).
- `amplitude`: Export API (zip of gzipped JSON per hour), hour ranges across workers.
- `segment`: the S3 archive layout (gzipped JSON Lines per source and day) as a file source, and
  the mapping of webhook deliveries (signed with X-Signature, HMAC-SHA1) read back from the stream.
- `ga4`: Google Analytics 4 reports (`analytics_report`) through `google-analytics-data`.

`_events` holds the one columnar mapping from provider events to the entity; `_source` the
credentials, refused-credential errors and incremental windows they share.
"""
