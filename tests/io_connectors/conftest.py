"""Fixtures of the sink tests."""

import pytest
from apache_beam.io.filesystems import FileSystems

from tests.conftest import pipeline_options


@pytest.fixture(params=['local', 's3', 'gcs'])
def store_output(request, tmp_path):
  """An output location on local disk, then moto S3, then the GCS emulator, with Beam's FileSystems set for it."""
  if request.param == 'local':
    FileSystems.set_options(pipeline_options())
    yield str(tmp_path / 'out')
    return
  env = request.getfixturevalue(f'{request.param}_env')
  FileSystems.set_options(pipeline_options(env.beam_args))
  yield env.url('out')
  FileSystems.set_options(pipeline_options())
