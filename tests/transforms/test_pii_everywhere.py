"""Every place a person can hide PII is scanned: nested values, declared plain strings, numbers, bytes, JSON in text.

And ids that look like PII (session ids, epochs, invoices, ISWCs) come out untouched.
"""

import collections
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from transforms.entities import ListeningEvent, Track
from transforms.pii import MasterKey, TextScanner, redact_batch, redact_record
from transforms.pii.pseudonyms import pseudonymise
from transforms.pii.batch import DROP, KEEP, PSEUDONYMISE, SCAN, SCAN_NONCONFORMING, column_actions
from transforms.records import with_provenance

KEY = MasterKey(bytes(range(32)), source='test')
NOT_PII = [
  'sess-03639122',
  '1717245296',
  'Invoice 2024-000123',
  'T-345246800-1',
  'id 03639122',
  '1717245296000',
  'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
  'USRC17607839',
  '2.14.0',
  'PT3M25S',
  '51.5074,-0.1278',
]


@pytest.fixture(scope='module')
def scanner():
  return TextScanner().setup()


def _batch():
  rows = [
    dict(
      event_id='e1',
      user_id='u1',
      track_id='4iV5W9uYEdYUVa79Axb7Rh',
      ms_played=1000,
      country='GB',
      platform='ios ann@example.org',
      context_uri='spotify:user:jane.doe',
      note='fine',
      tenant_id='acme',
      phone=4155552671,
      played_epoch=1717245296,
      played_ms=1717245296000,
      session_id='sess-03639122',
      invoice='Invoice 2024-000123',
      iswc='T-345246800-1',
      memo='id 03639122',
      device={'ip': '203.0.113.9', 'owner': {'email': 'bob@example.com', 'age': 31}, 'model': 'iPhone15,2'},
      emails=['carol@example.net', 'ok'],
      attributes={'mobile': '+44 20 7946 0958', 'genre': 'jazz'},
      payload='{"contact": {"email": "dan@example.com", "phone": 14155552671}, "n": 1717245296}',
      blob=b'ann@example.org',
      credentials={'password': 'hunter22', 'user': 'x'},
    ),
    dict(
      event_id='e2',
      user_id='u2',
      track_id='4iV5W9uYEdYUVa79Axb7Rh',
      ms_played=5,
      country=None,
      platform=None,
      context_uri='spotify:album:4iV5W9uYEdYUVa79Axb7Rh',
      note=None,
      tenant_id='acme',
      phone=None,
      played_epoch=1717245297,
      played_ms=1717245297000,
      session_id=None,
      invoice=None,
      iswc=None,
      memo=None,
      device=None,
      emails=None,
      attributes=None,
      payload=None,
      blob=None,
      credentials=None,
    ),
  ]
  return with_provenance(pa.RecordBatch.from_pylist(rows), 'gs://b/events.jsonl', 2)


def test_column_actions():
  actions = column_actions(_batch().schema, ListeningEvent)
  assert actions['user_id'] == PSEUDONYMISE
  assert actions['platform'] == SCAN and actions['context_uri'] == SCAN and actions['note'] == SCAN
  assert actions['track_id'] == SCAN_NONCONFORMING and actions['country'] == SCAN_NONCONFORMING
  assert actions['ms_played'] == KEEP and actions['__source'] == KEEP and actions['tenant_id'] == KEEP
  assert actions['device'] == SCAN and actions['phone'] == SCAN and actions['blob'] == DROP
  assert column_actions(_batch().schema, ListeningEvent, scan_undeclared=False)['device'] == KEEP
  assert column_actions(pa.schema([('album', pa.struct([('name', pa.string())]))]), Track)['album'] == SCAN


def test_every_place_is_scanned_and_ids_are_untouched(scanner):
  batch = _batch()
  out, counts = redact_batch(batch, ListeningEvent, KEY, scanner)
  rows = out.to_pylist()
  first = rows[0]
  assert first['platform'] == 'ios <EMAIL_ADDRESS>'
  assert first['context_uri'] == '<SPOTIFY_USER>'
  assert first['phone'] is None and out.schema.field('phone').type == pa.int64()
  assert first['device']['ip'] == '<IP_ADDRESS>' and first['device']['owner'] == {'email': '<EMAIL_ADDRESS>', 'age': 31}
  assert first['device']['model'] == 'iPhone15,2'
  assert first['emails'] == ['<EMAIL_ADDRESS>', 'ok']
  assert dict(first['attributes']) == {'mobile': '<PHONE_NUMBER>', 'genre': 'jazz'}
  assert json.loads(first['payload']) == {
    'contact': {'email': '<EMAIL_ADDRESS>', 'phone': '<PHONE_NUMBER>'},
    'n': 1717245296,
  }
  assert first['credentials'] == {'password': '<SECRET_ASSIGNMENT>', 'user': 'x'}
  assert 'blob' not in out.schema.names
  # Ids that look like phone numbers, and declared strict formats, are untouched.
  for name in (
    'played_epoch',
    'played_ms',
    'session_id',
    'invoice',
    'iswc',
    'memo',
    'track_id',
    'country',
    'ms_played',
    'event_id',
  ):
    assert out.column(name).equals(batch.column(name)), name
  assert rows[1]['context_uri'] == 'spotify:album:4iV5W9uYEdYUVa79Axb7Rh'
  assert counts['EMAIL_ADDRESS'] == 4 and counts['PHONE_NUMBER'] == 3 and counts['IP_ADDRESS'] == 1
  assert counts['SPOTIFY_USER'] == 1 and counts['SECRET_ASSIGNMENT'] == 1 and counts['DROPPED_BINARY:blob'] == 1
  raw = repr(out.to_pylist())
  for value in (
    'ann@example.org',
    'bob@example.com',
    'carol@example.net',
    'dan@example.com',
    '4155552671',
    '203.0.113.9',
    'jane.doe',
    '7946',
    'hunter22',
  ):
    assert value not in raw, value


def test_sliced_and_chunk_offset_nested_arrays_keep_their_rows(scanner):
  batch = _batch()
  whole, _ = redact_batch(batch, ListeningEvent, KEY, scanner)
  for start in (0, 1):
    part, _ = redact_batch(batch.slice(start, 1), ListeningEvent, KEY, scanner)
    assert part.to_pylist() == whole.slice(start, 1).to_pylist()


@pytest.mark.parametrize('text', NOT_PII)
def test_ids_that_look_like_pii_are_not_rewritten(scanner, text):
  assert scanner.redact_text(text) == (text, collections.Counter())
  column = pa.array([text] * 100, type=pa.string())
  out, counts = scanner.redact_array(column)
  assert out is column and not counts


def test_phone_numbers_in_numeric_columns_epochs_and_counts_are_not():
  batch = pa.RecordBatch.from_pylist(
    [
      dict(
        event_id='e1',
        tenant_id='acme',
        mobile=447946095800,
        msisdn=4155552671.0,
        epoch_s=1717245296,
        epoch_ms=1717245296000,
        epoch_us=1717245296000000,
        plays=123456789,
        isrc_number=3135556,
      ),
    ]
  )
  out, counts = redact_batch(batch, ListeningEvent, KEY, TextScanner().setup())
  row = out.to_pylist()[0]
  assert row['mobile'] is None and row['msisdn'] is None and counts['PHONE_NUMBER'] == 2
  assert {k: row[k] for k in ('epoch_s', 'epoch_ms', 'epoch_us', 'plays', 'isrc_number')} == {
    'epoch_s': 1717245296,
    'epoch_ms': 1717245296000,
    'epoch_us': 1717245296000000,
    'plays': 123456789,
    'isrc_number': 3135556,
  }


def test_a_column_named_like_a_phone_or_a_secret_is_context(scanner):
  batch = pa.RecordBatch.from_pylist(
    [
      dict(
        event_id='e1',
        tenant_id='acme',
        phone_number='4155552671',
        session='03639122',
        api_key='abc123def456',
        token_count='12',
      )
    ]
  )
  row = redact_batch(batch, ListeningEvent, KEY, scanner)[0].to_pylist()[0]
  assert row == dict(
    event_id='e1',
    tenant_id='acme',
    phone_number='<PHONE_NUMBER>',
    session='03639122',
    api_key='<SECRET_ASSIGNMENT>',
    token_count='12',
  )


def test_whole_versions_in_a_column_named_for_a_version_are_not_ip_addresses(scanner):
  """8.9.75.120 in `app_version` is a version (a quarter of random four-part versions are dotted quads an IP
  recognizer takes); the same text elsewhere, or a version column's free text, is still scanned."""
  quad = '8.9.75.120'
  batch = pa.RecordBatch.from_pylist(
    [
      dict(
        event_id='e1',
        tenant_id='acme',
        app_version=quad,
        osBuild='v10.0.190.45-beta.2',
        firmware_rev='2.1.0',
        client_version='8.9.75.121',
        ip_version=quad,  # names an address too: scanned
        client_ip=quad,
        note=quad,
        sdk_version=f'{quad} on 10.1.2.3',
        release_notes='mail a.b@example.com',
      )
    ]
  )
  row = redact_batch(batch, ListeningEvent, KEY, scanner)[0].to_pylist()[0]
  assert row['app_version'] == quad and row['osBuild'] == 'v10.0.190.45-beta.2' and row['firmware_rev'] == '2.1.0'
  assert row['client_version'] == '8.9.75.121'
  assert row['ip_version'] == row['client_ip'] == row['note'] == '<IP_ADDRESS>'
  assert row['sdk_version'] != f'{quad} on 10.1.2.3'  # not a whole version: scanned as any text
  assert row['release_notes'] == 'mail <EMAIL_ADDRESS>'
  # The rule holds for a column's dictionary too, and for many distinct values.
  versions = pa.array(
    [f'{a}.{b}.{c}.{d}' for a in range(1, 5) for b in range(5) for c in range(0, 250, 50) for d in (1, 200)]
  )
  out, counts = scanner.redact_array(versions, hint='app_version')
  assert out is versions and not counts
  out, counts = scanner.redact_array(pc.dictionary_encode(versions), hint='appVersion')
  assert not counts
  out, counts = scanner.redact_array(versions, hint='remote_addr')
  assert counts['IP_ADDRESS'] == len(versions)


def test_camel_case_and_compound_names_are_context_in_columns_json_keys_and_dead_letters(scanner):
  """`phoneNumber`, `contactPhone`, `cardNumber`: the words of a name count, however it is spelled."""
  batch = pa.RecordBatch.from_pylist(
    [
      dict(
        event_id='e1',
        tenant_id='acme',
        phoneNumber='4155552671',
        contactPhone='07700900123',
        PhoneNo='4155552671',
        payload='{"user": {"mobileNumber": "4155552671", "sessionId": "03639122"}}',
      )
    ]
  )
  row = redact_batch(batch, ListeningEvent, KEY, scanner)[0].to_pylist()[0]
  assert row['phoneNumber'] == row['contactPhone'] == row['PhoneNo'] == '<PHONE_NUMBER>'
  assert json.loads(row['payload']) == {'user': {'mobileNumber': '<PHONE_NUMBER>', 'sessionId': '03639122'}}
  out, counts = redact_record({'userPhone': '4155552671', 'n': '4155552671'}, ListeningEvent, KEY, scanner, 'acme')
  assert out == {'userPhone': '<PHONE_NUMBER>', 'n': '4155552671'} and counts['PHONE_NUMBER'] == 1


def test_dead_letter_records_follow_the_same_rules(scanner):
  record = {
    'event_id': 'e1',
    'session_id': 'sess-03639122',
    'epoch': 1717245296,
    'phone': 4155552671,
    'mobile': '4155552671',
    'nested': {'emails': ['ann@example.org'], 'password': 'hunter22'},
    'payload': '{"ip": "203.0.113.9"}',
    'blob': b'\x00bytes',
    'memo': 'id 03639122',
  }
  out, counts = redact_record(record, ListeningEvent, KEY, scanner, tenant='acme')
  assert out['session_id'] == 'sess-03639122' and out['epoch'] == 1717245296 and out['memo'] == 'id 03639122'
  assert out['phone'] == '<PHONE_NUMBER>' and out['mobile'] == '<PHONE_NUMBER>'
  assert out['nested'] == {'emails': ['<EMAIL_ADDRESS>'], 'password': '<SECRET_ASSIGNMENT>'}
  assert json.loads(out['payload']) == {'ip': '<IP_ADDRESS>'} and out['blob'] is None
  assert counts['PHONE_NUMBER'] == 2 and counts['DROPPED_BINARY:blob'] == 1


@pytest.mark.parametrize(
  'text, expected',
  [
    ('+1-415-555-2671', '<PHONE_NUMBER>'),
    ('(020) 7946 0958', '<PHONE_NUMBER>'),
    ('0049 30 12345678', '<PHONE_NUMBER>'),
    ('my number: 07700 900123', 'my number: <PHONE_NUMBER>'),
    ('ring 06 12 34 56 78', 'ring <PHONE_NUMBER>'),
    ('JANE.DOE@EXAMPLE.COM', '<EMAIL_ADDRESS>'),
    ('fw 3.2.1.0 on 192.168.1.20', 'fw 3.2.1.0 on <IP_ADDRESS>'),
    ('aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', 'aws_secret_access_key=<SECRET_ASSIGNMENT>'),
    ('Authorization: token ghp_' + 'A1b2' * 9, 'Authorization: token <API_KEY>'),
    ('IBAN de89 3704 0044 0532 0130 00 please', 'IBAN <IBAN_CODE> please'),
    ('card 2223 0031 2200 3222', 'card <CREDIT_CARD>'),
    # A label glued to its value (key=value logs, query strings), compound and camelCase names:
    ('card=4111111111111111', 'card=<CREDIT_CARD>'),
    ('payment failed cc=4111-1111-1111-1111 exp=12/27', 'payment failed cc=<CREDIT_CARD> exp=12/27'),
    ('phone_number=+447946095800', 'phone_number=<PHONE_NUMBER>'),
    ('phoneNumber: 4155552671', 'phoneNumber: <PHONE_NUMBER>'),
    ('userPhone=4155552671&x=1', 'userPhone=<PHONE_NUMBER>&x=1'),
    ('mobile_no:07700900123', 'mobile_no:<PHONE_NUMBER>'),
    ('card #4111111111111111 declined', 'card #<CREDIT_CARD> declined'),
    ('call 415-555-2671x123', 'call <PHONE_NUMBER>'),
    ('+1 415-555-2671X12, thanks', '<PHONE_NUMBER>, thanks'),
    ('phone_numbers: 4155552671, 4155552672', 'phone_numbers: <PHONE_NUMBER>, <PHONE_NUMBER>'),
    ('{"phones": ["4155552671", "07700900123"]}', '{"phones": ["<PHONE_NUMBER>", "<PHONE_NUMBER>"]}'),
    ('mobile #07700900123', 'mobile #<PHONE_NUMBER>'),
    # Addresses in URLs: URL-encoded in a query string, and the URL around them kept.
    ('https://x.com/unsubscribe?email=ann%40example.org&u=1', 'https://x.com/unsubscribe?<EMAIL_ADDRESS>&u=1'),
    ('to: ann%40example.org, ann%2Bspotify%40gmail.com', 'to: <EMAIL_ADDRESS>, <EMAIL_ADDRESS>'),
    (
      'GET https://api.example.com/v1/users/ann@example.org/plays',
      'GET https://api.example.com/v1/users/<EMAIL_ADDRESS>/plays',
    ),
    ('list-bounces+ann=example.org@lists.example.com', '<EMAIL_ADDRESS>'),
    # An international number as any key's value, URL-encoded too:
    ('sms sent to=+447946095800 status=ok', 'sms sent to=<PHONE_NUMBER> status=ok'),
    ('recipient:+14155552671', 'recipient:<PHONE_NUMBER>'),
    ('POST /Messages?To=%2B14155552671&From=%2b447946095800', 'POST /Messages?To=<PHONE_NUMBER>&From=<PHONE_NUMBER>'),
    # Not PII:
    ('Track 01 - 03:25', None),
    ('ISRC: GB-AYE-06-01498', None),
    ('1,234,567 streams', None),
    ('+1 for this track', None),
    ('mixtape vol. 2 (2019) 128kbps', None),
    ('order 2024-05-01-0001', None),
    ('user 12345678 played 300000 ms', None),
    ('price $1,299.00', None),
    ('ean 0602547924057', None),
    ('mac 00:1A:2B:3C:4D:5E', None),
    ('The Secret: Love', None),
    ('Spotify/8.9.40.132', None),
    ('build 10.2.0.13', None),
    ('item no. 0301234567', None),
    ('customer 0151 23456789', None),
    ('track no. 12345678', None),
    ('call_id=4155552671', None),
    ('mix 50%40 off', None),
    ('order #4111111111111111', None),
    ('video 1920x1080, 3840x2160, 2560x1440px', None),
    ('phone 1080x2400 screen', None),
    ('{"sessionIds": ["4155552671"]}', None),
    ('ticket #4155552671', None),
    ('user_id=+447946095800', None),
    ('tz=+0530 gain=+12.5', None),
    ('phoneId 4155552671', None),
    ('order_number=4155552671', None),
    ('session_id:4111111111111111', None),
  ],
)
def test_formats_outside_the_corpus(scanner, text, expected):
  assert scanner.redact_text(text)[0] == (text if expected is None else expected)


def test_dead_letter_json_text_and_bytes_records(scanner):
  text = json.dumps({'user_id': 'u42', 'profile': {'email': 'ann@example.org'}, 'session_id': 'sess-03639122'})
  out, counts = redact_record(text, ListeningEvent, KEY, scanner, tenant='acme')
  parsed = json.loads(out)
  assert parsed['user_id'] != 'u42' and len(parsed['user_id']) == 64 and parsed['session_id'] == 'sess-03639122'
  assert parsed['profile'] == {'email': '<EMAIL_ADDRESS>'} and counts['PSEUDONYMISED:user_id'] == 1
  out, counts = redact_record(b'mail bob@example.com', ListeningEvent, KEY, scanner, tenant='acme')
  assert out == 'mail <EMAIL_ADDRESS>' and counts == {'EMAIL_ADDRESS': 1}


def test_string_view_columns_are_scanned(scanner):
  batch = pa.RecordBatch.from_arrays(
    [pa.array(['e1']), pa.array(['acme']), pa.array(['mail ann@example.org'], type=pa.string_view())],
    names=['event_id', 'tenant_id', 'memo'],
  )
  out, _ = redact_batch(batch, ListeningEvent, KEY, scanner)
  assert out.column('memo').type == pa.string_view() and out.column('memo').to_pylist() == ['mail <EMAIL_ADDRESS>']


def test_whole_ids_of_known_shapes_skip_the_recognizers(scanner):
  ids = [
    '543c004d-153f-4411-be65-2446bb150280',
    'd41d8cd98f00b204e9800998ecf8427e',
    'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
    '2024-06-02T18:00:17-06:00',
  ]
  column = pa.array(ids * 30, type=pa.string())
  out, counts = scanner.redact_array(column)
  assert out.to_pylist() == column.to_pylist() and not counts
  # An id shape inside text does not hide the PII next to it.
  text = '543c004d-153f-4411-be65-2446bb150280 from ann@example.org'
  assert (
    scanner.redact_array(pa.array([text] * 100))[0][0].as_py()
    == '543c004d-153f-4411-be65-2446bb150280 from <EMAIL_ADDRESS>'
  )


def test_bytes_a_stage_made_json_ready_are_dropped_from_dead_letters_as_bytes_are(scanner):
  """Validate's dead letter holds a Parquet binary column as json_safe wrote it: base64 text hides PII."""
  from transforms.records import json_safe

  secret = 'call +1 415 555 2671, ann@example.org'.encode('utf-16')  # not UTF-8: becomes base64 text
  record = {'event_id': 'e1', 'blob': json_safe(secret), 'utf8_blob': json_safe(b'ann@example.org')}
  assert record['blob'].startswith('base64:')
  out, counts = redact_record(record, ListeningEvent, KEY, scanner, tenant='acme')
  assert out['blob'] is None and counts['DROPPED_BINARY:blob'] == 1
  assert out['utf8_blob'] == '<EMAIL_ADDRESS>'  # bytes that are text are scanned as text
  assert redact_record({'note': 'base64: is a prefix'}, ListeningEvent, KEY, scanner, tenant='acme')[0] == {
    'note': 'base64: is a prefix'
  }


def test_a_dead_letter_identifier_spelled_another_way_is_pseudonymised(scanner):
  """A raw CSV line read with its header `UserID,User Email`, a nested `userId`: identifiers all the same."""
  record = {'UserID': '0042', 'User Email': 'x', 'ctx': {'userId': 17, 'ip-address': '10.0.0.1'}, 'plays': '0042'}
  out, counts = redact_record(record, ListeningEvent, KEY, scanner, tenant='acme')
  assert out['UserID'] != '0042' and len(out['UserID']) == 64
  assert out['ctx']['userId'] != 17 and out['ctx']['ip-address'] != '10.0.0.1'
  assert out['User Email'] != 'x' and out['plays'] == '0042'
  assert counts['PSEUDONYMISED:UserID'] == 1 and counts['PSEUDONYMISED:userId'] == 1


def test_card_numbers_stored_as_numbers_are_redacted_as_dead_letters_redact_them(scanner):
  """A CSV reader infers int64 for a column of card numbers; JSON writes them unquoted. Epochs and ids stay."""
  batch = pa.RecordBatch.from_pylist(
    [
      dict(
        event_id='e1',
        tenant_id='acme',
        card_number=4111111111111111,
        cc=5555555555554444.0,
        epoch_ms=1717245296000,
        epoch_us=1717245296000000,
        big_id=4111111111111112,
        nested={'pan': 378282246310005, 'n': 7},
      ),
    ]
  )
  out, counts = redact_batch(batch, ListeningEvent, KEY, scanner)
  row = out.to_pylist()[0]
  assert row['card_number'] is None and row['cc'] is None and row['nested'] == {'pan': None, 'n': 7}
  assert (row['epoch_ms'], row['epoch_us'], row['big_id']) == (1717245296000, 1717245296000000, 4111111111111112)
  assert counts['CREDIT_CARD'] == 3
  assert out.schema.field('card_number').type == pa.int64()
  text = '{"card": 4111111111111111, "ts": 1717245296000000, "n": 5555555555554445}'
  redacted, found = scanner.redact_text(text)
  assert json.loads(redacted) == {'card': '<CREDIT_CARD>', 'ts': 1717245296000000, 'n': 5555555555554445}
  assert found == {'CREDIT_CARD': 1}


def test_numbers_under_an_identifier_name_stay_whatever_checksum_they_pass(scanner):
  """`order_id` 4111111111111111 is an order number: about one random 16-digit id in ten passes the card
  checksum, and ids of 10-15 digits parse as phone numbers. Under a phone or card name they still go."""
  ids = dict(order_id=4111111111111111, invoiceNo='5555555555554444', session=447946095800, created_ts='14155552671')
  batch = pa.RecordBatch.from_pylist(
    [dict(event_id='e1', tenant_id='acme', **ids, card_number=4111111111111111, contact_phone=447946095800)]
  )
  out, counts = redact_batch(batch, ListeningEvent, KEY, scanner)
  row = out.to_pylist()[0]
  assert {name: row[name] for name in ids} == ids
  assert row['card_number'] is None and row['contact_phone'] is None
  assert (counts['CREDIT_CARD'], counts['PHONE_NUMBER']) == (1, 1)
  record, _ = redact_record(
    dict(ids, note='call 4155552671 or 4111 1111 1111 1111'), ListeningEvent, KEY, scanner, 'acme'
  )
  assert {name: record[name] for name in ids} == ids
  assert '4155552671' not in record['note'] and '4111' not in record['note']
  # JSON text in a column: the same rule for its keys.
  text = '{"order_id": 4111111111111111, "invoiceNo": "5555555555554444", "card": 4111111111111111}'
  redacted, found = scanner.redact_text(text)
  assert json.loads(redacted) == {
    'order_id': 4111111111111111,
    'invoiceNo': '5555555555554444',
    'card': '<CREDIT_CARD>',
  }
  assert found == {'CREDIT_CARD': 1}


def test_numbers_under_a_measure_name_are_amounts_not_phone_numbers(scanner):
  """Analytics exports hold large whole numbers: Google Ads' `cost_micros`, GA4's revenue, byte counts. Most
  10-digit ones parse as North American numbers; under a name of a measure they are kept."""
  measures = dict(
    cost_micros=4155552671,
    purchase_revenue_in_usd=4155552671.0,
    download_bytes=2147483648,
    playsCount=4155552671,
    impressions=2125551234,
    total_amount='4155552671',
  )
  batch = pa.RecordBatch.from_pylist(
    [dict(event_id='e1', tenant_id='acme', **measures, contact=4155552671, reach_me='4155552671')]
  )
  out, counts = redact_batch(batch, ListeningEvent, KEY, scanner)
  row = out.to_pylist()[0]
  assert {name: row[name] for name in measures} == measures
  assert row['contact'] is None and row['reach_me'] == '<PHONE_NUMBER>' and counts['PHONE_NUMBER'] == 2
  redacted, found = scanner.redact_text('{"cost_micros": 4155552671, "phone": 4155552671}')
  assert json.loads(redacted) == {'cost_micros': 4155552671, 'phone': '<PHONE_NUMBER>'}


def test_a_broken_json_line_has_the_values_of_its_identifier_keys_pseudonymised(scanner):
  """A truncated or badly encoded JSON Lines row is a dead letter holding its raw text: its `"user_id": ...`
  pairs still name the identifiers, which a text scan alone keeps (an id is no pattern)."""
  pseudonym = pseudonymise(pa.array(['u-123']), KEY.tenant_key('acme'))[0].as_py()
  lines = [
    '{"user_id": "u-123", "userEmail": "ann@example.org", "ms_played": 12, "note": "call 4155552671',
    '{"event_id": "e1", "user_id": "u-123"} trailing',
    '{"user_id": 12345678, "track_id": "x", "skipped": false',
    '{"user_id": "u-12',  # cut inside the value
  ]
  out = [redact_record(line, ListeningEvent, KEY, scanner, 'acme')[0] for line in lines]
  assert f'"user_id": "{pseudonym}"' in out[0] and f'"user_id": "{pseudonym}"' in out[1]
  assert not any('u-12' in text or 'ann@example.org' in text or '4155552671' in text for text in out)
  assert '"user_id": 12345678' not in out[2] and '"track_id": "x", "skipped": false' in out[2]
  assert '"ms_played": 12' in out[0] and '"event_id": "e1"' in out[1]


def test_pii_in_column_field_and_key_names_is_redacted_and_names_stay_distinct(scanner):
  """A headerless CSV's first row becomes the column names; objects are keyed by address: names are scanned too."""
  batch = pa.RecordBatch.from_pylist(
    [
      {
        'event_id': 'e1',
        'tenant_id': 'acme',
        'ann@example.org': 'x',
        '+44 20 7946 0958': 'y',
        'bob@example.com': 'z',
        'extra': {'carol@example.net': 'k', 'plays': 3},
      }
    ]
  )
  out, counts = redact_batch(batch, ListeningEvent, KEY, scanner)
  names = ['event_id', 'tenant_id', '<EMAIL_ADDRESS>', '<PHONE_NUMBER>', '<EMAIL_ADDRESS>_2', 'extra']
  assert out.schema.names == names
  assert out.to_pylist()[0]['extra'] == {'<EMAIL_ADDRESS>': 'k', 'plays': 3}
  assert counts['EMAIL_ADDRESS'] == 3 and counts['PHONE_NUMBER'] == 1
  assert (
    redact_batch(batch, ListeningEvent, KEY, scanner, scan_undeclared=False)[0].schema.names[2] == 'ann@example.org'
  )
  record = {'event_id': 'e2', 'ann@example.org': 'x', 'bob@example.com': 'y', 'extra': {'carol@example.net': 'k'}}
  out, counts = redact_record(record, ListeningEvent, KEY, scanner, tenant='acme')
  assert out == {'event_id': 'e2', '<EMAIL_ADDRESS>': 'x', '<EMAIL_ADDRESS>_2': 'y', 'extra': {'<EMAIL_ADDRESS>': 'k'}}
  assert counts['EMAIL_ADDRESS'] == 3
  text = json.dumps({'ann@example.org': 1, 'bob@example.com': 2})
  assert json.loads(scanner.redact_text(text)[0]) == {'<EMAIL_ADDRESS>': 1, '<EMAIL_ADDRESS>_2': 2}


def test_known_spotify_uris_skip_the_scan_but_a_users_link_does_not(scanner):
  """Declared plain strings of a known URI shape are not scanned (batches over 64 rows); a user's link is PII."""
  rows = [
    dict(
      event_id=f'e{i}',
      tenant_id='acme',
      context_uri='spotify:track:4uLU6hMCjMI75M1A2tKUQC' if i else 'https://open.spotify.com/user/jane.doe',
      platform='https://open.spotify.com/user/bob99/playlist/37i9dQZF1DXcBWIGoYBM5M' if i == 1 else 'ios',
    )
    for i in range(100)
  ]
  for batch_rows in (rows, rows[:10]):
    out, counts = redact_batch(pa.RecordBatch.from_pylist(batch_rows), ListeningEvent, KEY, scanner)
    assert out.column('context_uri')[0].as_py() == 'https://<SPOTIFY_USER>'
    assert out.column('platform')[1].as_py() == 'https://<SPOTIFY_USER>/playlist/37i9dQZF1DXcBWIGoYBM5M'
    assert out.column('context_uri')[1].as_py() == 'spotify:track:4uLU6hMCjMI75M1A2tKUQC'
    assert counts == {'SPOTIFY_USER': 2}
  known = [
    'https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC',
    'https://open.spotify.com/intl-de/album/4uLU6hMCjMI75M1A2tKUQC',
    'https://i.scdn.co/image/ab67616d0000b273' + '0' * 24,
    'https://api.spotify.com/v1/tracks/4uLU6hMCjMI75M1A2tKUQC',
  ]
  import re

  from transforms.pii.batch import KNOWN_URI_PATTERN

  assert all(re.match(KNOWN_URI_PATTERN, uri) for uri in known)


def _uri_like_texts(rng, n, distinct):
  """Texts a declared plain-string column may hold: known URIs, their near misses (a user's link, another host,
  a different case, a trailing space, non-ASCII), ids, notes and nulls; `distinct` of them, repeated to `n`."""
  base62 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
  ident = lambda k=22: ''.join(rng.choice(base62) for _ in range(k))
  shapes = [
    lambda: f'spotify:{rng.choice(["track", "album", "playlist", "show", "user", "Track"])}:{ident()}',
    lambda: f'spotify:track:{ident(rng.choice([21, 22, 23]))}',
    lambda: f'https://open.spotify.com/{rng.choice(["track", "intl-de/album", "user", "v1/tracks"])}/{ident()}',
    lambda: f'https://api.spotify.com/v1/{rng.choice(["artists", "users"])}/{ident()}?cid={rng.randrange(9**9):x}',
    lambda: f'https://i.scdn.co/image/{ident(40)}',
    lambda: f'https://example.com/p/{rng.randrange(10**7)}',
    lambda: f'HTTPS://open.spotify.com/track/{ident()}',
    lambda: f' spotify:track:{ident()}',
    lambda: f'spotify:track:{ident()} ',
    lambda: f'https://open.spotify.com/track/{ident()}é',
    lambda: f'spotify:track:{ident()}\nspotify:track:{ident()}',
    lambda: f'call me on +44 20 7946 {rng.randrange(10**4):04d}',
    lambda: rng.choice(['', 'ios', 'spotify:', 'https://', 'ünïcode ✓']),
    lambda: None,
  ]
  pool = [rng.choice(shapes)() for _ in range(distinct)]
  return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize('n, distinct', [(0, 1), (70, 50), (3000, 3000), (20000, 400), (20000, 20000)])
def test_known_uris_prefiltered_equal_the_regex_over_every_cell(n, distinct):
  """`_known_uris` (a prefix test, then the regex on the cells that pass, on their distinct values when many)
  flags exactly the cells KNOWN_URI_PATTERN matches, of any text type, sliced, with nulls."""
  import random

  from transforms.pii.batch import KNOWN_URI_PATTERN, _known_uris

  rng = random.Random(n + distinct)
  texts = _uri_like_texts(rng, n + 3, distinct)
  for values in (
    pa.array(texts, pa.string()).slice(3),
    pa.array(texts, pa.large_string()).slice(1, n),
    pa.array(texts, pa.string()).dictionary_encode().slice(2, n),
  ):
    plain = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
    want = pc.match_substring_regex(plain, KNOWN_URI_PATTERN).fill_null(False).to_numpy(zero_copy_only=False)
    assert _known_uris(values).tolist() == want.tolist()


@pytest.mark.parametrize('seed', range(4))
def test_whole_numbers_are_the_cells_the_digits_regex_matches(seed):
  """`_whole_numbers` (`ascii_is_decimal`) flags exactly what `^[0-9]+$` does: not other scripts' digits, full
  width digits, signs, spaces, newlines, empty values or nulls; of any text type, sliced."""
  import random

  from transforms.pii.batch import _whole_numbers

  rng = random.Random(seed)
  pieces = ['0', '7', '4111111111111111', '١٢٣', '１２', '٣', ' ', '\n', '-', '+', '.', 'e', 'a', 'é', '', '\u200b']
  texts = [
    None if rng.random() < 0.1 else ''.join(rng.choice(pieces) for _ in range(rng.randrange(0, 4))) for _ in range(500)
  ]
  texts += [str(rng.randrange(10**30)) for _ in range(50)] + ['9' * 5000, '1' * 4999 + 'x']
  for values in (
    pa.array(texts, pa.string()).slice(1),
    pa.array(texts, pa.large_string()).slice(2, 400),
    pa.array(texts, pa.string()).dictionary_encode().slice(3),
  ):
    plain = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
    want = pc.match_substring_regex(plain, r'^[0-9]+$').fill_null(False).to_numpy(zero_copy_only=False)
    assert _whole_numbers(values).tolist() == want.tolist()
