"""io_connectors._common.state: cursor stores on a local directory, S3 (moto), GCS (emulator) and PostgreSQL."""

from __future__ import annotations

import json
import os

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors._common import state
from io_connectors._common.masking import mask_url


def _round_trip(store):
  acme = state.cursor_key('postgres', 'acme', 'db/public.plays')
  beatbox = state.cursor_key('postgres', 'beatbox', 'db/public.plays')
  assert state.load_cursor(store, acme) is None
  state.commit_cursors(
    [
      {'store': store, 'key': acme, 'value': '2024-06-01T00:00:00+00:00'},
      # Several updates for one key (one per split, say): the largest wins.
      {'store': store, 'key': acme, 'value': '2024-06-03T00:00:00+00:00'},
      {'store': store, 'key': acme, 'value': '2024-06-02T00:00:00+00:00'},
      {'store': store, 'key': beatbox, 'value': 41},
    ]
  )
  assert state.load_cursor(store, acme) == '2024-06-03T00:00:00+00:00'
  assert state.load_cursor(store, beatbox) == 41
  state.commit_cursors([{'store': store, 'key': beatbox, 'value': 42}])
  assert state.load_cursor(store, beatbox) == 42
  assert state.load_cursor(store, acme) == '2024-06-03T00:00:00+00:00'


def test_local_directory_one_json_file_per_key_renamed_into_place(tmp_path):
  store = str(tmp_path / 'state')
  _round_trip(store)
  files = sorted(os.listdir(store))
  # No temporary file left behind; flat names.
  assert files == ['postgres=2Facme=2Fdb=2Fpublic.plays.json', 'postgres=2Fbeatbox=2Fdb=2Fpublic.plays.json']
  doc = json.loads((tmp_path / 'state' / files[0]).read_text())
  assert set(doc) == {'key', 'value', 'committed_at'}
  assert state.load_cursor('file://' + store, state.cursor_key('postgres', 'beatbox', 'db/public.plays')) == 42


def test_a_corrupt_cursor_file_is_a_clear_error(tmp_path):
  key = state.cursor_key('postgres', None, 'db/t')
  state.commit_cursors([{'store': str(tmp_path), 'key': key, 'value': 1}])
  (tmp_path / os.listdir(tmp_path)[0]).write_text('{not json')
  with pytest.raises(state.StateError, match='not valid JSON'):
    state.load_cursor(str(tmp_path), key)


def test_object_stores(object_store_env):
  FileSystems.set_options(PipelineOptions(object_store_env.beam_args))
  _round_trip(object_store_env.url('state'))


def test_postgresql_table_store(pg, postgres_url):
  store = f'{postgres_url}?table={pg.name}.cursors'
  _round_trip(store)
  rows = pg.execute(f'SELECT key, value FROM {pg.name}.cursors ORDER BY key').fetchall()
  assert [r[0] for r in rows] == ['postgres/acme/db/public.plays', 'postgres/beatbox/db/public.plays']
  assert rows[1][1]['value'] == 42


def test_errors_name_the_store_without_its_password(postgres_url):
  bad = postgres_url.replace(':music-test-password@', ':secret-pw@')
  with pytest.raises(state.StateError) as error:
    state.load_cursor(bad, 'k')
  assert 'secret-pw' not in str(error.value) and 'music:***@127.0.0.1' in str(error.value)
  with pytest.raises(state.StateError, match='not a \\[schema.\\]name'):
    state.load_cursor(postgres_url + '?table=x;drop', 'k')
  with pytest.raises(state.StateError, match='lacks'):
    state.commit_cursors([{'store': 'x', 'key': 'k'}])
  assert mask_url('postgresql://u:p@h:1/db') == 'postgresql://u:***@h:1/db'
