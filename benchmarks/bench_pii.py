"""What PII redaction costs: the text scanner of this tree against an earlier one, on the same cells.

Generates cells of three kinds (by default 100,000 of each, seeded):

- ``notes``: listening-event notes, 5% with PII (emails, phone numbers,
  cards, IBANs, IPs, URLs with credentials);
- ``ids``: id-like text that looks like PII to a careless scanner (session
  ids, epochs, invoice numbers, ISWCs, ISRCs, Spotify URIs, versions);
- ``repeats``: 1,000 distinct notes repeated (what a dictionary-encoded or
  low-cardinality column holds).

and, with `--rows` (default 50,000), the bundled sample's listening events
(`pipelines.sample_data`, clean rows, validated as `Validate` does), a whole
record batch through `redact_batch` (pseudonyms and every scanned column).

Times `TextScanner().redact_array` of this tree ("after") and of the scanner
at `--before` (default: the commit before transforms/pii became a package,
loaded from git into a module of its own) on each (best of --repeats runs, after a warm-up),
and prints cells/s for both, their ratio, and a bare
`pyarrow.compute.match_substring_regex` pass for scale. The before scanner
knows fewer entity types; the findings columns say what each one found.

With `--wide-rows` (default 20,000), the batch benchmark's second corpus
(`benchmarks/wide_corpus.py`: 40 columns, digit-bearing ids, free text in
20% of rows), read as the batch job reads it (declared fields as text, the
rest type-inferred) and validated, goes through `redact_batch` in batches of
`--batch-rows` twice per round, interleaved: "exact rejection off" (the
phone checks as before `transforms/pii/phones.py`: every region's matcher
for each text that passes the plausibility rules, every parse of
`phone_like_integer`, no libphonenumber pattern cache) and "on" (this tree;
the scanner's other changes, such as its memo, are in both). Both
must give the same batches and counts. `--profile FILE` writes a cProfile
of one "on" pass over the wide rows and prints its top functions.
The load average is printed beside every timed section.

Usage::

    .venv/bin/python benchmarks/bench_pii.py [--cells 100000] [--pii_share 0.05] [--seed 7] [--before REF] [--repeats 3]
    .venv/bin/python benchmarks/bench_pii.py --cells 0 --rows 0 --wide-rows 50000 --repeats 3 --profile wide.prof
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import importlib.util
import io
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from transforms.pii import TextScanner

# The last commit whose scanner was transforms/pii.py (one module).
DEFAULT_BEFORE = '848fbc26812c2fd0cf77b37900c5cd3979c76e3a'

WORDS = (
  'love this track',
  'on repeat',
  'great bassline',
  'skip',
  'reminds me of summer',
  'for the gym',
  'played at the party',
  'best album of the year',
  'too slow',
  'chorus is perfect',
  'what a remix',
  'listened 3 times',
  'track 7 is better',
  'since 2019',
  '10/10',
)
PII = (
  'mail me at fan{i}@example.com',
  'call +44 20 7946 0958',
  'text (415) 555-2671',
  'card 4111 1111 1111 1111',
  'iban DE89 3704 0044 0532 0130 00',
  'from 203.0.113.{j}',
  'see https://user{i}:pw@host.example.net/x',
)
IDS = (
  'sess-{n8}',
  '{epoch}',
  '{epoch}000',
  'Invoice 2024-{n6}',
  'T-{n9}-{d}',
  'USRC{n8}',
  'id {n8}',
  'spotify:track:4uLU6hMCjMI75M1A2tKUQC',
  'v{d}.{d}.{d}',
  'order #{n9}',
)


def generate_notes(n: int, pii_share: float, seed: int) -> pa.Array:
  rng = random.Random(seed)
  notes = []
  for i in range(n):
    text = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    if rng.random() < pii_share:
      text += ', ' + rng.choice(PII).format(i=i, j=i % 250)
    notes.append(text)
  return pa.array(notes, type=pa.string())


def generate_ids(n: int, seed: int) -> pa.Array:
  rng = random.Random(seed)
  digits = lambda k: ''.join(rng.choice('0123456789') for _ in range(k))
  return pa.array(
    [
      rng.choice(IDS).format(
        n8=digits(8), n6=digits(6), n9=digits(9), d=rng.randint(0, 9), epoch=rng.randint(1_600_000_000, 1_800_000_000)
      )
      for _ in range(n)
    ],
    type=pa.string(),
  )


def generate_repeats(n: int, pii_share: float, seed: int) -> pa.Array:
  distinct = generate_notes(1000, pii_share, seed).to_pylist()
  rng = random.Random(seed + 1)
  return pa.array([rng.choice(distinct) for _ in range(n)], type=pa.string())


def sample_batch(rows: int, seed: int) -> pa.RecordBatch:
  """Clean sample listening events as Validate leaves them, with their tenant column."""
  from pipelines import sample_data
  from transforms.entities import ListeningEvent
  from transforms.validate import validate_batch

  records = [r.record() for r in sample_data.iter_rows(rows=rows, seed=seed) if r.kind == 'clean']
  raw = pa.RecordBatch.from_pylist(records)
  valid, _ = validate_batch(raw, ListeningEvent)
  return valid


def load_before(ref: str):
  """transforms/pii.py at git `ref`, as a module of its own."""
  source = subprocess.run(
    ['git', 'show', f'{ref}:transforms/pii.py'], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location('pii_before', f.name)
  module = importlib.util.module_from_spec(spec)
  sys.modules['pii_before'] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  os.unlink(f.name)
  return module


def cells_per_second(scanner, cells: pa.Array, repeats: int):
  """The best of `repeats` timed runs, each on a fresh scanner (an empty memo), after a warm-up."""
  scanner.redact_array(cells.slice(0, 1000))  # warm-up: recognizers built, regexes compiled
  best, counts = float('inf'), None
  for _ in range(repeats):
    fresh = type(scanner)(scanner.entities, scanner.min_score).setup()
    start = time.perf_counter()
    _, counts = fresh.redact_array(cells)
    best = min(best, time.perf_counter() - start)
  return len(cells) / best, counts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--cells', type=int, default=100_000)
  parser.add_argument('--pii_share', type=float, default=0.05)
  parser.add_argument('--seed', type=int, default=7)
  parser.add_argument('--before', default=DEFAULT_BEFORE, help='git ref whose transforms/pii.py is "before"')
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per scanner and input; the best counts')
  parser.add_argument('--rows', type=int, default=50_000, help='sample listening events for redact_batch; 0: skip')
  parser.add_argument('--wide-rows', type=int, default=20_000, help='wide-corpus rows for redact_batch; 0: skip')
  parser.add_argument('--batch-rows', type=int, default=65_536, help='rows per record batch of the wide corpus')
  parser.add_argument('--profile', default=None, help='write a cProfile of one pass over the wide rows here')
  args = parser.parse_args(argv)
  if args.wide_rows:
    wide_rates(args.wide_rows, args.batch_rows, args.seed, args.repeats, args.profile)
  if not args.cells and not args.rows:
    return

  inputs = {
    'notes': generate_notes(args.cells, args.pii_share, args.seed),
    'ids': generate_ids(args.cells, args.seed),
    'repeats': generate_repeats(args.cells, args.pii_share, args.seed),
  }
  before = load_before(args.before)
  scanners = {'before': before.TextScanner().setup(), 'after': TextScanner().setup()}
  print(f'cells per input: {args.cells:,}; before = {args.before[:12]}')
  print(f'{"input":<8} {"regex pass":>12} {"before":>12} {"after":>12} {"after/before":>13}  findings before | after')
  for name, cells in inputs.items():
    if not len(cells):
      continue
    start = time.perf_counter()
    pc.match_substring_regex(cells, r'[0-9]{3}[- ][0-9]{4}|@')
    regex_rate = len(cells) / (time.perf_counter() - start)
    rates, found = {}, {}
    for label, scanner in scanners.items():
      rates[label], counts = cells_per_second(scanner, cells, args.repeats)
      found[label] = ', '.join(f'{k}={v}' for k, v in sorted(counts.items())) or '-'
    print(
      f'{name:<8} {regex_rate:>12,.0f} {rates["before"]:>12,.0f} {rates["after"]:>12,.0f} '
      f'{rates["after"] / rates["before"]:>12.2f}x  {found["before"]} | {found["after"]}'
    )
  if args.rows:
    batch_rates(before, sample_batch(args.rows, args.seed), args.repeats)


def batch_rates(before, batch: pa.RecordBatch, repeats: int):
  """rows/s of redact_batch, before and after, on one batch of sample listening events."""
  from transforms import pii
  from transforms.entities import ListeningEvent

  key = bytes(range(32))
  rates = {}
  for label, module in (('before', before), ('after', pii)):
    module.redact_batch(batch.slice(0, 100), ListeningEvent, module.MasterKey(key), module.TextScanner().setup())
    best = float('inf')
    for _ in range(repeats):
      scanner, master_key = module.TextScanner().setup(), module.MasterKey(key)
      start = time.perf_counter()
      module.redact_batch(batch, ListeningEvent, master_key, scanner)
      best = min(best, time.perf_counter() - start)
    rates[label] = batch.num_rows / best
  print(
    f'redact_batch on {batch.num_rows:,} sample listening events ({batch.num_columns} columns): '
    f'before {rates["before"]:,.0f} rows/s, after {rates["after"]:,.0f} rows/s, '
    f'after/before {rates["after"] / rates["before"]:.2f}x'
  )


def load_average() -> str:
  return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def wide_batches(rows: int, batch_rows: int, seed: int):
  """Clean rows of the wide corpus as the batch job has them before RedactPII: read, then validated."""
  import pyarrow.csv as pa_csv

  from benchmarks import wide_corpus
  from pipelines import sample_data
  from transforms.entities import ListeningEvent
  from transforms.records import TENANT_COLUMN
  from transforms.validate import validate_batch

  with tempfile.TemporaryDirectory() as tmp:
    # Clean rows only: the job sets malformed rows and duplicates aside before RedactPII.
    [sample_csv] = sample_data.write_listening_events(
      os.path.join(tmp, 'sample'), rows=rows, files=1, seed=seed, malformed=0.0, duplicates=0.0
    )
    path = os.path.join(tmp, 'wide.csv')
    wide_corpus.write_wide_csv(sample_csv, path, seed)
    # As the job's CSV reader: declared fields as text (validation converts
    # them), the undeclared columns type-inferred, only '' null.
    declared = list(ListeningEvent.model_fields) + [TENANT_COLUMN]
    convert = pa_csv.ConvertOptions(
      column_types={c: pa.string() for c in declared}, null_values=[''], strings_can_be_null=True
    )
    table = pa_csv.read_csv(path, convert_options=convert)
  batches = []
  for offset in range(0, table.num_rows, batch_rows):
    raw = table.slice(offset, batch_rows).combine_chunks().to_batches()[0]
    valid, _ = validate_batch(raw, ListeningEvent)
    batches.append(valid)
  return batches


@contextlib.contextmanager
def exact_rejection(enabled: bool):
  """The phone checks as in this tree, or (off) as before `transforms/pii/phones.py`.

  Off: every region's matcher runs for each text that passes the
  plausibility rules, phone_like_integer parses every reading, and
  libphonenumber's pattern cache is off (the re module's cache only).
  """
  from phonenumbers import re_util

  from transforms.pii import recognizers

  if enabled:
    yield
    return
  saved = (
    recognizers.regions_that_may_match,
    recognizers.may_be_valid_international,
    recognizers.may_be_valid_in_region,
    re_util._COMPILED_PATTERNS,
  )
  recognizers.regions_that_may_match = lambda text, regions, leniency=1: list(regions)
  recognizers.may_be_valid_international = lambda digits: True
  recognizers.may_be_valid_in_region = lambda digits, region: True
  re_util._COMPILED_PATTERNS = None
  try:
    yield
  finally:
    (
      recognizers.regions_that_may_match,
      recognizers.may_be_valid_international,
      recognizers.may_be_valid_in_region,
      re_util._COMPILED_PATTERNS,
    ) = saved


def _redact_all(batches, scanner, master_key):
  from transforms import pii
  from transforms.entities import ListeningEvent

  out, counts = [], collections.Counter()
  for batch in batches:
    redacted, found = pii.redact_batch(batch, ListeningEvent, master_key, scanner)
    out.append(redacted)
    counts.update(found)
  return out, counts


def wide_rates(rows: int, batch_rows: int, seed: int, repeats: int, profile_path=None):
  """rows/s of redact_batch on the wide corpus with the exact phone rejection off and on, interleaved."""
  from transforms import pii

  print(f'load average before generating the wide corpus: {load_average()}')
  batches = wide_batches(rows, batch_rows, seed)
  n = sum(b.num_rows for b in batches)
  key = pii.MasterKey(bytes(range(32)))
  print(f'wide corpus: {n:,} clean rows of {rows:,}, {batches[0].num_columns} columns, {len(batches)} batch(es)')
  _redact_all([b.slice(0, 200) for b in batches[:1]], TextScanner().setup(), key)  # warm-up
  best = {'off': float('inf'), 'on': float('inf')}
  results = {}
  for round_ in range(repeats):
    for label in ('off', 'on'):
      scanner = TextScanner().setup()
      with exact_rejection(label == 'on'):
        before_load = load_average()
        start = time.perf_counter()
        results[label] = _redact_all(batches, scanner, key)
        elapsed = time.perf_counter() - start
      best[label] = min(best[label], elapsed)
      print(
        f'  round {round_ + 1}, exact rejection {label:<3}: {elapsed:8.2f} s, {n / elapsed:>9,.0f} rows/s '
        f'(load average {before_load} -> {load_average()})'
      )
  same = all(a.equals(b) for a, b in zip(results['off'][0], results['on'][0])) and (
    results['off'][1] == results['on'][1]
  )
  if not same:
    raise SystemExit('the exact phone rejection changed the redacted batches or the counts')
  found = ', '.join(f'{k}={v}' for k, v in sorted(results['on'][1].items()) if not k.startswith('PSEUDONYMISED'))
  print(
    f'redact_batch on {n:,} wide rows: off {n / best["off"]:,.0f} rows/s, on {n / best["on"]:,.0f} rows/s, '
    f'on/off {best["off"] / best["on"]:.2f}x (best of {repeats}); same batches and counts: {found or "-"}'
  )
  if profile_path:
    profiler = cProfile.Profile()
    scanner = TextScanner().setup()
    profiler.enable()
    _redact_all(batches, scanner, key)
    profiler.disable()
    profiler.dump_stats(profile_path)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats('cumulative').print_stats(30)
    print(f'profile of one pass (exact rejection on), load average {load_average()}: {profile_path}')
    print(text.getvalue())


if __name__ == '__main__':
  main()
