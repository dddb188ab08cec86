"""What free-text PII redaction costs: TextScanner.redact_array against a bare regex pass.

Generates listening-event notes (by default 100,000, 5% with PII: emails,
phone numbers, cards, IBANs, IPs, URLs with credentials), then times
`TextScanner().redact_array` (prefilter + presidio on the flagged cells) and
a single `pyarrow.compute.match_substring_regex` over the same column, and
prints cells/s for both and their ratio.

Usage::

    .venv/bin/python benchmarks/bench_pii.py [--cells 100000] [--pii_share 0.05] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.pii import TextScanner  # pylint: disable=wrong-import-position

WORDS = ('love this track', 'on repeat', 'great bassline', 'skip', 'reminds me of summer', 'for the gym',
         'played at the party', 'best album of the year', 'too slow', 'chorus is perfect', 'what a remix',
         'listened 3 times', 'track 7 is better', 'since 2019', '10/10')
PII = ('mail me at fan{i}@example.com', 'call +44 20 7946 0958', 'text (415) 555-2671', 'card 4111 1111 1111 1111',
       'iban DE89 3704 0044 0532 0130 00', 'from 203.0.113.{j}', 'see https://user{i}:pw@host.example.net/x')


def generate_notes(n: int, pii_share: float, seed: int) -> pa.Array:
  rng = random.Random(seed)
  notes = []
  for i in range(n):
    text = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    if rng.random() < pii_share:
      text += ', ' + rng.choice(PII).format(i=i, j=i % 250)
    notes.append(text)
  return pa.array(notes, type=pa.string())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--cells', type=int, default=100_000)
  parser.add_argument('--pii_share', type=float, default=0.05)
  parser.add_argument('--seed', type=int, default=7)
  args = parser.parse_args(argv)

  notes = generate_notes(args.cells, args.pii_share, args.seed)
  scanner = TextScanner().setup()  # presidio set-up is not part of the per-cell cost

  start = time.perf_counter()
  pc.match_substring_regex(notes, r'[0-9]{3}[- ][0-9]{4}|@')
  regex_seconds = time.perf_counter() - start

  start = time.perf_counter()
  _, counts = scanner.redact_array(notes)
  redact_seconds = time.perf_counter() - start

  print(f'cells: {len(notes)}, with PII: {args.pii_share:.0%}')
  print(f'bare match_substring_regex: {len(notes) / regex_seconds:14,.0f} cells/s ({regex_seconds:.3f} s)')
  print(f'TextScanner.redact_array:   {len(notes) / redact_seconds:14,.0f} cells/s ({redact_seconds:.3f} s)')
  print(f'ratio (redact / regex time): {redact_seconds / regex_seconds:.1f}x')
  print('findings: ' + ', '.join(f'{k}={v}' for k, v in sorted(counts.items())))


if __name__ == '__main__':
  main()
