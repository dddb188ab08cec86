"""MongoDB source: a collection (with a filter and projection) or an aggregation, as record batches.

`ReadFromMongo` reads one collection of a MongoDB (or wire-compatible) server
in parallel and returns `transforms.dead_letter.Outputs`: ``records`` carries
`pyarrow.RecordBatch`es (at most ``batch_size`` rows, with the ``__source`` /
``__row`` provenance columns of `transforms.records`), ``dead_letter`` one
dict per document that cannot be decoded.

Usage::

    with beam.Pipeline(options=options) as p:
      plays = p | ReadFromMongo('plays', MongoOptions(
          url='mongodb://reader:secret@db.example.com:27017/music',  # default: $MONGODB_URL
          filter={'ms_played': {'$gt': 0}},
          projection=['event_id', 'user_id', 'played_at', 'ms_played']))
      plays.records | ...
      plays.dead_letter | ...

From a `pipelines.spotify_batch` config::

    sources:
      - type: mongodb
        collection: plays
        database: music          # else the URL's path
        filter: {ms_played: {$gt: 0}}
        tenant_id: acme

Why not Beam's `apache_beam.io.mongodbio.ReadFromMongoDB`: it emits one
Python dict per document, and it splits with the ``splitVector`` command (or
``$bucketAuto`` / ``$sample``), which wire-compatible servers often lack (see
below). This connector plans its own splits and builds Arrow batches.

Parallelism. A plan step counts the matching documents and cuts the ``_id``
order into ``num_splits`` ranges (default: one per ``split_size`` documents)
with boundaries taken from a ``$sample`` of ``_id`` values (on MongoDB a cheap
random cursor) or, where ``$sample`` fails or the collection is small, the
exact quantiles from ``find().sort(_id).skip(k).limit(1)``, which every
server supports. A `beam.Reshuffle` spreads the ranges over workers. The first
range is open below and the last open above, so every document is in exactly
one range. Ranges are only used when the smallest and the largest ``_id`` have
the same BSON type bracket (MongoDB compares ``_id`` across types by bracket,
so a ``$gte``/``$lt`` range never matches another type); otherwise, for an
aggregation with a stage that looks at more than one document (``$group``,
``$sort``, ``$limit``...), or when the collection is small, one range reads
everything. An aggregation made only of per-document stages (``$match``,
``$project``, ``$addFields``/``$set``, ``$unset``, ``$unwind``,
``$replaceRoot``/``$replaceWith``) is split by prepending a ``$match`` on the
range.

Retries. A range read sorts by ``_id``; when the connection drops (network
error, primary step-down) it reconnects and resumes after the last ``_id`` it
read, up to ``max_retries`` times with backoff, so nothing is read twice. An
aggregation range that is not sorted by ``_id`` is re-run and the documents
already emitted are skipped by count (the server returns them in the same
order when the pipeline ends in a ``$sort`` on a unique key; say so in the
pipeline).

Incremental reads. With ``cursor_field`` (``updated_at``, ``_id``...) and a
``state`` store (`io_connectors._common.state`: a directory, ``s3://``, ``gs://`` or
``postgresql://``), the plan step reads the value last committed for this
server, collection, filter/pipeline and ``tenant``, and reads only the
documents with ``last - lag < cursor_field <= high``, where ``high`` is the
largest value at planning time (documents written later, above it, wait for
the next run instead of being read twice). It emits
``{"store", "key", "value": high}`` on ``IncrementalOutputs.cursors``, which
`pipelines.spotify_batch` commits only after the run's files are in place: a
run that fails is read again. ``lag`` (seconds for dates, units for numbers,
seconds of an ObjectId's creation time) re-reads a window for writes that
commit late; ``full_refresh`` reads everything and commits the new value.
The field should hold one type (dates, numbers, strings or ObjectIds); a
document without it (or null) is read by the first run only.

Types (BSON -> Arrow): ObjectId -> string (hex); Decimal128 -> decimal128
(``decimal='decimal128'``, the default; a value Arrow's decimal128 cannot
hold makes the column string) or string (``decimal='string'``); dates ->
timestamp[us, UTC]; int32/int64 -> int64; double -> float64; embedded
documents -> struct; arrays -> list; binary -> binary (UUID subtypes ->
string); null/missing -> null; regex, code, timestamps, Min/MaxKey ->
string. Documents without a field have null there. A column whose values do
not share one type (a number here, a string there) becomes a string column
(JSON text for documents and arrays), so no value is lost.

Provenance: ``__source`` is ``mongodb://HOSTS/DB.COLLECTION`` (never the
credentials), with ``@split-N`` for the N-th range when there are several;
``__row`` numbers the documents of a range from 1 in ``_id`` order.

Dead letters (``stage='read'``): ``bad_encoding`` for a document whose BSON
does not decode (invalid UTF-8 in a string), with the document decoded with
replacement characters as ``record`` and its ``_id`` in ``position``.

Errors. A wrong password, an unknown collection, a bad filter or pipeline
raise `MongoError` with one clear line that never contains the password;
``ReadFromMongo(...).check()`` runs the same checks before a pipeline starts.

Tested against FerretDB 1.24 (SQLite backend, installed from the Go module
proxy by scripts/services.d/mongodb.sh) because no MongoDB server installs
here. FerretDB's gaps that matter to this module (as of 1.24): no
``splitVector`` / ``$bucketAuto`` / ``$sample`` (hence our own splits), a
subset of aggregation stages (``$match``, ``$project``, ``$group``, ``$sort``,
``$limit``, ``$skip``, ``$unwind``, ``$count``, ``$addFields``/``$set``,
``$unset``, ``$collStats`` and their common operators; no ``$lookup``,
``$replaceRoot``/``$replaceWith``, ``$facet``, ``$graphLookup``, ``$sample``,
``$bucketAuto``, ``$merge``/``$out``), no transactions or snapshot reads
across ranges (a range sees the collection as of its own query, as with
MongoDB without a snapshot), no Decimal128 at all (it drops the connection on
a document holding one, so that mapping is tested on decoded values only),
strings with invalid UTF-8 stored with U+FFFD in place of the bad bytes
(so the ``bad_encoding`` dead letter never happens against it and is not
tested here), and authentication through its own SCRAM users (``--setup-username`` with
``--test-enable-new-auth``). FerretDB on SQLite is also slow for this workload: it pushes neither
``_id`` ranges nor sorts down to SQLite, so every query scans the
collection (about 3,000-5,000 documents/s here for a bare pymongo ``find``),
and parallel ranges do not read faster than one. A real MongoDB server runs
the same code, with ``_id`` ranges on its index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
import pyarrow as pa

from io_connectors import registry
from io_connectors._common.arrow import table_from_rows
from io_connectors._common.errors import ConnectorError
from io_connectors._common.masking import connection_url, mask_url, masked_message
from io_connectors._common.retry import Backoff
from transforms.coders import RecordBatchCoder  # noqa: F401  # registers the batch coder
from transforms.dead_letter import DEAD_LETTER, IncrementalOutputs, Outputs, dead_letter
from transforms.records import split_source, with_provenance

__all__ = ['MongoOptions', 'MongoError', 'ReadFromMongo']

_LOG = logging.getLogger(__name__)

STAGE = 'read'
URL_VARIABLE = 'MONGODB_URL'
# Waits before reconnecting a range read: 0.5 s doubling up to 30 s, jittered.
_RECONNECT_BACKOFF = Backoff(first_delay_s=0.5, max_delay_s=30.0, jitter=True)

# Aggregation stages that map each input document to zero or more output
# documents on its own, so the pipeline may run per _id range.
_PER_DOCUMENT_STAGES = frozenset(
  ['$match', '$project', '$addFields', '$set', '$unset', '$unwind', '$replaceRoot', '$replaceWith']
)
_DECIMAL_MODES = ('decimal128', 'string')


class MongoError(ConnectorError, RuntimeError):
  """A MongoDB failure explained in one line, without credentials."""


@dataclasses.dataclass(frozen=True)
class MongoOptions:
  """Options of `ReadFromMongo`.

  url: a mongodb:// or mongodb+srv:// URL; None reads $MONGODB_URL at
    pipeline construction.
  database: the database; None takes the URL's path.
  filter: a query document applied to the collection (find) or as a
    leading $match (aggregation).
  projection: a list of field names or a projection document (find only).
  pipeline: an aggregation pipeline (a list of stages) run instead of find.
  batch_size: rows per RecordBatch (at most); also the server's cursor batch.
  num_splits: ranges to read in parallel; 0 plans one per `split_size`
    matching documents.
  split_size: documents per range when num_splits is 0.
  decimal: 'decimal128' (Arrow decimal128) or 'string' for Decimal128 values.
  max_retries: reconnections per range after a network error.
  pool_size: connections per worker process (pymongo maxPoolSize).
  connect_timeout_ms / server_selection_timeout_ms / socket_timeout_ms:
    pymongo timeouts (socket: per operation; 0 = none).
  cursor_field / state / lag / full_refresh / tenant: incremental reads (see
    the module docstring): documents whose cursor_field is above the value
    last committed in the `state` store (`io_connectors._common.state`) for this
    collection, query and tenant, minus `lag` (seconds for dates, units for
    numbers); full_refresh reads everything and still commits the new value.
  """

  # Kept out of repr(): it may hold the password.
  url: Optional[str] = dataclasses.field(default=None, repr=False)
  database: Optional[str] = None
  filter: Optional[Dict[str, Any]] = None
  projection: Optional[Union[Sequence[str], Dict[str, Any]]] = None
  pipeline: Optional[Sequence[Dict[str, Any]]] = None
  batch_size: int = 10000
  num_splits: int = 0
  split_size: int = 100000
  decimal: str = 'decimal128'
  max_retries: int = 5
  pool_size: int = 4
  connect_timeout_ms: int = 10000
  server_selection_timeout_ms: int = 20000
  socket_timeout_ms: int = 300000
  cursor_field: Optional[str] = None
  state: Optional[str] = None
  lag: float = 0
  full_refresh: bool = False
  tenant: Optional[str] = None

  def __post_init__(self):
    url = connection_url(self.url, URL_VARIABLE, ('mongodb://', 'mongodb+srv://'), 'MongoDB')
    object.__setattr__(self, 'url', url)
    database = self.database or _url_database(url)
    if not database:
      raise ValueError(f'no database: give database= or put it in the URL path ({mask_url(url)})')
    object.__setattr__(self, 'database', database)
    for name in ('batch_size', 'split_size', 'pool_size'):
      _check_int(name, getattr(self, name), 1)
    for name in ('num_splits', 'max_retries', 'connect_timeout_ms', 'server_selection_timeout_ms', 'socket_timeout_ms'):
      _check_int(name, getattr(self, name), 0)
    if self.filter is not None and not isinstance(self.filter, dict):
      raise ValueError(f'filter must be a query document (mapping), got {type(self.filter).__name__}')
    projection = self.projection
    if projection is not None:
      if isinstance(projection, str) or not isinstance(projection, (list, tuple, dict)):
        raise ValueError(f'projection must be a list of field names or a mapping, got {projection!r}')
      if isinstance(projection, (list, tuple)):
        if not all(isinstance(f, str) and f for f in projection):
          raise ValueError(f'projection must list field names, got {projection!r}')
        projection = {f: 1 for f in projection}
      object.__setattr__(self, 'projection', dict(projection))
    if self.pipeline is not None:
      if self.projection is not None:
        raise ValueError('give either pipeline= or projection= (use a $project stage in the pipeline)')
      if not isinstance(self.pipeline, (list, tuple)) or not all(
        isinstance(stage, dict) and len(stage) == 1 for stage in self.pipeline
      ):
        raise ValueError('pipeline must be a list of stages, each a mapping with one $operator key')
      object.__setattr__(self, 'pipeline', [dict(stage) for stage in self.pipeline])
    if self.decimal not in _DECIMAL_MODES:
      raise ValueError(f'decimal must be one of {", ".join(_DECIMAL_MODES)}, got {self.decimal!r}')
    if self.cursor_field is not None:
      if not isinstance(self.cursor_field, str) or not self.cursor_field or self.cursor_field.startswith('$'):
        raise ValueError(f'cursor_field must be a field name, got {self.cursor_field!r}')
      if not self.state:
        raise ValueError('cursor_field needs a state store (state=: a directory, s3://, gs:// or postgresql:// URL)')
    if isinstance(self.lag, bool) or not isinstance(self.lag, (int, float)) or self.lag < 0:
      raise ValueError(f'lag must be a number >= 0, got {self.lag!r}')


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _url_database(url: str) -> Optional[str]:
  from pymongo import uri_parser

  try:
    return uri_parser.parse_uri(url, validate=False, connect_timeout=None)['database']
  except Exception:
    return None


def _hosts(url: str) -> str:
  rest = url.split('://', 1)[1]
  rest = rest.rsplit('@', 1)[-1] if '@' in rest.split('/', 1)[0] else rest
  return rest.split('/', 1)[0].split('?', 1)[0]


# ---------------------------------------------------------------------------
# Connection and errors


def _client(options: MongoOptions):
  import pymongo

  return pymongo.MongoClient(
    options.url,
    maxPoolSize=options.pool_size,
    connectTimeoutMS=options.connect_timeout_ms,
    serverSelectionTimeoutMS=options.server_selection_timeout_ms,
    socketTimeoutMS=options.socket_timeout_ms or None,
    retryReads=True,
    appname='spotify-ingest',
  )


def _explain(error: BaseException, options: MongoOptions, collection: str, what: str) -> MongoError:
  """A MongoError saying in one line what went wrong, without the password."""
  from pymongo import errors

  where = f'{mask_url(options.url)} ({options.database}.{collection})'
  detail = masked_message(str(error), options.url)
  if isinstance(error, errors.OperationFailure):
    code = getattr(error, 'code', None)
    if code == 18 or 'auth' in detail.lower():
      return MongoError(f'MongoDB authentication failed for {where}: check the user and password ({detail})')
    if code == 13:
      return MongoError(f'MongoDB user not authorised to {what} on {where}: {detail}')
    return MongoError(f'MongoDB rejected the {what} on {where} (code {code}): {detail}')
  if isinstance(error, errors.ConfigurationError):
    return MongoError(f'MongoDB URL {mask_url(options.url)} is not usable: {detail}')
  if isinstance(error, errors.ServerSelectionTimeoutError):
    return MongoError(
      f'MongoDB server not reachable at {mask_url(options.url)} '
      f'within {options.server_selection_timeout_ms} ms: {detail}'
    )
  if isinstance(error, errors.ConnectionFailure):
    return MongoError(f'MongoDB connection to {mask_url(options.url)} lost during {what}: {detail}')
  return MongoError(f'MongoDB {what} on {where} failed: {type(error).__name__}: {detail}')


def _retryable(error: BaseException) -> bool:
  from pymongo import errors

  if isinstance(error, errors.OperationFailure):
    return error.has_error_label('RetryableReadError') or getattr(error, 'code', None) in (
      6,
      7,
      89,
      91,
      189,
      9001,
      10107,
      11600,
      11602,
      13435,
      13436,
    )
  # ServerSelectionTimeoutError is a ConnectionFailure but has already waited
  # serverSelectionTimeoutMS: still worth a retry after a restart.
  return isinstance(error, (errors.AutoReconnect, errors.ConnectionFailure))


def _check_collection(client, options: MongoOptions, collection: str):
  try:
    names = client[options.database].list_collection_names()
  except Exception as e:
    raise _explain(e, options, collection, 'listing of collections') from None
  if collection not in names:
    known = ', '.join(sorted(names)[:20]) or 'none'
    raise MongoError(
      f'MongoDB collection {options.database}.{collection} does not exist on {mask_url(options.url)} '
      f'(collections there: {known})'
    )


# ---------------------------------------------------------------------------
# Planning


class _Split(NamedTuple):
  index: int
  count: int  # ranges in the plan
  lower: Any  # _id >= lower (None: open)
  upper: Any  # _id < upper (None: open)
  query: Optional[Dict[str, Any]] = None  # the documents' filter (incremental bounds included)


def _type_bracket(value) -> str:
  import bson

  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, (int, float, decimal.Decimal, bson.Int64, bson.Decimal128)):
    return 'number'
  if isinstance(value, str):
    return 'string'
  return type(value).__name__


def _splittable_pipeline(pipeline) -> bool:
  return all(next(iter(stage)) in _PER_DOCUMENT_STAGES for stage in pipeline or ())


def _range_query(split: _Split, after: Any = None) -> Dict[str, Any]:
  bounds = {}
  if after is not None:
    bounds['$gt'] = after
  elif split.lower is not None:
    bounds['$gte'] = split.lower
  if split.upper is not None:
    bounds['$lt'] = split.upper
  return {'_id': bounds} if bounds else {}


def _and(*queries) -> Dict[str, Any]:
  queries = [q for q in queries if q]
  if not queries:
    return {}
  return queries[0] if len(queries) == 1 else {'$and': queries}


# Sampled _ids per wanted range: enough for even ranges, few enough to be cheap.
_SAMPLES_PER_SPLIT = 20


def quantile_boundaries(ids: List[Any], wanted: int) -> Optional[List[Any]]:
  """Up to wanted-1 increasing _id boundaries cutting the sorted `ids` evenly; None if they do not sort."""
  try:
    ids = sorted(ids)
  except TypeError:
    return None
  boundaries = []
  for k in range(1, wanted):
    value = ids[k * len(ids) // wanted] if ids else None
    if value is not None and (not boundaries or value != boundaries[-1]):
      boundaries.append(value)
  return boundaries


def _sampled_boundaries(coll, query, total: int, wanted: int) -> Optional[List[Any]]:
  """Boundaries from a $sample of _ids (MongoDB: a random cursor, cheap); None where $sample fails."""
  from pymongo import errors

  if total < 4 * wanted * _SAMPLES_PER_SPLIT:
    return None  # small: exact quantiles by skip are cheap enough
  try:
    sample = [
      doc['_id']
      for doc in coll.aggregate(
        [{'$match': query}, {'$sample': {'size': wanted * _SAMPLES_PER_SPLIT}}, {'$project': {'_id': 1}}]
      )
    ]
  except errors.OperationFailure:
    return None
  if len({_type_bracket(i) for i in sample}) != 1:
    return None
  return quantile_boundaries(sample, wanted)


def plan_splits(client, options: MongoOptions, collection: str, query: Optional[dict] = None) -> List[_Split]:
  """The _id ranges a read of `query` (default: the filter) is cut into (one open range when it cannot be cut)."""
  query = options.filter if query is None else query
  single = [_Split(0, 1, None, None, query)]
  if options.num_splits == 1 or (options.pipeline is not None and not _splittable_pipeline(options.pipeline)):
    return single
  coll = client[options.database][collection]
  query = query or {}
  total = coll.count_documents(query)
  wanted = options.num_splits or -(-total // options.split_size)
  wanted = min(wanted, total)
  if wanted <= 1:
    return single
  ends = [next(iter(coll.find(query, {'_id': 1}).sort('_id', direction).limit(1)), None) for direction in (1, -1)]
  if ends[0] is None or ends[1] is None or _type_bracket(ends[0]['_id']) != _type_bracket(ends[1]['_id']):
    return single
  boundaries = _sampled_boundaries(coll, query, total, wanted)
  if boundaries is None:
    # The server has no $sample (FerretDB): exact quantiles, one skip query each.
    boundaries = []
    for k in range(1, wanted):
      doc = next(iter(coll.find(query, {'_id': 1}).sort('_id', 1).skip(k * total // wanted).limit(1)), None)
      if doc is not None and (not boundaries or doc['_id'] != boundaries[-1]):
        boundaries.append(doc['_id'])
  if not boundaries:
    return single
  edges = [None] + boundaries + [None]
  return [_Split(i, len(edges) - 1, edges[i], edges[i + 1], query) for i in range(len(edges) - 1)]


# ---------------------------------------------------------------------------
# Incremental reads

CURSORS = 'cursors'


def _cursor_value(value: Any) -> Any:
  """The JSON scalar a cursor value is committed as (io_connectors._common.state)."""
  import bson

  if isinstance(value, dt.datetime):
    value = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    return value.isoformat()
  if isinstance(value, bson.ObjectId):
    return str(value)
  if isinstance(value, bson.Int64):
    return int(value)
  if isinstance(value, (bool, int, float, str)):
    return value
  raise ValueError(
    f'cursor values of type {type(value).__name__} are not supported (dates, numbers, strings, ObjectIds)'
  )


def _lower_bound(last: Any, lag: float) -> Any:
  """The committed value as a query value, moved back by the lag window."""
  import bson

  if last is None:
    return None
  if isinstance(last, (int, float)) and not isinstance(last, bool):
    return last - (int(lag) if isinstance(last, int) and float(lag).is_integer() else lag)
  if isinstance(last, str):
    if bson.ObjectId.is_valid(last) and len(last) == 24:
      # ObjectIds start with their creation second: the lag moves that back.
      moment = bson.ObjectId(last).generation_time - dt.timedelta(seconds=lag)
      return bson.ObjectId.from_datetime(moment) if lag else bson.ObjectId(last)
    try:
      moment = dt.datetime.fromisoformat(last)
    except ValueError:
      return last  # a string cursor compares as text; no lag
    if moment.tzinfo is None:
      moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment - dt.timedelta(seconds=lag)
  return last


def _incremental_query(client, options: MongoOptions, collection: str):
  """(the filter bounded by the cursor window, the cursor update or None).

  The window is (last committed - lag, highest value now]: documents written
  while the run reads, above that high-water mark, are left for the next run
  rather than read twice.
  """
  from io_connectors._common import state

  field = options.cursor_field
  shape = json.dumps([options.filter, options.pipeline], sort_keys=True, default=str)
  digest = hashlib.sha256(shape.encode('utf-8')).hexdigest()[:12]
  key = state.cursor_key('mongodb', options.tenant, f'{_hosts(options.url)}/{options.database}.{collection}/{digest}')
  last = None if options.full_refresh else state.load_cursor(options.state, key)
  low = _lower_bound(last, options.lag)
  window = {field: {'$gt': low}} if low is not None else {}
  top = next(
    iter(client[options.database][collection].find(_and(options.filter, window), {field: 1}).sort(field, -1).limit(1)),
    None,
  )
  high = None if top is None else top.get(field)
  if high is None:
    # Nothing above the window (or no document has the field).
    return _and(options.filter, window, {field: {'$exists': True, '$ne': None}} if low is None else {}), None
  upper = {field: {'$lte': high}}
  if low is None:
    # The first run also reads the documents without the field, once.
    upper = {'$or': [upper, {field: None}]}
  update = {'store': options.state, 'key': key, 'value': _cursor_value(high)}
  return _and(options.filter, window, upper), update


# ---------------------------------------------------------------------------
# BSON -> Arrow


def _plain(value: Any, decimal_mode: str) -> Any:
  """A decoded BSON value as a value pyarrow converts (see the module docstring)."""
  import bson

  if isinstance(value, bson.Binary):  # a bytes subclass: checked first
    if value.subtype in (3, 4):
      try:
        return str(value.as_uuid(value.subtype))
      except ValueError:
        pass
    return bytes(value)
  if value is None or isinstance(value, (str, bool, int, float, bytes, dt.datetime)):
    if isinstance(value, dt.datetime) and value.tzinfo is None:
      return value.replace(tzinfo=dt.timezone.utc)
    return value
  if isinstance(value, dict):
    return {str(k): _plain(v, decimal_mode) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, decimal_mode) for v in value]
  if isinstance(value, bson.ObjectId):
    return str(value)
  if isinstance(value, bson.Decimal128):
    number = value.to_decimal()
    return str(number) if decimal_mode == 'string' or not number.is_finite() else number
  if isinstance(value, uuid.UUID):
    return str(value)
  if isinstance(value, bson.DatetimeMS):
    return str(value)
  return str(value)


# ---------------------------------------------------------------------------
# Reading


class _ReadSplitFn(beam.DoFn):
  """Reads one _id range into RecordBatches; bad documents to the dead-letter output."""

  def __init__(self, collection: str, options: MongoOptions):
    self._collection = collection
    self._options = options
    self._client = None

  def setup(self):
    self._client = _client(self._options)

  def teardown(self):
    if self._client is not None:
      self._client.close()

  def _cursor(self, split: _Split, after: Any, skip: int):
    from bson.raw_bson import RawBSONDocument

    options = self._options
    coll = self._client[options.database].get_collection(
      self._collection, codec_options=self._client.codec_options.with_options(document_class=RawBSONDocument)
    )
    query = _and(split.query, _range_query(split, after))
    if options.pipeline is None:
      return coll.find(query, options.projection, batch_size=options.batch_size).sort('_id', 1)
    stages = ([{'$match': query}] if query else []) + list(options.pipeline)
    if skip:
      stages.append({'$skip': skip})
    return coll.aggregate(stages, batchSize=options.batch_size)

  def process(self, split: _Split):
    import bson
    from bson.codec_options import CodecOptions

    options = self._options
    strict = CodecOptions(tz_aware=True, tzinfo=dt.timezone.utc, uuid_representation=4, datetime_conversion=4)
    lenient = strict.with_options(unicode_decode_error_handler='replace')
    source = split_source(
      f'mongodb://{_hosts(options.url)}/{options.database}.{self._collection}', split.index, split.count
    )
    sorted_by_id = options.pipeline is None
    rows: List[dict] = []
    first_row = 1
    emitted = 0  # documents read (rows + dead letters) so far
    last_id = None
    attempt = 0
    while True:
      try:
        cursor = self._cursor(split, last_id if sorted_by_id else None, 0 if sorted_by_id else emitted)
        for raw in cursor:
          try:
            doc = bson.decode(raw.raw, strict)
          except (bson.errors.InvalidBSON, UnicodeDecodeError) as e:
            doc = None
            readable = bson.decode(raw.raw, lenient)
            ident = _plain(readable.get('_id'), 'string')
            yield beam.pvalue.TaggedOutput(
              DEAD_LETTER,
              dead_letter(
                source,
                f'_id {ident}',
                'bad_encoding',
                record=_plain(readable, 'string'),
                detail=f'document does not decode: {str(e).splitlines()[0][:200]}',
                stage=STAGE,
              ),
            )
            last_id = readable.get('_id')
          if doc is not None:
            last_id = doc.get('_id')
            rows.append({k: _plain(v, options.decimal) for k, v in doc.items()})
          emitted += 1
          if len(rows) >= options.batch_size:
            yield self._batch(rows, source, first_row)
            first_row += len(rows)
            rows = []
          attempt = 0
        break
      except Exception as e:
        if not type(e).__module__.startswith(('pymongo', 'bson')):
          raise  # not the server's answer: a bug to see whole
        if not _retryable(e):
          raise _explain(e, options, self._collection, 'aggregation' if options.pipeline else 'query') from None
        attempt += 1
        if attempt > options.max_retries:
          raise _explain(e, options, self._collection, 'read') from None
        delay = _RECONNECT_BACKOFF.delay_s(attempt)
        _LOG.warning(
          'MongoDB read of %s lost its connection (%s); retry %d/%d in %.1fs after %d documents',
          source,
          masked_message(f'{type(e).__name__}: {e}', options.url),
          attempt,
          options.max_retries,
          delay,
          emitted,
        )
        time.sleep(delay)
    if rows:
      yield self._batch(rows, source, first_row)

  @staticmethod
  def _batch(rows: List[dict], source: str, first_row: int) -> pa.RecordBatch:
    table = table_from_rows(rows)
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.record_batch([], names=[])
    return with_provenance(batch, source, first_row)


class _PlanFn(beam.DoFn):
  def __init__(self, collection: str, options: MongoOptions):
    self._collection = collection
    self._options = options

  def process(self, unused_element):
    client = _client(self._options)
    update = None
    try:
      _check_collection(client, self._options, self._collection)
      try:
        query = None
        if self._options.cursor_field:
          query, update = _incremental_query(client, self._options, self._collection)
        splits = plan_splits(client, self._options, self._collection, query)
      except MongoError:
        raise
      except Exception as e:
        if type(e).__module__.startswith(('pymongo', 'bson')):
          raise _explain(e, self._options, self._collection, 'query') from None
        raise
    finally:
      client.close()
    _LOG.info('MongoDB %s.%s: %d range(s)', self._options.database, self._collection, len(splits))
    yield from splits
    if update is not None:
      yield beam.pvalue.TaggedOutput(CURSORS, update)


class ReadFromMongo(beam.PTransform):
  """A MongoDB collection (find or aggregation) as record batches; see the module docstring."""

  def __init__(self, collection: str, options: Optional[MongoOptions] = None):
    super().__init__()
    if not isinstance(collection, str) or not collection or '$' in collection or '\0' in collection:
      raise ValueError(f'collection must be a non-empty name without $ or NUL, got {collection!r}')
    if options is not None and not isinstance(options, MongoOptions):
      raise ValueError(f'options must be a MongoOptions, got {type(options).__name__}')
    self._collection = collection
    self._options = options or MongoOptions()

  def check(self) -> str:
    """Connects, authenticates, finds the collection and runs the query once.

    Returns a one-line description; raises MongoError saying what is wrong.
    """
    options = self._options
    client = _client(options)
    try:
      try:
        client.admin.command('ping')
      except Exception as e:
        raise _explain(e, options, self._collection, 'ping') from None
      _check_collection(client, options, self._collection)
      coll = client[options.database][self._collection]
      try:
        if options.pipeline is None:
          next(iter(coll.find(options.filter or {}, options.projection).limit(1)), None)
        else:
          stages = ([{'$match': options.filter}] if options.filter else []) + list(options.pipeline) + [{'$limit': 1}]
          list(coll.aggregate(stages))
      except Exception as e:
        raise _explain(e, options, self._collection, 'aggregation' if options.pipeline else 'query') from None
    finally:
      client.close()
    return f'MongoDB {mask_url(options.url)}: {options.database}.{self._collection} readable'

  def expand(self, pbegin):
    planned = (
      pbegin
      | 'Start' >> beam.Create([None])
      | 'Plan' >> beam.ParDo(_PlanFn(self._collection, self._options)).with_outputs(CURSORS, main='splits')
    )
    # Spreads the ranges over the workers.
    splits = planned.splits | 'Spread' >> beam.Reshuffle()
    result = splits | 'Read' >> beam.ParDo(_ReadSplitFn(self._collection, self._options)).with_outputs(
      DEAD_LETTER, main='records'
    )
    records, dead_letters = result.records, result[DEAD_LETTER]
    # Typed outputs pick RecordBatchCoder over pickling.
    records.element_type = pa.RecordBatch
    dead_letters.element_type = Dict[str, Any]
    if self._options.cursor_field:
      return IncrementalOutputs(records, dead_letters, planned[CURSORS])
    return Outputs(records, dead_letters)


@registry.register('mongodb', 'MongoDB collection or aggregation (MONGODB_URL; FerretDB-compatible)')
def _mongodb(config):
  config = dict(config)
  collection = config.pop('collection', None)
  if not collection:
    raise ValueError('a mongodb source needs "collection"')
  registry.check_keys(config, MongoOptions, ['collection'], noun='mongodb option')
  return ReadFromMongo(collection, MongoOptions(**config))
