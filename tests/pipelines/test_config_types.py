"""YAML --config values are typed like the flags: booleans, integers, choices, strings; unknown keys stop the run."""

import pytest
import yaml

from pipelines import spotify_batch
from pipelines.config import ConfigError, load_yaml, resolve


def _config(tmp_path, **values):
  path = tmp_path / 'run.yaml'
  path.write_text(yaml.safe_dump(dict({'input': str(tmp_path / '*.csv'), 'tenant_id': 'acme'}, **values)))
  return str(path)


@pytest.mark.parametrize('written', ['false', 'False', 'no', 'off', '0', 'n', 'f', False, 0])
def test_false_spellings_keep_redaction_on(tmp_path, written):
  config = resolve({}, load_yaml(_config(tmp_path, keep_pii=written)))
  assert config.keep_pii is False


@pytest.mark.parametrize('written', ['true', 'TRUE', 'yes', 'on', '1', True, 1])
def test_true_spellings_turn_redaction_off(tmp_path, written):
  assert resolve({}, load_yaml(_config(tmp_path, keep_pii=written))).keep_pii is True


@pytest.mark.parametrize('written', ['perhaps', 2, 'disabled', [True], {'x': 1}])
def test_a_boolean_key_rejects_anything_else_naming_the_key(tmp_path, written):
  with pytest.raises(ConfigError, match=r'keep_pii must be a boolean'):
    load_yaml(_config(tmp_path, keep_pii=written))


def test_a_flag_on_the_command_line_still_wins_over_the_file(tmp_path):
  config = resolve({'keep_pii': True}, load_yaml(_config(tmp_path, keep_pii='false')))
  assert config.keep_pii is True


@pytest.mark.parametrize('written, expected', [(8, 8), ('8', 8), (' 16 ', 16), (4.0, 4)])
def test_integers_are_parsed_like_the_flag(tmp_path, written, expected):
  assert resolve({}, load_yaml(_config(tmp_path, num_shards=written))).num_shards == expected


@pytest.mark.parametrize(
  'key, written', [('num_shards', 'four'), ('batch_size', 2.5), ('split_size_mb', True), ('num_shards', [1])]
)
def test_integers_reject_anything_else_naming_the_key(tmp_path, key, written):
  with pytest.raises(ConfigError, match=key):
    load_yaml(_config(tmp_path, **{key: written}))


def test_integers_are_still_range_checked(tmp_path):
  with pytest.raises(ConfigError, match='num_shards must be a positive integer'):
    resolve({}, load_yaml(_config(tmp_path, num_shards='0')))


@pytest.mark.parametrize('key, good, bad', [('output_format', 'avro', 'csv'), ('input_format', 'jsonl', 'xml')])
def test_choices_are_checked_like_the_flag(tmp_path, key, good, bad):
  assert load_yaml(_config(tmp_path, **{key: good}))[key] == good
  with pytest.raises(ConfigError, match=rf'{key} must be one of .*got .{bad}.'):
    load_yaml(_config(tmp_path, **{key: bad}))


def test_strings_accept_numbers_yaml_read_as_numbers_but_not_mappings(tmp_path):
  assert load_yaml(_config(tmp_path, run_id=20240501))['run_id'] == '20240501'
  with pytest.raises(ConfigError, match='output must be a single value'):
    load_yaml(_config(tmp_path, output={'path': 'x'}))


def test_unknown_key_names_the_key(tmp_path):
  with pytest.raises(ConfigError, match='unknown key.*keep_pi\\b'):
    load_yaml(_config(tmp_path, keep_pi=False))


@pytest.mark.parametrize(
  'values, named',
  [
    ({'keep_pi': 'false'}, 'keep_pi'),
    ({'keep_pii': 'maybe'}, 'keep_pii'),
    ({'num_shards': 'four'}, 'num_shards'),
    ({'output_format': 'csv'}, 'output_format'),
  ],
)
def test_the_run_exits_2_with_one_error_line(tmp_path, capsys, values, named):
  (tmp_path / 'a.csv').write_text('event_id\ne1\n')
  code = spotify_batch.main(['--config', _config(tmp_path, **values), '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == 2 and len(lines) == 1 and named in lines[0], err
  assert 'Traceback' not in err
