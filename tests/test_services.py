"""The local object stores work through Beam's own filesystems, unmocked.

If these fail, every s3:// or gs:// test fails for the same reason: fix the
fixtures in conftest.py or scripts/services.sh first.
"""

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import pipeline_options


def test_filesystems_write_match_read_delete(object_store_env):
  FileSystems.set_options(pipeline_options(object_store_env.beam_args))
  uploaded = object_store_env.upload('in/uploaded.txt', b'from the client library\n')
  written = object_store_env.url('in/written.txt')
  with FileSystems.create(written) as f:
    f.write(b'through Beam\n' * 1000)

  matched = FileSystems.match([object_store_env.url('in/*.txt')])[0].metadata_list
  assert sorted((m.path, m.size_in_bytes) for m in matched) == [(uploaded, 24), (written, 13000)]
  with FileSystems.open(uploaded) as f:
    assert f.read() == b'from the client library\n'
  with FileSystems.open(written) as f:
    assert f.read() == b'through Beam\n' * 1000

  FileSystems.delete([written])
  assert not FileSystems.exists(written)
  assert FileSystems.exists(uploaded)


def test_pipeline_reads_and_writes(object_store_env):
  object_store_env.upload('in/a.txt', b'1\n2\n')
  object_store_env.upload('in/b.txt', b'3\n')
  options = pipeline_options(object_store_env.beam_args)

  with TestPipeline(options=options) as p:
    lines = p | beam.io.ReadFromText(object_store_env.url('in/*.txt'))
    assert_that(lines, equal_to(['1', '2', '3']))
    _ = (
      lines
      | beam.Map(lambda n: str(int(n) * 10))
      | beam.io.WriteToText(object_store_env.url('out/tens'), shard_name_template='', file_name_suffix='.txt')
    )

  with FileSystems.open(object_store_env.url('out/tens.txt')) as f:
    assert sorted(f.read().decode().split()) == ['10', '20', '30']
