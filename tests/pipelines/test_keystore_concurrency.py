"""The key store under concurrent creation: two workers that meet a new subject at once end with one data key.

Each worker has its own `PostgresKeyStore` (its own connection to the local
PostgreSQL server). Both are held at a barrier inside `insert_absent`, after
each has read the store, found no key and made its own: so both really try
to insert a different key for the same subjects, the race a multi-worker job
meets on every new user.
"""

import threading

import pytest

from pipelines.keystore import KEY_STORE_VARIABLE, PostgresKeyStore
from transforms.pii.crypto_shred import DataKeys, decrypt_value, encrypt_value
from transforms.pii.keys import load_master_key

KEY = 'cd' * 32
TENANT = 'acme'


class _RacingStore(PostgresKeyStore):
  """A store whose inserts wait until every racer has made its own keys; records what each tried to insert."""

  def __init__(self, barrier, tried):
    super().__init__()
    self._barrier = barrier
    self._tried = tried

  def insert_absent(self, tenant, rows):
    self._tried.append({subject: wrapped for subject, _, _, wrapped in rows})
    self._barrier.wait(timeout=30)
    super().insert_absent(tenant, rows)


@pytest.mark.parametrize('racers', [2, 4])
def test_concurrent_creation_of_a_new_subjects_key_ends_with_one_key_all_use(pg, monkeypatch, racers):
  # The URL (with its password) from the environment, as a deployment gives it.
  monkeypatch.setenv(KEY_STORE_VARIABLE, f'{pg.url}?table={pg.table("keys")}')
  master_key = load_master_key(environ={'PII_MASTER_KEY': KEY})
  PostgresKeyStore().kek_version(TENANT)  # the table exists before the race (its creation is serialised apart)
  subjects = [f'{n:02d}' + 'ab' * 31 for n in range(3)]  # hex pseudonyms, as RedactPII makes them
  barrier = threading.Barrier(racers)
  tried, results, errors = [], {}, []

  def worker(n):
    store = _RacingStore(barrier, tried)
    try:
      keys = DataKeys(store, master_key)
      found = keys.for_subjects(TENANT, subjects)
      # What a worker writes with the key it got: a ciphertext per subject.
      results[n] = {
        s: (data_key, encrypt_value(data_key, TENANT, 'user_id', s, version, f'raw-{s[:2]}'))
        for s, (version, data_key) in found.items()
      }
    except Exception as e:  # reported below with the worker's number
      errors.append((n, e))
      barrier.abort()
    finally:
      store.close()

  threads = [threading.Thread(target=worker, args=(n,)) for n in range(racers)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=60)
  assert not errors, errors
  # The race happened: every worker made its own, different key for every subject and tried to insert it.
  assert len(tried) == racers and all(len({t[s] for t in tried}) == racers for s in subjects)
  # One key per subject in the store, and every worker ended with that key.
  rows = pg.execute(f'SELECT subject, count(*) FROM {pg.table("keys")} GROUP BY subject ORDER BY subject').fetchall()
  assert rows == [(s, 1) for s in subjects]
  for s in subjects:
    assert len({results[n][s][0] for n in range(racers)}) == 1
  # No lost ciphertext: what any worker encrypted reads back through a fresh view of the store.
  reader = DataKeys(PostgresKeyStore(), master_key)
  for n in range(racers):
    for s in subjects:
      assert decrypt_value(reader, TENANT, 'user_id', results[n][s][1]) == f'raw-{s[:2]}'
