"""The PII master key never travels with a job: the graphs of the real batch and streaming jobs hold a reference.

Builds each job as `run` builds it (without running it), serializes it with
`to_runner_api()` and searches every byte, and every payload Beam pickled and
compressed inside it (DoFns, CombineFns, coders), for the key: raw, hex (both
cases) and base64 (standard and URL-safe).
"""

import base64
import binascii
import bz2
import os
import re
import zlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import spotify_batch, spotify_streaming
from pipelines.config import resolve
from pipelines.streaming_options import SpotifyStreamingOptions
from transforms.pii import PII_KEY_ENV, KeyRef, key_ref

KEY = bytes(range(7, 39))  # 32 bytes, easy to recognise
_BASE64_RUN = re.compile(rb'[A-Za-z0-9+/_-]{24,}={0,2}')


def _needles(material: bytes):
  return [
    material,
    material.hex().encode(),
    material.hex().upper().encode(),
    base64.b64encode(material),
    base64.urlsafe_b64encode(material),
    base64.b64encode(material).rstrip(b'='),
  ]


def _blobs(data: bytes, depth: int = 0):
  """`data` and every base64 + bz2/zlib payload inside it (Beam's pickled objects), recursively."""
  yield data
  if depth > 3:
    return
  for match in _BASE64_RUN.finditer(data):
    try:
      raw = base64.b64decode(
        match.group(0) + b'=' * (-len(match.group(0)) % 4),
        altchars=b'-_' if re.search(rb'[-_]', match.group(0)) else None,
      )
    except (binascii.Error, ValueError):
      continue
    for decompress in (bz2.decompress, zlib.decompress):
      try:
        inner = decompress(raw)
      except (OSError, ValueError, zlib.error, EOFError):
        continue
      yield from _blobs(inner, depth + 1)


def assert_no_key_material(pipeline: beam.Pipeline, material: bytes):
  proto = pipeline.to_runner_api()
  serialized = proto.SerializeToString()
  payloads = [serialized] + [t.spec.payload for t in proto.components.transforms.values()]
  blobs = [blob for payload in payloads for blob in _blobs(payload)]
  # The search does look inside Beam's pickles (else it would prove little).
  assert len(blobs) > len(payloads) + 10
  assert any(b'_RedactBatchFn' in blob for blob in blobs) and any(b'_RedactDeadLetterFn' in blob for blob in blobs)
  for blob in blobs:
    for needle in _needles(material):
      assert needle not in blob


@pytest.fixture
def key_in_env(monkeypatch):
  monkeypatch.setenv(PII_KEY_ENV, KEY.hex())


@pytest.fixture
def csv_input(tmp_path):
  path = tmp_path / 'events.csv'
  path.write_text(
    'event_id,user_id,track_id,played_at,ms_played\ne1,u1,4uLU6hMCjMI75M1A2tKUQC,2024-05-01T10:00:00Z,1\n'
  )
  return str(path)


def _batch_pipeline(config, ref):
  pipeline = beam.Pipeline(options=PipelineOptions([]))
  info = {'run_id': 'r1', 'pii': {'redacted': True, 'ephemeral_key': ref.ephemeral}, 'schema_baseline': None}
  spotify_batch.build(pipeline, config, ref, info, None)
  return pipeline


def test_batch_job_graph_holds_a_reference_not_the_key(key_in_env, csv_input, tmp_path):
  config = resolve({'input': csv_input, 'tenant_id': 'acme', 'output': str(tmp_path / 'out')})
  ref = key_ref(config.pii_key_file)
  assert ref == KeyRef('env', PII_KEY_ENV)
  assert_no_key_material(_batch_pipeline(config, ref), KEY)


def test_batch_job_graph_with_a_key_file_or_the_demo_s_ephemeral_key(csv_input, tmp_path, monkeypatch):
  monkeypatch.delenv(PII_KEY_ENV, raising=False)
  key_file = tmp_path / 'pii.key'
  key_file.write_text(base64.b64encode(KEY).decode())
  config = resolve(
    {'input': csv_input, 'tenant_id': 'acme', 'output': str(tmp_path / 'out'), 'pii_key_file': str(key_file)}
  )
  assert_no_key_material(_batch_pipeline(config, key_ref(config.pii_key_file)), KEY)
  # The demo (no key at all): a random key in a private file, referenced by path.
  ephemeral = key_ref(None, environ={}, allow_ephemeral=True)
  with open(ephemeral.name, encoding='ascii') as f:
    material = bytes.fromhex(f.read())
  assert_no_key_material(_batch_pipeline(config, ephemeral), material)


def test_streaming_job_graph_holds_a_reference_not_the_key(key_in_env, tmp_path):
  argv = [
    '--source',
    'kafka',
    '--bootstrap_servers',
    '127.0.0.1:9092',
    '--topic',
    'plays',
    '--group_id',
    'g',
    '--tenant_id',
    'acme',
    '--output',
    str(tmp_path / 'out'),
    '--streaming',
  ]
  options = PipelineOptions(argv)
  pipeline = beam.Pipeline(options=options)
  spotify_streaming.build(pipeline, options.view_as(SpotifyStreamingOptions), key_ref())
  assert_no_key_material(pipeline, KEY)


def test_the_search_finds_a_key_that_is_in_the_graph():
  """The check above can fail: a DoFn holding the key's bytes is caught."""

  class _Leaky(beam.DoFn):
    def __init__(self, material):
      self._material = material

    def process(self, element):
      yield element

  for material in (KEY, KEY.hex(), base64.b64encode(KEY).decode()):
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    _ = pipeline | beam.Create([1]) | beam.ParDo(_Leaky(material))
    proto_blobs = [b for t in pipeline.to_runner_api().components.transforms.values() for b in _blobs(t.spec.payload)]
    assert any(needle in blob for blob in proto_blobs for needle in _needles(KEY)), material


def test_workers_fail_clearly_when_the_reference_cannot_be_resolved(tmp_path, monkeypatch):
  from transforms.pii.transforms import _RedactBatchFn
  from transforms.pii import PiiOptions, PiiKeyError
  from transforms.entities import ListeningEvent

  monkeypatch.delenv(PII_KEY_ENV, raising=False)
  fn = _RedactBatchFn(ListeningEvent, KeyRef('env', PII_KEY_ENV), PiiOptions())
  with pytest.raises(PiiKeyError, match='PII_MASTER_KEY is not set'):
    fn.setup()
  fn = _RedactBatchFn(ListeningEvent, KeyRef('file', os.path.join(str(tmp_path), 'gone.key')), PiiOptions())
  with pytest.raises(PiiKeyError, match='gone.key'):
    fn.setup()


def test_a_secret_manager_reference_holds_the_name_and_workers_read_the_secret(csv_input, tmp_path, monkeypatch):
  """The Flex Template's --pii_key_secret: the graph names the secret version; each worker reads it in setup."""
  from transforms.pii import keys

  name = 'projects/p/secrets/pii-master-key/versions/3'
  reads = []

  def read_secret(version):  # Secret Manager itself is not reachable from tests
    reads.append(version)
    return KEY.hex()

  monkeypatch.setattr(keys, '_read_secret', read_secret)
  monkeypatch.delenv(PII_KEY_ENV, raising=False)
  config = resolve({'input': csv_input, 'tenant_id': 'acme', 'output': str(tmp_path / 'out')})
  ref = key_ref(config.pii_key_file, name, environ={})
  assert ref == KeyRef('gcp_secret', name) and reads == [name]  # checked once before the run
  pipeline = _batch_pipeline(config, ref)
  assert_no_key_material(pipeline, KEY)
  assert name.encode() in b''.join(
    b for t in pipeline.to_runner_api().components.transforms.values() for b in _blobs(t.spec.payload)
  )
  assert ref.load().tenant_key('acme') == keys.MasterKey(KEY).tenant_key('acme') and len(reads) == 2


def test_a_loaded_master_key_is_carried_as_the_reference_it_came_from(key_in_env, tmp_path):
  """RedactPII(master_key=load_master_key()) keeps working: the graph holds where the key came from."""
  from transforms.pii import RedactDeadLetters, RedactPII, load_master_key

  loaded = load_master_key()
  assert loaded.ref == KeyRef('env', PII_KEY_ENV)
  pipeline = beam.Pipeline(options=PipelineOptions([]))
  batches = pipeline | beam.Create([1])
  _ = batches | RedactPII('listening_event', master_key=loaded)
  _ = batches | 'Letters' >> RedactDeadLetters('listening_event', master_key=loaded)
  assert_no_key_material(pipeline, KEY)
  key_file = tmp_path / 'pii.key'
  key_file.write_text(KEY.hex())
  assert load_master_key(key_file=str(key_file)).ref == KeyRef('file', str(key_file))
  ephemeral = load_master_key(environ={}, allow_ephemeral=True)
  assert ephemeral.ephemeral and ephemeral.ref.kind == 'file' and ephemeral.ref.ephemeral
