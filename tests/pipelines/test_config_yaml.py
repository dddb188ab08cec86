"""What a --config file's YAML says is what the run does: no key silently dropped, no id silently retyped."""

import codecs
import re

import pytest

from pipelines.config import ConfigError, load_yaml, resolve


def _write(tmp_path, text, name='run.yaml'):
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return str(path)


# ----- duplicate keys: YAML would keep the last one and drop the other without a word -----


@pytest.mark.parametrize(
  'text, key_path, lines',
  [
    ('tenant_id: acme\ninput: a.csv\ntenant_id: beatbox\n', 'tenant_id', '1 and 3'),
    (
      'sources:\n  - {type: csv, input: a.csv, tenant_id: acme}\n'
      '  - type: csv\n    input: b.csv\n    tenant_id: acme\n    input: c.csv\n',
      r'sources\[1\]\.input',
      '4 and 6',
    ),
    ('crypto_shredding:\n  tenants: [acme]\n  tenants: "*"\nsources: []\n', r'crypto_shredding\.tenants', '2 and 3'),
    ('{"tenant_id": "acme", "input": "a.csv", "tenant_id": "beatbox"}', 'tenant_id', '1, columns 2 and 41'),
    ('tenant_id: acme\n"tenant_id": beatbox\ninput: a.csv\n', 'tenant_id', '1 and 2'),
  ],
)
def test_a_key_written_twice_is_an_error_naming_the_file_the_key_path_and_both_lines(tmp_path, text, key_path, lines):
  path = _write(tmp_path, text)
  with pytest.raises(ConfigError, match=rf'{path}: {key_path} is given twice \(lines? {lines}\)'):
    load_yaml(path)


def test_a_merge_key_is_not_a_duplicate_and_the_mapping_s_own_key_wins(tmp_path):
  path = _write(
    tmp_path,
    'sources:\n  - &acme {type: csv, input: a.csv, tenant_id: acme}\n  - <<: *acme\n    input: b.csv\n',
  )
  sources = load_yaml(path)['sources']
  assert sources[1] == {'type': 'csv', 'input': 'b.csv', 'tenant_id': 'acme'}


def test_an_alias_to_its_own_ancestor_is_read_without_looping(tmp_path):
  path = _write(tmp_path, 'sources: &s [{type: csv, input: a.csv, tenant_id: acme, nested: *s}]\n')
  assert load_yaml(path)['sources'][0]['type'] == 'csv'


# ----- text keys keep the text as written: YAML 1.1 reads 010 as 8, 12:30 as 750, no as false -----


@pytest.mark.parametrize('written', ['010', '0010', '12:30', '0b101', '0x1F', 'no', 'on', '1e3', '2024.10', '1_000'])
def test_a_tenant_id_is_the_text_written_not_what_yaml_1_1_makes_of_it(tmp_path, written):
  path = _write(tmp_path, f'tenant_id: {written}\ninput: a.csv\n')
  values = load_yaml(path)
  assert values['tenant_id'] == written
  if re.fullmatch(r'[a-z0-9][a-z0-9_-]*', written):  # a valid tenant id: the run's tenant
    assert resolve({}, values).sources[0]['tenant_id'] == written


@pytest.mark.parametrize('key', ['tenant_id', 'tenant_field', 'entity', 'input'])
def test_a_source_s_text_keys_keep_the_text_written(tmp_path, key):
  source = dict({'type': 'csv', 'input': 'a.csv', 'tenant_id': 'acme'}, **{key: '010'})
  path = _write(tmp_path, 'sources:\n  - {' + ', '.join(f'{k}: {v}' for k, v in source.items()) + '}\n')
  assert load_yaml(path)['sources'][0][key] == '010'


@pytest.mark.parametrize('key, written', [('run_id', '2024.10'), ('run_id', '20240501'), ('output', '010')])
def test_other_text_keys_keep_the_text_written(tmp_path, key, written):
  path = _write(tmp_path, f'tenant_id: acme\ninput: a.csv\n{key}: {written}\n')
  assert load_yaml(path)[key] == written


def test_ids_with_leading_zeros_anywhere_in_a_source_stay_text(tmp_path):
  path = _write(tmp_path, 'sources:\n  - {type: lastfm, users: [007, 0123, 12:30], tenant_id: acme}\n')
  assert load_yaml(path)['sources'][0]['users'] == ['007', '0123', '12:30']


@pytest.mark.parametrize('written, expected', [('010', 10), ('1_000', 1000), ('64', 64)])
def test_integer_keys_still_read_integers(tmp_path, written, expected):
  path = _write(tmp_path, f'tenant_id: acme\ninput: a.csv\nbatch_size: {written}\n')
  assert resolve({}, load_yaml(path)).batch_size == expected


def test_numbers_and_booleans_of_a_source_are_still_typed(tmp_path):
  path = _write(
    tmp_path, 'sources:\n  - {type: csv, input: a.csv, tenant_id: acme, batch_size: 500, header: yes, x: 1.5}\n'
  )
  source = load_yaml(path)['sources'][0]
  assert source['batch_size'] == 500 and source['header'] is True and source['x'] == 1.5


def test_a_null_text_key_is_still_unset(tmp_path):
  path = _write(tmp_path, 'tenant_id: acme\ninput: a.csv\ntenant_field: ~\nrun_id:\n')
  values = load_yaml(path)
  assert values['tenant_field'] is None and values['run_id'] is None


# ----- encodings: YAML files may be UTF-8 (with or without a BOM), UTF-16 or UTF-32 with a BOM -----


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16', 'utf-16-le', 'utf-16-be', 'utf-32', 'utf-32-be'])
def test_a_config_with_a_byte_order_mark_is_read_in_its_encoding(tmp_path, encoding):
  path = tmp_path / 'run.yaml'
  text = 'tenant_id: acme\ninput: données/*.csv\n'
  data = text.encode(encoding)
  if encoding in ('utf-16-le', 'utf-16-be'):
    data = (codecs.BOM_UTF16_LE if encoding.endswith('le') else codecs.BOM_UTF16_BE) + data
  if encoding == 'utf-32-be':
    data = codecs.BOM_UTF32_BE + data
  path.write_bytes(data)
  assert load_yaml(str(path)) == {'tenant_id': 'acme', 'input': 'données/*.csv'}


def test_a_config_that_is_not_utf_8_names_the_file_and_the_byte(tmp_path):
  path = tmp_path / 'run.yaml'
  path.write_bytes('tenant_id: acme\ninput: données.csv\n'.encode('cp1252'))
  with pytest.raises(ConfigError, match=rf'config {path}: not UTF-8 text: byte 0xe9 at line 2'):
    load_yaml(str(path))


# ----- every mistake names the file and the key path, before the run starts -----


def test_an_unknown_key_names_the_nearest_known_one(tmp_path):
  path = _write(tmp_path, 'tenant_idd: acme\ninput: a.csv\n')
  with pytest.raises(ConfigError, match=rf'config {path}: unknown key\(s\) tenant_idd \(did you mean tenant_id\?\)'):
    load_yaml(path)


def _main(tmp_path, capsys, text):
  from pipelines import spotify_batch

  (tmp_path / 'a.csv').write_text('event_id,user_id,track_id,played_at,ms_played\ne1,u1,t1,2024-06-01T12:00:00Z,1\n')
  path = _write(tmp_path, text.replace('DIR', str(tmp_path)))
  out = tmp_path / 'out'
  code = spotify_batch.main(['--config', path, '--output', str(out), '--keep_pii'])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
  return path, out, lines[0], err


@pytest.mark.parametrize(
  'text, said',
  [
    (
      'sources:\n  - {type: csv, input: DIR/a.csv, tenant_id: acme}\n'
      '  - {type: csv, input: DIR/a.csv, tenant_id: beatbox, delimter: ";"}\n',
      r"sources\[1\]: source of type 'csv': unknown option\(s\) delimter \(did you mean delimiter\?\)",
    ),
    (
      'sources:\n  - {type: csv, input: DIR/a.csv, tenant_id: acme}\n  - {type: csvv, input: DIR/a.csv, tenant_id: b}\n',
      r"sources\[1\]: unknown source type 'csvv'; known types: .*\bcsv\b",
    ),
    (
      'sources:\n  - {type: csv, input: DIR/a.csv, tenant_id: acme}\n  - {type: csv, input: DIR/a.csv}\n',
      r'sources\[1\]: give exactly one of tenant_id or tenant_field',
    ),
    (
      'sources:\n  - {type: csv, input: DIR/none-*.csv, tenant_id: acme}\n',
      r'sources\[0\]\.input .*none-\*\.csv: no file',
    ),
    ('sources:\n  - {input: DIR/a.csv, tenant_id: acme}\n', r'sources\[0\] has no "type"'),
    ('sources: {type: csv}\n', r'"sources:" must be a list of mappings'),
    ('', r'no input'),
  ],
)
def test_a_source_s_mistake_names_the_file_and_the_source_and_stops_before_the_run(tmp_path, capsys, text, said):
  path, out, line, err = _main(tmp_path, capsys, text)
  assert re.search(rf'^error: config {re.escape(path)}: {said}', line), line
  assert not (out / '_lock.json').exists() and not (out / '_runs').exists()
  assert ' source(s) -> ' not in err  # the run never started: no lock, no lineage START, no audit entry


def test_a_source_s_secret_never_shows_in_its_error(tmp_path, capsys):
  text = (
    'sources:\n  - {type: postgres, table: plays, tenant_id: acme, url: "postgresql://bob:Hunter2-x@db/m",'
    ' batch_size: "Hunter2-x"}\n'
  )
  _, _, line, err = _main(tmp_path, capsys, text)
  assert 'sources[0]' in line and 'Hunter2-x' not in err


def test_a_pattern_given_by_flag_is_named_as_the_flag(tmp_path, capsys):
  from pipelines import spotify_batch

  pattern = str(tmp_path / 'dröp dir' / '*.csv')
  code = spotify_batch.main(
    ['--input', pattern, '--tenant_id', 'acme', '--output', str(tmp_path / 'out'), '--keep_pii']
  )
  err = capsys.readouterr().err
  assert code == 2 and f'error: --input {pattern}: no file matches' in err, err


# ----- a flag given on the command line wins over the file, also over the key it excludes -----


@pytest.mark.parametrize(
  'flags, file_values, tenant_id, tenant_field',
  [
    ({'tenant_id': 'acme'}, {'tenant_field': 'tenant_id'}, 'acme', None),
    ({'tenant_field': 'tid'}, {'tenant_id': 'acme'}, None, 'tid'),
    ({'tenant_id': 'acme'}, {'tenant_id': 'beatbox'}, 'acme', None),
  ],
)
def test_a_tenant_flag_wins_over_the_file_s_tenant_setting_of_either_kind(flags, file_values, tenant_id, tenant_field):
  source = resolve(flags, dict(file_values, input='a.csv'), config_file='run.yaml').sources[0]
  assert (source['tenant_id'], source['tenant_field']) == (tenant_id, tenant_field)


def test_a_source_s_own_tenant_still_wins_over_the_flag():
  sources = [{'type': 'csv', 'input': 'a.csv', 'tenant_field': 'tid'}, {'type': 'csv', 'input': 'b.csv'}]
  config = resolve({'tenant_id': 'acme'}, {'tenant_field': 'x', 'sources': sources}, config_file='run.yaml')
  assert [(s['tenant_id'], s['tenant_field']) for s in config.sources] == [(None, 'tid'), ('acme', None)]


def test_the_file_s_input_is_named_as_the_file_s_key_not_as_the_flag():
  with pytest.raises(ConfigError, match=r'^config run\.yaml: input: give exactly one of tenant_id or tenant_field'):
    resolve({}, {'input': 'a.csv'}, config_file='run.yaml')
  with pytest.raises(ConfigError, match=r'^--input: give exactly one of tenant_id or tenant_field'):
    resolve({'input': 'a.csv'}, {}, config_file='run.yaml')


@pytest.mark.parametrize('key', ['type', 'entity', 'tenant_id', 'tenant_field'])
@pytest.mark.parametrize('value', [['csv'], {'name': 'csv'}, 7, True])
def test_a_source_s_pipeline_key_of_another_type_than_text_is_named(key, value):
  source = dict({'type': 'csv', 'input': 'a.csv', 'tenant_id': 'acme'}, **{key: value})
  if key == 'tenant_field':
    del source['tenant_id']
  with pytest.raises(ConfigError, match=rf'^config run\.yaml: sources\[0\]\.{key} must be text'):
    resolve({}, {'sources': [source]}, config_file='run.yaml')


@pytest.mark.parametrize('kind', [['csv'], {'csv': 1}, 7])
def test_a_type_that_is_not_a_name_is_a_config_error_listing_the_known_ones(kind):
  from io_connectors import registry

  with pytest.raises(ConfigError, match='known types: .*csv'):
    registry.build({'type': kind, 'input': 'a.csv'})
  assert registry.default_entity({'type': kind}) is None
