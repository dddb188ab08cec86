"""The batch benchmark's second corpus: the sample listening events made wide and id-heavy.

Every line of the sample CSV (`pipelines.sample_data`, same rows and seed) gets
25 undeclared columns, 40 in all: digit-bearing ids of the kinds real exports
carry (session ids, order references, serial numbers, ISRCs, epochs, invoice
numbers, ad ids, request ids), plain numbers and flags, and a free-text
``comment`` in 20% of the rows, mostly distinct sentences with numbers in
them, 5% of which hold an email address or a phone number. The extra columns
change neither which rows are clean, malformed or duplicated nor the
expected counts: ``_expected.json`` is the sample's, with the corpus named.

Deterministic: the same rows and seed give the same bytes (the extra values
come from a generator seeded with (seed, chunk number), chunks of a fixed
number of lines).

Usage::

    python benchmarks/wide_corpus.py --rows 1000000 --seed 7 --out benchmarks/data/wide
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ['EXTRA_COLUMNS', 'WIDE_VERSION', 'write_wide_csv']

WIDE_VERSION = 1
_CHUNK_LINES = 100_000
EXTRA_COLUMNS = (
  'session_id',
  'order_ref',
  'device_serial',
  'isrc',
  'request_id',
  'event_epoch_ms',
  'invoice_no',
  'ad_id',
  'partner_id',
  'campaign_id',
  'build_number',
  'app_version',
  'cdn_node',
  'playlist_position',
  'volume_pct',
  'latency_ms',
  'buffer_events',
  'crossfade_s',
  'shuffle',
  'offline',
  'locale',
  'os_version',
  'referrer',
  'experiment',
  'comment',
)
_LOCALES = ('en_US', 'en_GB', 'de_DE', 'ja_JP', 'sv_SE', 'pt_BR', 'fr_FR', 'es_MX')
_OS = ('iOS 17.4', 'iOS 16.7', 'Android 14', 'Android 13', 'Windows 11', 'macOS 14.4', 'Linux')
_OPENERS = (
  'played this',
  'skipped track',
  'loved the bridge at',
  'volume jumped to',
  'lyrics out of sync by',
  'queue had',
  'heard it',
  'the remix from',
  'crackle at second',
  'saved to list',
  'best song of',
  'stopped after',
)
_CLOSERS = (
  'times today',
  'on the train',
  'seconds in',
  'percent',
  'ms or so',
  'songs left',
  'in a row',
  'remaster',
  'again',
  'for the party',
  'before lunch',
  'with friends',
)
_PII_COMMENTS = ('reach me at {} after the show', 'my number is {} call anytime', 'send the receipt to {}')


def _digits(rng, low: int, high: int, n: int, width: int = 0) -> pa.Array:
  values = pa.array(rng.integers(low, high, n)).cast(pa.string())
  return pc.utf8_lpad(values, width, '0') if width else values


def _prefixed(prefix: str, values: pa.Array, suffix: str = '') -> pa.Array:
  return pc.binary_join_element_wise(prefix, values, suffix, '')


def _pick(rng, options: Sequence[str], n: int) -> pa.Array:
  return pa.array(options, pa.string()).take(pa.array(rng.integers(0, len(options), n)))


def _comments(rng, n: int) -> pa.Array:
  numbers = _digits(rng, 0, 100000, n)
  text = pc.binary_join_element_wise(_pick(rng, _OPENERS, n), numbers, _pick(rng, _CLOSERS, n), ' ')
  people = rng.integers(0, 5000, n)
  emails = _prefixed('fan', pa.array(people).cast(pa.string()), '@example.net')
  phones = _prefixed('+1 415 555 ', _digits(rng, 0, 10000, n, 4))
  contact = pc.if_else(pa.array(rng.random(n) < 0.5), emails, phones)
  template = rng.integers(0, len(_PII_COMMENTS), n)
  heads = pa.array([t.split('{}')[0] for t in _PII_COMMENTS]).take(pa.array(template))
  tails = pa.array([t.split('{}')[1] for t in _PII_COMMENTS]).take(pa.array(template))
  with_pii = pc.binary_join_element_wise(heads, contact, tails, '')
  has_comment = rng.random(n) < 0.20
  has_pii = has_comment & (rng.random(n) < 0.05)
  out = pc.if_else(pa.array(has_pii), with_pii, text)
  return pc.if_else(pa.array(has_comment), out, pa.scalar('', pa.string()))


def _extra_fields(rng, n: int) -> pa.Array:
  """One ',<25 values>\\n' suffix per line."""
  request_ids = pa.array([f'{v:016x}' for v in rng.integers(0, 2**63, n).tolist()], pa.string())
  columns = [
    _prefixed('sess-', _digits(rng, 10_000_000, 100_000_000, n)),
    _prefixed('ORD-2024-', _digits(rng, 0, 1_000_000, n, 6)),
    _prefixed('SN', _digits(rng, 0, 10**10, n, 10)),
    _prefixed('USRC124', _digits(rng, 0, 100000, n, 5)),
    request_ids,
    _digits(rng, 1_717_000_000_000, 1_719_000_000_000, n),
    _prefixed('INV', _digits(rng, 0, 10**9, n, 9)),
    _digits(rng, 10**11, 10**12, n),
    _prefixed('p-', _digits(rng, 0, 10**6, n, 6)),
    _prefixed('cmp_', _digits(rng, 0, 10**5, n, 5)),
    _prefixed('build ', _digits(rng, 1000, 10000, n)),
    pc.binary_join_element_wise('8.9', _digits(rng, 0, 100, n), _digits(rng, 0, 1000, n), '.'),
    _prefixed('edge-', _digits(rng, 0, 1000, n, 3), '.fra'),
    _digits(rng, 1, 501, n),
    _digits(rng, 0, 101, n),
    _digits(rng, 5, 2000, n),
    _digits(rng, 0, 6, n),
    _digits(rng, 0, 13, n),
    _pick(rng, ('true', 'false'), n),
    _pick(rng, ('true', 'false', 'false', 'false'), n),
    _pick(rng, _LOCALES, n),
    _pick(rng, _OS, n),
    _prefixed('https://example.com/p/', _digits(rng, 0, 10**7, n)),
    _prefixed('exp-', _digits(rng, 0, 10**4, n, 4), '-b'),
    _prefixed('', _comments(rng, n), '\n'),  # the line's end
  ]
  return pc.binary_join_element_wise('', *columns, ',')


def _widen_chunk(lines: List[bytes], seed: int, chunk: int) -> bytes:
  rng = np.random.Generator(np.random.PCG64([seed, chunk]))
  suffix = _extra_fields(rng, len(lines)).cast(pa.binary())
  joined = pc.binary_join_element_wise(pa.array(lines, pa.binary()), suffix, b'')
  offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1)
  return joined.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def write_wide_csv(sample_csv: str, out_path: str, seed: int) -> None:
  """`sample_csv` with the extra columns appended to every line, written to `out_path` (then renamed)."""
  tmp = out_path + '.tmp'
  with open(sample_csv, 'rb') as source, open(tmp, 'wb') as out:
    header = source.readline().rstrip(b'\r\n')
    out.write(header + (',' + ','.join(EXTRA_COLUMNS) + '\n').encode('ascii'))
    chunk = 0
    while True:
      lines = []
      for line in source:
        lines.append(line.rstrip(b'\n'))
        if len(lines) == _CHUNK_LINES:
          break
      if not lines:
        break
      out.write(_widen_chunk(lines, seed, chunk))
      chunk += 1
  os.replace(tmp, out_path)


def ensure_wide(sample_dir: str, sample_csv: str, expected: dict, out_dir: str, seed: int) -> tuple:
  """(CSV path, expected summary) of the wide corpus beside the sample's, generated unless cached."""
  path = os.path.join(out_dir, os.path.basename(sample_csv).replace('listening_events', 'listening_events_wide'))
  summary_path = os.path.join(out_dir, '_expected.json')
  wanted = dict(
    expected, corpus='wide', wide_version=WIDE_VERSION, columns=list(expected['columns']) + list(EXTRA_COLUMNS)
  )
  try:
    with open(summary_path, encoding='utf-8') as f:
      if json.load(f) == wanted and os.path.exists(path):
        return path, wanted
  except (OSError, ValueError):
    pass
  os.makedirs(out_dir, exist_ok=True)
  write_wide_csv(sample_csv, path, seed)
  with open(summary_path, 'w', encoding='utf-8') as f:
    json.dump(wanted, f, indent=1)
  return path, wanted


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='wide_corpus.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--rows', type=int, default=1_000_000)
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument('--out', required=True, help='directory of the wide corpus')
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from pipelines import sample_data

  sample_dir = os.path.join(args.out, 'sample')
  [sample_csv] = sample_data.write_listening_events(sample_dir, rows=args.rows, files=1, seed=args.seed)
  path, _ = ensure_wide(sample_dir, sample_csv, sample_data.load_expected(sample_dir), args.out, args.seed)
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
