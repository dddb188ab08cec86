"""Precision and recall of the text scanner per entity type, on the labelled corpus in pii_corpus/.

A positive counts as found when a finding of its type covers its value; any
other finding (on a negative, or of the wrong type, or elsewhere in a
positive's text) is a false positive of the finding's type. Targets:
precision >= 0.99 and recall >= 0.98 for every supported type.

    python -m tests.transforms.test_pii_corpus   # prints the table of docs/pii.md
"""

import collections
import json
import os

import pytest

from transforms.pii import SUPPORTED_ENTITIES, TextScanner
from transforms.pii import scanner as scanner_module

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pii_corpus')
MIN_PRECISION, MIN_RECALL = 0.99, 0.98


def _load(name):
  with open(os.path.join(CORPUS, name), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _findings(scanner, text):
  """What the scanner replaces in `text`: the prefilters pick the recognizers, as in redact_array."""
  wanted = [e for e in scanner.entities if scanner_module._PREFILTERS_PY[e].search(text)]
  return scanner.findings(text, wanted) if wanted else []


def evaluate(scanner):
  """{entity: {'positives', 'found', 'false_positives', 'precision', 'recall'}} and the misses, for the corpus."""
  stats = {e: collections.Counter() for e in SUPPORTED_ENTITIES}
  misses = []
  for item in _load('positives.jsonl'):
    text, value, entity = item['text'], item['value'], item['entity']
    start = text.index(value)
    end = start + len(value)
    stats[entity]['positives'] += 1
    hit = False
    for s, e, found_type, _ in _findings(scanner, text):
      if found_type == entity and s <= start and end <= e:
        hit = True
      elif not (found_type == entity and s < end and start < e):
        stats[found_type]['false_positives'] += 1
        misses.append(('false positive', found_type, text))
    if hit:
      stats[entity]['found'] += 1
    else:
      misses.append(('missed', entity, text))
  for item in _load('negatives.jsonl'):
    for _, _, found_type, _ in _findings(scanner, item['text']):
      stats[found_type]['false_positives'] += 1
      misses.append(('false positive', found_type, item['text']))
  table = {}
  for entity, c in stats.items():
    flagged = c['found'] + c['false_positives']
    table[entity] = dict(
      positives=c['positives'],
      found=c['found'],
      false_positives=c['false_positives'],
      precision=c['found'] / flagged if flagged else 1.0,
      recall=c['found'] / c['positives'] if c['positives'] else 0.0,
    )
  return table, misses


@pytest.fixture(scope='module')
def results():
  return evaluate(TextScanner().setup())


def test_the_corpus_is_big_enough_and_covers_every_type():
  positives, negatives = _load('positives.jsonl'), _load('negatives.jsonl')
  assert len(positives) >= 600 and len(negatives) >= 600
  assert {p['entity'] for p in positives} == set(SUPPORTED_ENTITIES)
  assert {
    'isrc',
    'iswc',
    'upc_ean',
    'spotify_id',
    'session_id',
    'epoch',
    'invoice_order',
    'version',
    'duration',
    'coordinates',
    'hash',
    'uuid',
  } <= {n['kind'] for n in negatives}


@pytest.mark.parametrize('entity', SUPPORTED_ENTITIES)
def test_precision_and_recall_per_type(results, entity):
  table, misses = results
  row = table[entity]
  mine = [m for m in misses if m[1] == entity][:10]
  assert row['precision'] >= MIN_PRECISION, (row, mine)
  assert row['recall'] >= MIN_RECALL, (row, mine)


def markdown_table(table) -> str:
  lines = ['| type | positives | found | false positives | precision | recall |', '|---|---:|---:|---:|---:|---:|']
  for entity, row in table.items():
    lines.append(
      f"| {entity} | {row['positives']} | {row['found']} | {row['false_positives']} | "
      f"{row['precision']:.3f} | {row['recall']:.3f} |"
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  computed, _ = evaluate(TextScanner().setup())
  print(markdown_table(computed))
