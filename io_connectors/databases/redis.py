"""Redis source: the keys matching a pattern, their values as record batches.

`ReadFromRedis` scans a Redis database for keys matching a glob-style
pattern, reads their values in parallel and returns
`transforms.dead_letter.Outputs`: ``records`` carries `pyarrow.RecordBatch`es
(one per key batch, with the ``__source`` / ``__row`` provenance columns of
`transforms.records`), ``dead_letter`` one dict per value that cannot be
mapped to a record, naming its key.

Usage::

    with beam.Pipeline(options=options) as p:
      profiles = p | ReadFromRedis('user:*', RedisOptions(
          url='redis://:secret@cache.example.com:6379/0'))  # default: $REDIS_URL
      profiles.records | ...
      profiles.dead_letter | ...

From a `pipelines.spotify_batch` config::

    sources:
      - type: redis
        pattern: 'plays:acme:*'
        value_format: json
        tenant_id: acme

Values -> records. Every record has the ``key`` column (the key, UTF-8;
``key_column`` renames it) plus:

- string holding a JSON object (``value_format='auto'`` or ``'json'``): one
  column per field (nested objects -> struct, arrays -> list).
- any other string (``'auto'``, ``'text'``): a ``value`` column of text.
- hash: one column per field, values as text (validation converts them).
- list, set: ``value`` as a list of text (sets sorted, for stable output).
- sorted set: ``value`` as a list of {member, score} in score order.
- RedisJSON (``ReJSON-RL``, when the server has the module): the document
  from ``JSON.GET key $`` mapped like a JSON string. The Redis tested here
  (Debian's redis-server 7.0) has no modules, so this path is untested.

A field whose values do not share one Arrow type across a batch becomes a
text column (JSON text for objects and arrays), as in `io_connectors.databases.mongodb`.

Dead letters (``stage='read'``, ``position`` = ``key <key>``, a key that is
not UTF-8 with its bad bytes as ``\\xNN``):
``bad_encoding`` for a key or value that is not valid UTF-8 (record: the
bytes as ``base64:...``); ``malformed_json`` for a string that is not a JSON
object with ``value_format='json'`` (record: the text); ``duplicate_key``
for a JSON object (a string read as one, or a RedisJSON document) that
writes a key twice with different values (field: the key's path; json would
keep the last value and lose the first); ``invalid_value``
when a value has a field named like ``key_column``; ``source_error`` for a
stream or another type this source does not map. A key that is deleted or
expires between the scan and the read was not there to read: it is skipped
(counted in the log).

Parallelism. SCAN cannot be split across workers (its cursor is one
sequence), but it only returns key names, which is fast; the values are the
work. So one worker scans (``SCAN MATCH pattern COUNT scan_count``), drops
the duplicates SCAN may return (it keeps the keys seen in a set: a few dozen
bytes per key), and emits batches of ``key_batch_size`` keys that a
`beam.Reshuffle` spreads over the workers; each batch is read with two
pipelined round trips (TYPE, then GET/HGETALL/LRANGE/SMEMBERS/ZRANGE). Keys
are numbered in scan order: ``__row`` is that number and ``__source`` is
``redis://HOST:PORT/DB`` (never the password). Redis Cluster is not
supported (SCAN runs on one node).

Incremental reads. With ``cursor_field`` (a field of the JSON or hash values
holding a number or an ISO-8601 timestamp) and a ``state`` store
(`io_connectors._common.state`), only records whose cursor is above the value last
committed for this server, pattern and ``tenant`` minus ``lag`` (seconds for
timestamps, units for numbers) are emitted, and the largest cursor read goes
out on ``IncrementalOutputs.cursors`` for `pipelines.spotify_batch` to commit
after the run's files are in place (a failed run is read again). Redis cannot
filter values on the server, so every matching key is still read; the
savings are downstream. Records without the field are emitted by the first
run only. ``full_refresh`` emits everything and commits the new value.

Consistency: Redis has no snapshots; a value changed during the run is read
as it is when its batch is read.

Retries: reading a key batch is idempotent, so a lost connection re-reads
the batch, up to ``max_retries`` times with backoff; then the read fails with
`RedisSourceError`. A lost connection during the scan restarts the scan (the
keys already emitted are skipped).

Errors (a wrong password, an unreachable server, a bad pattern) raise
`RedisSourceError` with one line and no password; ``ReadFromRedis(...).check()``
tests connectivity, credentials and the pattern before a pipeline starts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common.arrow import table_from_rows
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import connection_url, mask_url, masked_message
from io_connectors._common.retry import Backoff, call_with_retries
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs, dead_letter
from transforms.json_values import loads, reason_of, repeated_key
from transforms.records import json_safe, with_provenance

__all__ = ['RedisOptions', 'RedisSourceError', 'ReadFromRedis']

_LOG = logging.getLogger(__name__)
# Waits between retries: 0.2 s doubling up to 30 s, jittered.
_BACKOFF = Backoff(first_delay_s=0.2, max_delay_s=30.0, jitter=True)

STAGE = 'read'
URL_VARIABLE = 'REDIS_URL'
VALUE_FORMATS = ('auto', 'json', 'text')


class RedisSourceError(ConnectorError, RuntimeError):
  """A Redis failure explained in one line, without credentials."""


@dataclasses.dataclass(frozen=True)
class RedisOptions:
  """Options of `ReadFromRedis`.

  url: redis:// or rediss:// URL (password in it or in $REDIS_URL); None
    reads $REDIS_URL at pipeline construction.
  value_format: how strings are read: 'auto' (JSON objects become fields,
    other text a `value`), 'json' (must be JSON objects) or 'text'.
  key_column: the name of the column holding the key.
  key_batch_size: keys per read (one pipelined round trip, one RecordBatch).
  scan_count: the COUNT hint of each SCAN call.
  max_retries: re-reads of a key batch (or restarts of the scan) after a
    lost connection.
  pool_size: connections per worker process.
  socket_timeout_s / connect_timeout_s: client timeouts in seconds.
  cursor_field / state / lag / full_refresh / tenant: incremental reads (see
    the module docstring): only records whose cursor_field (a number or an
    ISO-8601 timestamp) is above the value last committed in `state` minus
    `lag` (seconds for timestamps, units for numbers).
  """

  # Kept out of repr(): it may hold the password.
  url: Optional[str] = dataclasses.field(default=None, repr=False)
  value_format: str = 'auto'
  key_column: str = 'key'
  key_batch_size: int = 2000
  scan_count: int = 1000
  max_retries: int = 5
  pool_size: int = 4
  socket_timeout_s: float = 60.0
  connect_timeout_s: float = 10.0
  cursor_field: Optional[str] = None
  state: Optional[str] = None
  lag: float = 0
  full_refresh: bool = False
  tenant: Optional[str] = None

  def __post_init__(self):
    url = connection_url(self.url, URL_VARIABLE, ('redis://', 'rediss://', 'unix://'), 'Redis')
    object.__setattr__(self, 'url', url)
    if self.value_format not in VALUE_FORMATS:
      raise ValueError(f'value_format must be one of {", ".join(VALUE_FORMATS)}, got {self.value_format!r}')
    if not isinstance(self.key_column, str) or not self.key_column:
      raise ValueError(f'key_column must be a non-empty string, got {self.key_column!r}')
    for name in ('key_batch_size', 'scan_count', 'pool_size'):
      _check_int(name, getattr(self, name), 1)
    _check_int('max_retries', self.max_retries, 0)
    if self.cursor_field is not None:
      if not isinstance(self.cursor_field, str) or not self.cursor_field:
        raise ValueError(f'cursor_field must be a field name, got {self.cursor_field!r}')
      if self.cursor_field == self.key_column:
        raise ValueError('cursor_field cannot be the key column (keys are not ordered)')
      if not self.state:
        raise ValueError('cursor_field needs a state store (state=: a directory, s3://, gs:// or postgresql:// URL)')
    if isinstance(self.lag, bool) or not isinstance(self.lag, (int, float)) or self.lag < 0:
      raise ValueError(f'lag must be a number >= 0, got {self.lag!r}')
    for name in ('socket_timeout_s', 'connect_timeout_s'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _client(options: RedisOptions):
  import redis
  from redis.backoff import NoBackoff
  from redis.retry import Retry

  # The client's own retries are off: this module retries whole key batches
  # (idempotent) with its own backoff and says so in the log.
  return redis.Redis.from_url(
    options.url,
    max_connections=options.pool_size,
    socket_timeout=options.socket_timeout_s,
    socket_connect_timeout=options.connect_timeout_s,
    retry=Retry(NoBackoff(), 0),
    decode_responses=False,
  )


def _source_name(url: str) -> str:
  from redis.connection import parse_url

  try:
    parsed = parse_url(url)
  except ValueError:
    return mask_url(url)
  if 'path' in parsed:
    return f'redis+unix://{parsed["path"]}/{parsed.get("db", 0)}'
  return f'redis://{parsed.get("host", "localhost")}:{parsed.get("port", 6379)}/{parsed.get("db", 0)}'


def _explain(error: BaseException, options: RedisOptions, what: str) -> RedisSourceError:
  import redis

  where = mask_url(options.url)
  detail = masked_message(f'{type(error).__name__}: {error}', options.url)
  if (
    isinstance(error, redis.AuthenticationError)
    or 'WRONGPASS' in str(error)
    or 'NOAUTH' in str(error)
    or ('invalid password' in str(error).lower())
  ):
    return RedisSourceError(f'Redis authentication failed for {where}: check the password in the URL ({detail})')
  if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
    return RedisSourceError(f'Redis server not reachable (or connection lost) at {where} during {what}: {detail}')
  if isinstance(error, redis.ResponseError):
    return RedisSourceError(f'Redis rejected the {what} on {where}: {detail}')
  return RedisSourceError(f'Redis {what} on {where} failed: {detail}')


def _transient(error: BaseException) -> bool:
  import redis

  if isinstance(error, redis.AuthenticationError):
    return False
  if isinstance(error, redis.ResponseError):
    # A replica or a server loading its data set says so and recovers.
    return str(error).startswith(('LOADING', 'BUSY', 'TRYAGAIN', 'MASTERDOWN'))
  return isinstance(error, (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError))


def _with_retries(options: RedisOptions, what: str, attempt_fn, on_retry=None):
  """attempt_fn() retried on transient errors; other errors explained."""
  return call_with_retries(
    attempt_fn,
    max_retries=options.max_retries,
    backoff=_BACKOFF,
    what=f'Redis {what} at {mask_url(options.url)}',
    transient=_transient,
    explain=lambda e: _explain(e, options, what),
    reason=lambda e: masked_message(f'{type(e).__name__}: {e}', options.url),
    on_retry=on_retry,
  )


# ---------------------------------------------------------------------------
# Scan


class _KeyBatch(NamedTuple):
  first_row: int  # scan-order number of keys[0]
  keys: Tuple[bytes, ...]
  low: Any = None  # incremental reads: keep records whose cursor is above this (None: all)


# ---------------------------------------------------------------------------
# Incremental reads

CURSORS = 'cursors'


def _cursor_order(value: Any):
  """A sort key for cursor values: numbers, then timestamps, then other text; None if unusable."""
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, float)):
    return (0, float(value), '')
  if isinstance(value, str):
    try:
      return (0, float(value), '')
    except ValueError:
      pass
    try:
      moment = dt.datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
      return (2, 0.0, value)
    if moment.tzinfo is None:
      moment = moment.replace(tzinfo=dt.timezone.utc)
    return (1, moment.timestamp(), '')
  return None


def _committed_form(value: Any) -> Any:
  """The JSON scalar a cursor is committed as: a number, or an ISO-8601 UTC timestamp, or the text."""
  order = _cursor_order(value)
  if order[0] == 0:
    number = order[1]
    return int(number) if number.is_integer() and not (isinstance(value, float)) else number
  if order[0] == 1:
    return dt.datetime.fromtimestamp(order[1], dt.timezone.utc).isoformat()
  return value


def _lower_bound(last: Any, lag: float):
  """The order key records must exceed, from the committed value and the lag window."""
  order = _cursor_order(last)
  if order is None:
    return None
  if order[0] in (0, 1):
    return (order[0], order[1] - lag, '')
  return order


def _state_key(pattern: str, options: RedisOptions) -> str:
  from io_connectors._common import state

  return state.cursor_key('redis', options.tenant, f'{_source_name(options.url).split("://", 1)[1]}/{pattern}')


class _ScanFn(beam.DoFn):
  """SCANs the pattern on one worker; emits deduplicated key batches in scan order."""

  def __init__(self, pattern: str, options: RedisOptions):
    self._pattern = pattern
    self._options = options

  def process(self, unused_element):
    options = self._options
    low = None
    if options.cursor_field and not options.full_refresh:
      from io_connectors._common import state

      low = _lower_bound(state.load_cursor(options.state, _state_key(self._pattern, options)), options.lag)
    client = _client(options)
    seen = set()
    batch: List[bytes] = []
    emitted = [0]
    # A restarted scan starts from cursor 0 again; `seen` skips what was
    # already batched, so a key is emitted once.
    batches: List[_KeyBatch] = []

    def scan():
      nonlocal batch
      cursor = 0
      while True:
        cursor, keys = client.scan(cursor=cursor, match=self._pattern, count=options.scan_count)
        for key in keys:
          if key in seen:
            continue
          seen.add(key)
          batch.append(key)
          if len(batch) >= options.key_batch_size:
            batches.append(_KeyBatch(emitted[0] + 1, tuple(batch), low))
            emitted[0] += len(batch)
            batch = []
        if cursor == 0:
          break

    try:
      _with_retries(options, f'SCAN MATCH {self._pattern!r}', scan)
    finally:
      client.close()
    if batch:
      batches.append(_KeyBatch(emitted[0] + 1, tuple(batch), low))
      emitted[0] += len(batch)
    _LOG.info(
      'Redis %s: %d key(s) match %r, in %d batch(es)',
      _source_name(options.url),
      emitted[0],
      self._pattern,
      len(batches),
    )
    yield from batches


# ---------------------------------------------------------------------------
# Values -> records


def _text(value: bytes) -> str:
  return value.decode('utf-8')


class _BadValue(Exception):
  def __init__(self, reason: str, detail: str, record: Any, field: Optional[str] = None):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail
    self.record = record
    self.field = field


def _json_object(text: str, value_format: str) -> Optional[dict]:
  """The JSON object in `text`, or None for plain text ('auto'/'text')."""
  if value_format == 'text':
    return None
  stripped = text.lstrip()
  if value_format == 'auto' and not stripped.startswith('{'):
    return None
  try:
    # Numbers as written, as the JSON files' and streams' readers keep them (io_connectors._common.arrow):
    # a column of mixed types holds 1.10, not 1.1, and every digit of 12345678901234567890.5.
    parsed = loads(text, floats_as_written=True, repeated_keys=True)
  except ValueError as e:
    if value_format == 'json':
      raise _BadValue(reason_of(e), f'not JSON: {e}', text) from None
    return None  # 'auto': kept as the text it is
  if not isinstance(parsed, dict):
    if value_format == 'json':
      raise _BadValue('malformed_json', f'JSON {type(parsed).__name__}, not an object', text)
    return None
  _refuse_repeated_keys(parsed, text)
  return parsed


def _refuse_repeated_keys(document: Any, record: Any):
  """_BadValue ``duplicate_key`` when a decoded JSON object writes a key twice with different values (json kept
  the last: which one the writer meant cannot be told), naming the key, never its values."""
  repeated = repeated_key(document)
  if repeated is not None:
    raise _BadValue('duplicate_key', repeated.detail, record, repeated.field)


def _fields(redis_type: str, value: Any, options: RedisOptions) -> dict:
  """The record fields of one value (without the key); raises _BadValue."""
  try:
    if redis_type == 'string':
      text = _text(value)
      obj = _json_object(text, options.value_format)
      return obj if obj is not None else {'value': text}
    if redis_type == 'hash':
      return {_text(k): _text(v) for k, v in value.items()}
    if redis_type == 'list':
      return {'value': [_text(v) for v in value]}
    if redis_type == 'set':
      return {'value': sorted(_text(v) for v in value)}
    if redis_type == 'zset':
      return {'value': [{'member': _text(m), 'score': float(s)} for m, s in value]}
    if redis_type == 'ReJSON-RL':
      text = _text(value)
      docs = loads(text, floats_as_written=True, repeated_keys=True)  # JSON.GET key $ -> [document]
      doc = docs[0] if isinstance(docs, list) and docs else docs
      _refuse_repeated_keys(doc, text)
      return doc if isinstance(doc, dict) else {'value': doc}
  except UnicodeDecodeError as e:
    raise _BadValue(
      'bad_encoding', f'{redis_type} value is not UTF-8 ({e.reason} at byte {e.start})', json_safe(_raw_record(value))
    ) from None
  except ValueError as e:
    raise _BadValue('malformed_json', f'RedisJSON value does not parse: {e}', json_safe(value)) from None
  raise _BadValue('source_error', f'keys of type {redis_type} are not read by this source', None)


def _raw_record(value: Any) -> Any:
  if isinstance(value, dict):
    return {json_safe(k): json_safe(v) for k, v in value.items()}
  return value


class _ReadKeysFn(beam.DoFn):
  """Reads the values of one key batch: a RecordBatch, and dead letters tagged."""

  def __init__(self, options: RedisOptions):
    self._options = options
    self._client = None
    self._source = _source_name(options.url)

  def setup(self):
    self._client = _client(self._options)

  def teardown(self):
    if self._client is not None:
      self._client.close()

  def _read(self, keys) -> List[Tuple[str, Any]]:
    pipe = self._client.pipeline(transaction=False)
    for key in keys:
      pipe.type(key)
    types = [t.decode('ascii') for t in pipe.execute()]
    pipe = self._client.pipeline(transaction=False)
    for key, redis_type in zip(keys, types):
      if redis_type == 'string':
        pipe.get(key)
      elif redis_type == 'hash':
        pipe.hgetall(key)
      elif redis_type == 'list':
        pipe.lrange(key, 0, -1)
      elif redis_type == 'set':
        pipe.smembers(key)
      elif redis_type == 'zset':
        pipe.zrange(key, 0, -1, withscores=True)
      elif redis_type == 'ReJSON-RL':
        pipe.execute_command('JSON.GET', key, '$')
      else:
        pipe.type(key)  # a placeholder reply keeps the replies aligned with the keys
    values = pipe.execute(raise_on_error=False)
    for value in values:
      if isinstance(value, Exception):
        raise value
    return list(zip(types, values))

  def process(self, key_batch: _KeyBatch):
    options = self._options
    replies = _with_retries(options, f'read of {len(key_batch.keys)} key(s)', lambda: self._read(key_batch.keys))
    rows, numbers, gone = [], [], 0
    highest = None  # incremental reads: the largest cursor value kept
    for offset, (key, (redis_type, value)) in enumerate(zip(key_batch.keys, replies)):
      # An empty hash, list or set does not exist in Redis: the key went away.
      if redis_type == 'none' or value is None or (isinstance(value, (dict, list, set)) and not value):
        gone += 1  # deleted or expired since the scan
        continue
      try:
        key_text = _text(key)
      except UnicodeDecodeError:
        yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          dead_letter(
            self._source,
            f'key {key.decode("utf-8", "backslashreplace")}',
            'bad_encoding',
            field=options.key_column,
            record=None,
            detail='the key is not UTF-8',
            stage=STAGE,
          ),
        )
        continue
      try:
        fields = _fields(redis_type, value, options)
        if options.key_column in fields:
          raise _BadValue(
            'invalid_value',
            f'the value has a field named {options.key_column!r}, the key column; set key_column to another name',
            json_safe(fields),
            options.key_column,
          )
      except _BadValue as bad:
        yield beam.pvalue.TaggedOutput(
          DEAD_LETTER,
          dead_letter(
            self._source,
            f'key {key_text}',
            bad.reason,
            field=bad.field,
            record=bad.record,
            detail=bad.detail,
            stage=STAGE,
          ),
        )
        continue
      if options.cursor_field:
        order = _cursor_order(fields.get(options.cursor_field))
        if key_batch.low is not None and (order is None or order[0] != key_batch.low[0] or order <= key_batch.low):
          continue  # not changed since the committed cursor (or no cursor: read by the first run only)
        if order is not None and (highest is None or order > _cursor_order(highest)):
          highest = fields[options.cursor_field]
      rows.append({options.key_column: key_text, **fields})
      numbers.append(key_batch.first_row + offset)
    if gone:
      _LOG.info('Redis %s: %d key(s) gone between scan and read', self._source, gone)
    if rows:
      table = table_from_rows(rows).combine_chunks()
      yield with_provenance(table.to_batches()[0], self._source, pa.array(numbers, type=pa.int64()))
    if highest is not None:
      yield beam.pvalue.TaggedOutput(CURSORS, highest)


class ReadFromRedis(beam.PTransform):
  """The keys matching `pattern` with their values as record batches; see the module docstring."""

  def __init__(self, pattern: str, options: Optional[RedisOptions] = None):
    super().__init__()
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f'pattern must be a non-empty glob-style key pattern, got {pattern!r}')
    if options is not None and not isinstance(options, RedisOptions):
      raise ValueError(f'options must be a RedisOptions, got {type(options).__name__}')
    self._pattern = pattern
    self._options = options or RedisOptions()

  def check(self) -> str:
    """Connects, authenticates and runs one SCAN step of the pattern.

    Returns a one-line description; raises RedisSourceError saying what is wrong.
    """
    options = self._options
    client = _client(options)
    try:
      try:
        client.ping()
        client.scan(cursor=0, match=self._pattern, count=options.scan_count)
      except Exception as e:
        raise _explain(e, options, f'check of pattern {self._pattern!r}') from None
    finally:
      client.close()
    return f'Redis {mask_url(options.url)}: pattern {self._pattern!r} readable'

  def expand(self, pbegin):
    key_batches = (
      pbegin
      | 'Start' >> beam.Create([None])
      | 'Scan' >> beam.ParDo(_ScanFn(self._pattern, self._options))
      # Spreads the key batches over the workers.
      | 'Spread' >> beam.Reshuffle()
    )
    result = key_batches | 'Read' >> beam.ParDo(_ReadKeysFn(self._options)).with_outputs(
      DEAD_LETTER, CURSORS, main='records'
    )
    records, dead_letters = result.records, result[DEAD_LETTER]
    records.element_type = pa.RecordBatch
    dead_letters.element_type = Dict[str, Any]
    if not self._options.cursor_field:
      return Outputs(records, dead_letters)
    store, key = self._options.state, _state_key(self._pattern, self._options)
    cursors = (
      result[CURSORS]
      | 'Highest' >> beam.combiners.Top.Of(1, key=_cursor_order)
      | 'CursorUpdate'
      >> beam.FlatMap(lambda top: [{'store': store, 'key': key, 'value': _committed_form(v)} for v in top])
    )
    return IncrementalOutputs(records, dead_letters, cursors)


@registry.register('redis', 'Redis keys by pattern: strings (JSON or text), hashes, lists, sets (REDIS_URL)')
def _redis(config):
  config = dict(config)
  pattern = config.pop('pattern', None)
  if not pattern:
    raise ValueError('a redis source needs "pattern"')
  registry.check_keys(config, RedisOptions, ['pattern'], noun='redis option')
  return ReadFromRedis(pattern, RedisOptions(**config))
