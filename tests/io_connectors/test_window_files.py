"""The streaming window files: temporaries of crashed writers are swept, live ones kept (local, S3, GCS)."""

import os
import time

import pytest
from apache_beam.io.filesystems import FileSystems

from io_connectors.sinks.window_files import sweep_temporaries, write_atomically
from tests.conftest import pipeline_options


@pytest.fixture
def output(store_output):
  return store_output


def _leave_orphan(path):
  """What a writer that died between its write and its rename leaves."""
  directory, name = path.rsplit('/', 1)
  if '://' not in directory:
    os.makedirs(directory, exist_ok=True)
  orphan = f'{directory}/.tmp-0123456789abcdef-{name}'
  with FileSystems.create(orphan) as handle:
    handle.write(b'half')
  return orphan


def test_orphaned_temporaries_are_swept_and_written_files_kept(output):
  final = f'{output}/data/tenant=acme/window_start=20240301T1200Z/part-000.parquet'
  write_atomically(final, b'whole')
  orphan = _leave_orphan(final)
  assert sweep_temporaries(output) == []  # young: it could be a live write
  time.sleep(1.1)
  assert sweep_temporaries(output, older_than_s=1) == [orphan]
  assert not FileSystems.exists(orphan)
  assert FileSystems.exists(final)
  with FileSystems.open(final) as handle:
    assert handle.read() == b'whole'


def test_sweeping_an_output_that_does_not_exist_yet_is_a_no_op(tmp_path):
  FileSystems.set_options(pipeline_options())
  assert sweep_temporaries(str(tmp_path / 'nothing')) == []
