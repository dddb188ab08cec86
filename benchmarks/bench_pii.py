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

Usage::

    .venv/bin/python benchmarks/bench_pii.py [--cells 100000] [--pii_share 0.05] [--seed 7] [--before REF] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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
  args = parser.parse_args(argv)

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


if __name__ == '__main__':
  main()
