"""Dead-letter redaction (`redact_dead_letters`) against a plain reference walk, on sample and hostile letters.

`redact_dead_letters` keeps its walks' texts in lists shared by a group,
remembers what it asks of each key, scans names once per key set, prescans the
group's texts and adds findings to one counter per letter. The reference here
does none of that: one letter at a time, every value judged where it stands,
every scan a `redact_texts` call without a prescan. Both must give the same
letters, byte for byte, and the same counts in the same order.
"""

import base64
import collections
import gc
import json
import random
import sys

import pytest

from pipelines.sample_data import COLUMNS, iter_rows
from transforms.entities import ListeningEvent, comparable_name
from transforms.json_values import ObjectPairs, dumps_pairs, loads, loads_pairs, repeated_inside
from transforms.pii import MasterKey, TextScanner, redact_dead_letter, redact_dead_letters, redact_record
from transforms.pii.batch import (
  _BARE_NUMBER,
  _BASE64,
  _JSON_PAIR,
  REDACTED,
  _conforms,
  _json_text,
  _parse_csv_line,
  identifier_fields,
  strict_formats,
)
from transforms.pii.pseudonyms import pseudonym
from transforms.pii.recognizers import (
  is_identifier_number,
  is_placeholder,
  is_secret_name,
  phone_like_integer,
)
from transforms.pii.scanner import SCANNED_INT
from transforms.records import BINARY_TEXT_PREFIX, json_safe

KEY = MasterKey(bytes.fromhex('6b' * 16 + '3f' * 16), source='test')
HEADER = ['event_id', 'user_id', 'track_id', 'played_at', 'ms_played', 'user_email', 'note']


# ---------------------------------------------------------------------------
# The reference: one letter at a time, nothing shared or remembered.


class _ReferenceWalk:
  def __init__(self, tenant_key):
    self.identifiers = frozenset(identifier_fields(ListeningEvent))
    self.spellings = {comparable_name(f): f for f in self.identifiers}
    self.formats = strict_formats(ListeningEvent)
    self.tenant_key = tenant_key
    self.counts = collections.Counter()
    self.slots, self.texts, self.objects = [], [], []
    self.nested = []  # (container, key, walked, pairs or not, objects walked by then): JSON text walked
    self.json_depth = 0
    self.replaced = {}

  def is_identifier(self, key):
    return key in self.identifiers or (isinstance(key, str) and comparable_name(key) in self.spellings)

  def identifier(self, field, value):
    if value is None:
      return None
    text = value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else None
    if text is not None and self.tenant_key is not None:
      out = pseudonym(text, self.tenant_key)
      self.counts[f'PSEUDONYMISED:{field}'] += 1
    else:
      out = REDACTED
      self.counts[f'REDACTED:{field}'] += 1
    if text:
      self.replaced[text] = out
    return out

  def walk(self, value, top=False):
    if isinstance(value, ObjectPairs):
      pairs = ObjectPairs([k, v] for k, v in value)
      for pair in pairs:
        self.item(pair, 1, pair[0], pair[1], top)
      self.objects.append(pairs)
      return pairs
    if isinstance(value, dict):
      out = {}
      for k, v in value.items():
        self.item(out, k, k, v, top)
      self.objects.append(out)
      return out
    if isinstance(value, (list, tuple)):
      out_list = [self.walk(v) for v in value]
      for i, v in enumerate(value):
        self.remember(out_list, i, v)
      return out_list
    return value

  def item(self, container, slot, key, value, top):
    if self.is_identifier(key) and not isinstance(value, (dict, list, tuple)):
      container[slot] = self.identifier(key, value)
    elif top and key in self.formats and _conforms(self.formats[key], value):
      container[slot] = value
    elif isinstance(key, str) and is_secret_name(key) and not isinstance(value, bool):
      self.secret(container, slot, value, key)
    else:
      container[slot] = self.walk(value) if isinstance(value, (dict, list, tuple)) else value
      self.remember(container, slot, value, key)

  def secret(self, container, slot, value, name):
    """Under a secret's name: strings (placeholders apart) and numbers are secrets at any depth."""
    if (
      isinstance(value, str)
      and not is_placeholder(value)
      or (isinstance(value, (int, float)) and not isinstance(value, bool))
    ):
      container[slot] = '<SECRET_ASSIGNMENT>'
      self.counts['SECRET_ASSIGNMENT'] += 1
    elif isinstance(value, ObjectPairs):
      pairs = ObjectPairs([k, v] for k, v in value)
      for pair in pairs:
        self.secret(pair, 1, pair[1], pair[0])
      self.objects.append(pairs)
      container[slot] = pairs
    elif isinstance(value, dict):
      out = {}
      for k, v in value.items():
        self.secret(out, k, v, k)
      self.objects.append(out)
      container[slot] = out
    elif isinstance(value, (list, tuple)):
      out_list = [None] * len(value)
      for i, v in enumerate(value):
        self.secret(out_list, i, v, name)
      container[slot] = out_list
    else:
      container[slot] = value
      self.remember(container, slot, value, name)

  def json_text(self, container, key, text):
    """JSON text in a value walked as a record and written back after the scan; else the text to scan."""
    document = None
    if self.json_depth < 8 and len(text) <= 1 << 20:
      try:
        document = loads(text, repeated_keys=True)
      except ValueError:
        pass
    if not isinstance(document, (dict, list)):
      text = _JSON_PAIR.sub(self.identifier_pair, text)
      container[key] = text
      return text
    self.json_depth += 1
    pairs = repeated_inside(document) is not None
    walked = self.walk(loads_pairs(text) if pairs else document)
    self.json_depth -= 1
    container[key] = walked
    self.nested.append((container, key, walked, pairs, len(self.objects)))
    return None

  def identifier_pair(self, match):
    key = _json_text(match.group('key'))
    if not self.is_identifier(key):
      return match.group(0)
    value = match.group('text')
    value = _json_text(value) if value is not None else match.group('number')
    return f'{match.group("head")}{json.dumps(self.identifier(key, value), ensure_ascii=False)}'

  def remember(self, container, key, original, name=None, as_json=True):
    name = key if name is None else name
    if (
      isinstance(original, str)
      and original.startswith(BINARY_TEXT_PREFIX)
      and _BASE64.fullmatch(original, len(BINARY_TEXT_PREFIX))
    ):
      container[key] = None
      self.counts[f'DROPPED_BINARY:{name}'] += 1
    elif is_identifier_number(original, name):
      pass
    elif isinstance(original, str):
      if as_json and original.lstrip()[:1] in ('{', '['):
        original = self.json_text(container, key, original)
        if original is None:
          return
      self.slots.append((container, key, name))
      self.texts.append(original)
    elif isinstance(original, float) and original.is_integer() and abs(original) < 10**19:
      self.remember(container, key, int(original), name)
    elif isinstance(original, int) and not isinstance(original, bool):
      if phone_like_integer(original):
        container[key] = '<PHONE_NUMBER>'
        self.counts['PHONE_NUMBER'] += 1
      elif abs(original) >= SCANNED_INT:
        self.slots.append((container, key, name))
        self.texts.append(str(original))
    elif isinstance(original, (bytes, bytearray, memoryview)):
      container[key] = None
      self.counts[f'DROPPED_BINARY:{name}'] += 1

  def scan(self, scanner):
    hints = [name if isinstance(name, str) else None for _, _, name in self.slots]
    redacted, found = scanner.redact_texts(self.texts, hints)
    self.counts.update(found)
    for (container, key, _), before, after in zip(self.slots, self.texts, redacted):
      if after != before:
        container[key] = after
    nested = list(self.nested)
    for i, obj in enumerate(self.objects):
      while nested and nested[0][4] <= i:
        self.write(*nested.pop(0)[:4])
      distinct = list(dict.fromkeys(pair[0] for pair in obj)) if isinstance(obj, ObjectPairs) else list(obj)
      keys = [k for k in distinct if isinstance(k, str)]
      new_keys = scanner.redact_names(keys, self.counts)
      if new_keys != keys:
        renamed = dict(zip(keys, new_keys))
        if isinstance(obj, ObjectPairs):
          for pair in obj:
            pair[0] = renamed.get(pair[0], pair[0])
          continue
        items = [(renamed.get(k, k) if isinstance(k, str) else k, v) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    for written in nested:
      self.write(*written[:4])

  @staticmethod
  def write(container, key, walked, pairs):
    container[key] = dumps_pairs(walked) if pairs else json.dumps(walked, ensure_ascii=False, default=str)


def _reference_record(record, scanner, tenant, header, delimiter):
  walk = _ReferenceWalk(KEY.tenant_key(tenant) if tenant else None)
  if record is None:
    return walk, lambda: None
  if isinstance(record, (bytes, bytearray)):
    record = bytes(record).decode('utf-8', 'replace')
  if isinstance(record, str) and record.lstrip()[:1] in ('{', '['):
    try:
      document = loads(record, repeated_keys=True)
    except ValueError:
      document = None
    if isinstance(document, (dict, list)):
      if repeated_inside(document) is None:
        walked = walk.walk(document, top=True)
        return walk, lambda: json.dumps(walked, ensure_ascii=False, default=str)
      pairs = walk.walk(loads_pairs(record), top=True)
      return walk, lambda: dumps_pairs(pairs)
  if isinstance(record, str):
    looks_json = record.lstrip().startswith(('{', '['))
    parsed = _parse_csv_line(record, header, delimiter) if header and not looks_json else None
    if parsed is None:
      if looks_json:
        record = _JSON_PAIR.sub(walk.identifier_pair, record)
      holder = [record]
      walk.remember(holder, 0, record, as_json=False)

      def finish_text():
        if 'PHONE_NUMBER' in scanner.entities and isinstance(holder[0], str):

          def phone(match):
            if phone_like_integer(int(match.group(0))):
              walk.counts['PHONE_NUMBER'] += 1
              return '<PHONE_NUMBER>'
            return match.group(0)

          holder[0] = _BARE_NUMBER.sub(phone, holder[0])
        return holder[0]

      return walk, finish_text
    record = parsed
  out = walk.walk(record, top=True)
  if not isinstance(out, (dict, list)):
    holder = [out]
    walk.remember(holder, 0, record)
    return walk, lambda: holder[0]
  return walk, lambda: out


def _reference_letter(letter, scanner, header=None, delimiter=','):
  tenant = letter.get('tenant')
  walk, finish = _reference_record(
    letter.get('record'), scanner, tenant if isinstance(tenant, str) else None, header, delimiter
  )
  walk.scan(scanner)
  out = dict(letter)
  out['record'] = finish()
  for key in ('detail', 'source'):
    text = letter.get(key)
    if not isinstance(text, str) or not text:
      continue
    if key == 'detail':
      for original in sorted(walk.replaced, key=len, reverse=True):
        text = text.replace(original, walk.replaced[original])
    out[key], found = scanner.redact_text(text)
    walk.counts.update(found)
  return out, walk.counts


# ---------------------------------------------------------------------------
# Letters.


def _letter(record, detail='', source='gs://b/events.csv', tenant='acme', reason='invalid_value', **more):
  letter = {
    'source': source,
    'position': 'row 7',
    'reason': reason,
    'field': 'note',
    'record': record,
    'detail': detail,
    'stage': 'validate',
    'tenant': tenant,
    'count': 1,
  }
  letter.update(more)
  return letter


class _Int(int):
  pass


class _Str(str):
  pass


def _nested_json_text(depth):
  """JSON text holding JSON text, `depth` deep, an identifier at each level."""
  text = json.dumps({'user_id': f'u{depth}', 'note': 'ann@example.org'})
  for level in range(depth):
    text = json.dumps({'user_id': f'u{level}', 'inner': text})
  return text


def _hostile_letters():
  """(letter, header or None): nested records, JSON text, raw lines, duplicate keys, bytes, odd numbers and keys."""
  nested = {
    'event_id': 'e1',
    'user_id': 'u42',
    'UserID': 'u4',
    'userEmail': 'Ann@Example.org',
    'USER-EMAIL': ['not', 'a', 'scalar'],
    'ip_address': {'v4': '10.1.2.3', 'note': 'from 192.168.0.7'},
    'played_at': '2024-06-03T09:42:24+02:00',
    'ms_played': '12',
    'country': 'us',
    'skipped': 2,
    'track_id': 4111111111111111,
    'phone': 4155552671,
    'order_id': '4111111111111111',
    'created_ts': 4155552671,
    'amount': 4155552671.0,
    'ratio': 0.5,
    'big': 10**30,
    'neg_big': -(10**20),
    'card': 4111111111111111,
    'card_float': 4.111111111111111e15,
    'nan': float('nan'),
    'inf': float('-inf'),
    'flag': True,
    'nothing': None,
    'blob': b'\x00\xffuser ann@example.org',
    'array': bytearray(b'abc'),
    'packed': 'base64:' + base64.b64encode(b'ann@example.org').decode(),
    'not_packed': 'base64:not base64 at all!',
    'password': 'hunter22',
    'api_key': 'changeme',
    'client_secret': 12345,
    'Token': 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3',
    'bob@example.com': 'a key that is an address',
    'jane@example.com': 'another',
    '+1 415 555 2671': 'a key that is a phone',
    '<EMAIL_ADDRESS>': 'already taken',
    7: 'an int key',
    None: 'a None key',
    (1, 2): 'a tuple key',
    '': '',
    'unicode': 'caf\u00e9 \u202ebob@example.com\u202c \U0001f600 \u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0662\u0666\u0667\u0661',
    'lists': [['mail ann@example.org', 4155552671, 4155552671.0, None, True, b'x'], ('t', 'call +44 7946 095800')],
    'deep': {'a': {'b': {'c': [{'user_id': 'u9', 'mobile': '4155550100', 'ref': '4155550100'}]}}},
    'json_in_text': '{"email": "ann@example.org", "n": 4155552671, "user_id": "u5"}',
    'url': 'https://bob:hunter2@example.com/path?x=1',
    'ipv6': 'fe80::1ff:fe23:4567:890a',
    'uuid': '1d2ed677-e50a-4fe3-bb37-2b5a0ee41fd8',
    'iso': '2024-06-03T09:42:24Z',
    'version': '8.9.15.832',
    'app_version': '8.9.15.832',
    'long': 'x' * 3000 + ' ann@example.org ' + 'y' * 3000,
    'sub_int': _Int(4155552671),
    'sub_str': _Str('call +1 415 555 2671'),
    _Str('UserEmail'): _Str('bob@example.com'),
    'phone_flag': True,
    'mobile': 4155552671.5,
  }
  line = 'e9,u42,4iV5W9uYEdYUVa79Axb7Rh,2024-01-01T00:00:00Z,oops,ann@example.org,"call +1 415 555 2671",surplus'
  return [
    (_letter(nested, detail="'u42' and 'u4' and Ann@Example.org rejected; call +1 415 555 2671"), None),
    (_letter(dict(nested), tenant=None, detail='u42 for no tenant'), None),
    (_letter(dict(nested), tenant=''), None),
    (_letter(dict(nested), tenant=123), None),
    (_letter(dict(nested), tenant='other-tenant'), None),
    (_letter({'user_id': {'nested': 'u1'}, 'user_email': ['a@b.co'], 'ip_address': 3232235777}), None),
    (_letter({'user_id': 17, 'user_email': 4.5, 'ip_address': True, 'event_id': 'x'}, detail='17 and 4.5'), None),
    (_letter({'user_id': '', 'user_email': None, 'note': ' '}), None),
    # Strict formats at the top level, conforming and not.
    (_letter({'played_at': 1717373020285, 'ms_played': 12.0, 'country': 'US', 'skipped': 'true'}), None),
    (
      _letter({'played_at': '1717373020', 'ms_played': '1e3', 'country': 'XX', 'track_id': 'call +1 415 555 2671'}),
      None,
    ),
    (_letter({'played_at': 'yesterday +1 415 555 2671', 'ms_played': True, 'country': None, 'track_id': 7}), None),
    (_letter({'played_at': '9999-12-31T23:00:00-05:00', 'ms_played': '99999999999999999999', 'skipped': 0.0}), None),
    (_letter({'played_at': True, 'ms_played': float('nan'), 'country': 'us', 'skipped': ' '}), None),
    (_letter({'played_at': '2024-13-45T99:99:99+00:00', 'ms_played': '4155552671'}), None),
    # Records as JSON text: whole, nested, a key written twice, cut off, too deep, scalar.
    (_letter(json.dumps({'user_id': 'u7', 'note': 'ann@example.org', 'n': 4155552671, 'x': {'userId': 'u8'}})), None),
    (_letter('  [{"user_email": "ann@example.org"}, {"phone": "4155552671"}, 4155552671, "plain"]'), None),
    (
      _letter(
        '{"user_id": "u1", "track_id": "a", "track_id": "b", "note": "mail ann@example.org", "note": "fine",'
        ' "extra": {"user_id": "u2", "user_id": "u3", "tel": "call +1 415 555 2671", "tel": "no"}}',
        reason='duplicate_key',
        detail='u1 u2 u3 written twice',
      ),
      None,
    ),
    (
      _letter('{"user_id": "u1", "note": "call +1 415 555 2671", "user_email": "ann@exam', reason='malformed_row'),
      None,
    ),
    (_letter('{"user_id": 12345, "broken": 4155552671', reason='malformed_row'), None),
    (_letter('[' * 3000 + ']' * 3000), None),
    (_letter('"just a json string ann@example.org"'), None),
    (_letter('{"a": 1e400, "b": 12345678901234567890123, "c": 4155552671.0, "user_id": 3.0}'), None),
    # Bytes.
    (_letter(b'{"user_id": "u9", "note": "bob@example.com"}', reason='bad_encoding'), None),
    (_letter(bytearray(b'e1,u9,x,2024,1,bob@example.com,note 4155552671'), reason='bad_encoding'), (HEADER, ',')),
    (_letter(b'\xff\xfe user bob@example.com', reason='bad_encoding'), None),
    # Raw CSV lines, with and without a header.
    (_letter(line, reason='malformed_row', detail='u42 row'), (HEADER, ',')),
    (_letter(line, reason='malformed_row'), None),
    (_letter('e9,u42,x,2024,1000,ann@example.org,"call +1 415 555 2671', reason='malformed_row'), (HEADER, ',')),
    (_letter('e9;u42;x;2024;1000;ann@example.org', reason='malformed_row'), (HEADER, ',')),
    (_letter('e9\tu42\tx', reason='malformed_row'), (HEADER, ';')),
    (_letter('e1,u1,x\ne2,u2,y,z', reason='malformed_row'), (HEADER, ',')),
    (_letter('a note 4155552671 and 447946095800, 1717373020285', reason='malformed_row'), None),
    (_letter('a note 4155552671', reason='malformed_row'), (HEADER, ',')),
    (_letter('', reason='malformed_row'), (HEADER, ',')),
    (_letter('   ', reason='malformed_row'), None),
    (_letter('e1,u1,"x""y",z', reason='malformed_row', tenant=None), (HEADER, ',')),
    # Scalars and odd records.
    (_letter(None), None),
    (_letter(4155552671), None),
    (_letter(4155552671.0), None),
    (_letter(10**40), None),
    (_letter(True), None),
    (_letter(['ann@example.org', 4155552671, {'user_id': 'u3'}]), None),
    (_letter(('tuple', 'bob@example.com')), None),
    (_letter({}), None),
    (_letter([]), None),
    (_letter(ObjectPairs([['user_id', 'u1'], ['user_id', 'u2'], ['bob@example.com', 'x']])), None),
    # Sources and details: credentials in URLs, identifiers inside others, not text at all.
    (_letter({'note': 'ok'}, source='https://bob:hunter2@bucket.example.com/e.csv', detail='https://u:p@host/x'), None),
    (_letter({'user_id': 'u4', 'other': 'u42'}, detail='u4 u42 u4x', source=None), None),
    (_letter({'user_id': 'u42', 'user_email': 'u4'}, detail='u42 then u4'), None),
    (_letter({'user_id': 'u1'}, detail=None, source=7), None),
    (_letter({'user_id': 'u1'}, detail=b'bytes detail u1'), None),
    (_letter({'user_id': 'sess-13380235'}, detail='', source=''), None),
    # Numbers and containers under a secret's name; whole floats of card size; JSON text in values.
    (
      _letter(
        {
          'client_secret': 12345678,
          'api_key': 4.2e9,
          'password': True,
          'passcode': [1234, 'changeme', None, False, b'x', {'pin': 5678, 'user_id': 'u6'}],
          'token': {'value': 'abc', 'n': 7.5, 'bob@example.com': ['x'], 'flag': False},
          'refresh_token': ObjectPairs([['v', 'a'], ['v', 9]]),
          'card_float': 4.111111111111111e15,
          'card_point': 4111111111111111.0,
          'big_float': 9.999999999999999e18,
          'beyond': 1.2e19,
          'order_id': 4.111111111111111e15,
        }
      ),
      None,
    ),
    (
      _letter(
        {
          'payload': '{"user_id": "u-123", "email": "a@b.co", "n": 4155552671, "password": 1234}',
          'ann@example.org': ' [{"userId": "u-7"}, "{\\"user_email\\": \\"x@y.co\\"}"]',
          'pairs': '{"user_id": "u1", "user_id": "u2", "note": "call +1 415 555 2671"}',
          'broken': '{"user_id": "u-9", "email": "ann@exa',
          'list': ['{"user_id": "u-5"}', '[1, 4155552671]', '{not json', '{}', '[]', ' '],
          'deep': json.dumps(json.dumps(json.dumps({'user_id': 'u-deep', 'note': 'ann@example.org'}))),
          'too_deep': '{"a": ' * 2 + '"x"' + '}' * 2,
        },
        detail='u-123 and u-9 rejected',
      ),
      None,
    ),
    (_letter('{"record": "{\\"user_id\\": \\"u-2\\", \\"note\\": \\"bob@example.com\\"}"}'), None),
    (_letter({'nest': _nested_json_text(12)}), None),
    ({'record': {'user_id': 'u1', 'note': 'bob@example.com'}}, None),
    ({'record': 'raw bob@example.com', 'detail': 'u1', 'extra': [1, 2], 'tenant': 'acme'}, None),
  ]


def _sample_letters(rows=3000, seed=11):
  """(letter, header or None) from the sample generator's rows, as the batch job's stages reject them."""
  rng = random.Random(seed)
  details = [
    "Value error, expected ISO-8601 with offset or epoch ms, got '{played_at}'",
    "Value error, not an IPv4/IPv6 address: '{ip_address}'",
    "'{user_email}' does not match",
    "user {user_id} of {tenant_id} rejected",
    'expected 15 columns, got 16',
  ]
  letters = []
  for row in iter_rows(rows=rows, seed=seed, malformed=0.2):
    if row.kind == 'clean' and rng.random() < 0.8:
      continue
    values = dict(zip(COLUMNS, row.values))
    form = rng.randrange(5)
    header = None
    if form == 0:
      record = dict(values)
    elif form == 1:  # as a reader types it: numbers as numbers, empty fields as None
      record = {k: (int(v) if v.isdigit() and k != 'event_id' else v or None) for k, v in values.items()}
    elif form == 2:
      record, header = ','.join(row.values) + rng.choice(['', ',stray']), (list(COLUMNS), ',')
    elif form == 3:
      record = ','.join(row.values)
    else:
      record = json.dumps(values)
    detail = rng.choice(details).format(**values) if len(row.values) == len(COLUMNS) else 'expected 15 columns'
    letters.append(
      (_letter(record, detail=detail, tenant=row.tenant, source=f'gs://b/part-{row.index % 3}.csv'), header)
    )
  return letters


def _written(results):
  return [
    (json.dumps(json_safe(out), sort_keys=True, ensure_ascii=False), repr(out), list(counts.items()))
    for out, counts in results
  ]


# ---------------------------------------------------------------------------
# Tests.


@pytest.fixture(scope='module')
def scanner():
  return TextScanner().setup()


@pytest.mark.parametrize('name', ['hostile', 'sample'])
def test_redacted_letters_and_counts_are_the_reference_walks(scanner, name):
  """Each letter of a group, and each alone, is redacted as the plain walk redacts it, counts in the same order."""
  pairs = _hostile_letters() if name == 'hostile' else _sample_letters()
  letters, headers = [letter for letter, _ in pairs], [header for _, header in pairs]
  before = repr(letters)
  expected = _written(
    _reference_letter(letter, TextScanner().setup(), *(header or (None, ','))) for letter, header in pairs
  )
  assert sum(n for _, _, counts in expected for _, n in counts) > 50  # the letters do hold PII
  # A group, the same group twice over (names and pseudonyms found before are found again), and letter by letter.
  assert _written(redact_dead_letters(letters, ListeningEvent, KEY, TextScanner(), headers)) == expected
  twice = redact_dead_letters(letters + letters[::-1], ListeningEvent, KEY, scanner, headers + headers[::-1])
  assert _written(twice) == expected + expected[::-1]
  alone = [redact_dead_letter(letter, ListeningEvent, KEY, scanner, *(h or (None, ','))) for letter, h in pairs]
  assert _written(alone) == expected
  assert repr(letters) == before  # the letters given are not changed
  for letter, header in pairs[:60]:
    record = letter.get('record')
    for tenant in ('acme', None):
      walk, finish = _reference_record(record, scanner, tenant, *(header or (None, ',')))
      walk.scan(scanner)
      assert _written([redact_record(record, ListeningEvent, KEY, scanner, tenant, *(header or (None, ',')))]) == (
        _written([(finish(), walk.counts)])
      )


@pytest.mark.skipif(sys.implementation.name != 'cpython', reason="counts CPython's garbage collections")
def test_a_group_of_dead_letters_leaves_the_garbage_collector_little_to_walk(scanner):
  """A group's letters wait for its scan together: what each keeps alive until then is walked by every collection.

  Before, each letter kept ~40 objects the collector tracks (a Counter per
  scan call, lists of texts and slots, a tuple per text, a closure, a
  prescan entry per text): 390 collections and a full one per 6,000 sample
  letters, a third of the letters' CPU time.
  """
  pairs = _sample_letters()
  letters, headers = [letter for letter, _ in pairs], [header for _, header in pairs]
  redact_dead_letters(letters, ListeningEvent, KEY, scanner, headers)  # pseudonyms and the scanner's memo warm
  seen = []

  def collection(phase, info):
    if phase == 'start':
      seen.append(info['generation'])

  threshold = gc.get_threshold()
  started = []
  try:
    for _ in range(2):  # the fewer of two: another thread may allocate meanwhile
      gc.collect()
      gc.set_threshold(700, 10, 10)
      seen.clear()
      gc.callbacks.append(collection)
      try:
        redact_dead_letters(letters, ListeningEvent, KEY, scanner, headers)
      finally:
        gc.callbacks.remove(collection)
      started.append(len(seen))
  finally:
    gc.set_threshold(*threshold)
  # 700 net allocations of tracked objects start a collection: at most ~14 per letter kept until its scan.
  assert min(started) <= len(letters) / 50, (started, len(letters))


def _prescanned_texts(n=3000, seed=5):
  """Whole ids of each shape (which the prescan sets aside before its prefilter pass), the same with PII next to
  them or inside them, near-ids, and PII and free text: enough to take the prefilters' Arrow pass."""
  rng = random.Random(seed)

  def hexes(k, alphabet='0123456789abcdef'):
    return ''.join(rng.choice(alphabet) for _ in range(k))

  def uuid():
    return f'{hexes(8)}-{hexes(4)}-{hexes(4)}-{hexes(4)}-{hexes(12)}'

  def base62(k=22):
    return ''.join(rng.choice('0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(k))

  def moment():
    return (
      f'2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:3{rng.randint(0, 9)}'
    )

  pii = ['+44 20 7946 0958', '4111 1111 1111 1111', 'jo.doe@example.com', '10.12.13.14', '(415) 555-2671']
  shapes = [
    uuid,
    lambda: uuid().upper(),
    lambda: hexes(32),
    lambda: hexes(40, '0123456789ABCDEF'),
    lambda: hexes(64),
    lambda: f'spotify:track:{base62()}',
    lambda: f'spotify:playlist:{base62()}',
    moment,
    lambda: moment() + rng.choice(['Z', 'z', '+02:00', '-0830', '.123456789+01:00', ',5Z']),
    lambda: moment().replace('T', ' '),
    # Near-ids and ids with PII around or inside them: scanned.
    lambda: uuid() + ' ' + rng.choice(pii),
    lambda: rng.choice(pii) + ' ' + uuid(),
    lambda: uuid()[:-1] + 'g',
    lambda: hexes(31),
    lambda: hexes(33),
    lambda: f'spotify:track:{base62(21)}',
    lambda: f'spotify:user:{rng.choice(pii)}',
    lambda: f'{moment()} call {rng.choice(pii)}',
    lambda: f'2024-06-1{rng.randint(0, 9)} {rng.choice(pii)}',
    lambda: f'{uuid()}\n{rng.choice(pii)}',
    lambda: rng.choice(pii),
    lambda: f'note: ring {rng.choice(pii)} ✓ Motörhead',
    lambda: str(rng.randint(10**9, 10**16)),
    lambda: rng.choice(['', ' ', 'ps5', 'false', 'GB', 'iPhone16,1']),
  ]
  return [rng.choice(shapes)() for _ in range(n)]


@pytest.mark.parametrize('n', [40, 3000])
def test_prescanned_answers_are_the_unprescanned_ones(n):
  """The prescan sets whole ids aside before its prefilter pass: each text, under each hint, is still redacted and
  counted as a scan without a prescan redacts it (small groups: the Python pass; large: Arrow's)."""
  texts = _prescanned_texts(n)
  hints = [None, 'note', 'phone', 'user_email', 'event_id']
  pairs = [(text, hints[i % len(hints)]) for i, text in enumerate(texts)]
  prescanned = TextScanner().setup()
  prescanned.prescan(pairs)
  plain = TextScanner().setup()
  got, expected = collections.Counter(), collections.Counter()
  for text, hint in pairs:
    assert prescanned.redact_into(text, hint, got) == plain.redact_into(text, hint, expected), (text, hint)
  assert got == expected
  assert sum(expected.values()) > n / 10  # the texts do hold PII


@pytest.mark.parametrize('n', [40, 3000])
def test_a_range_of_texts_is_redacted_as_text_by_text(n):
  """`redact_range_into` (a dead letter's texts in one call) changes and counts what `redact_into` asked text by
  text does: texts the prescan saw under their hint, under another hint, not at all, and with no prescan."""
  texts = _prescanned_texts(n, seed=9)
  hints = [None, 'note', 'phone', 'user_email', 'event_id', 'mobile_number']
  text_hints = [hints[i % len(hints)] for i in range(len(texts))]
  scanner = TextScanner().setup()
  for prescanned in (
    [(t, h) for t, h in zip(texts, text_hints)],
    [(t, h) for i, (t, h) in enumerate(zip(texts, text_hints)) if i % 3],  # a third unseen
    [(t, None) for t in texts[: n // 2]],  # under another hint only
    [],
  ):
    scanner.prescan(prescanned)
    for start, stop in ((0, len(texts)), (n // 3, n // 3 + 7), (5, 5)):
      got, expected = collections.Counter(), collections.Counter()
      changed = scanner.redact_range_into(texts, text_hints, start, stop, got)
      want = []
      for i in range(start, stop):
        after = scanner.redact_into(texts[i], text_hints[i], expected)
        if after != texts[i]:
          want.append((i, after))
      assert changed == want
      assert got == expected and list(got) == list(expected)
  assert want == [] and any(t != a for t, a in zip(texts, scanner.redact_texts(texts, text_hints)[0]))


def test_objects_keyed_alike_but_not_the_same_are_renamed_as_alone(scanner):
  """A group's objects share the names found by their key sets: keys equal but of other types (1, True, 1.0), a
  str subclass, repeated JSON keys and a nested object with the same keys give what each letter alone gives."""
  email_key = 'reach me at jo.doe@example.com'
  records = [
    {1: 'one', email_key: 'x', 'note': 'call +1 415 555 2671'},
    {True: 'one', email_key: 'x', 'note': 'call +1 415 555 2671'},
    {1.0: 'one', email_key: 'x'},
    {_Str(email_key): 'x', 1: 'one'},
    {email_key: {email_key: 'y', 1: 'z'}, 1: 'one'},
    '{"%s": "x", "%s": "y", "note": "fine"}' % (email_key, email_key),
    '{"%s": "x", "note": "fine"}' % email_key,
    {email_key: 'x', 1: 'one'},
  ]
  letters = [_letter(record) for record in records]
  alone = [redact_dead_letter(letter, ListeningEvent, KEY, scanner) for letter in letters]
  grouped = redact_dead_letters(letters + letters, ListeningEvent, KEY, scanner)
  assert _written(grouped) == _written(alone) * 2
  assert sum(counts['EMAIL_ADDRESS'] for _, counts in alone) >= len(records)
