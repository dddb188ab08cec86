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


def test_a_shredded_subject_that_returns_gets_the_next_key_version_and_old_ciphertexts_stay_shredded(pg, monkeypatch):
  """Shredding leaves a marker (the newest version, no key): the returning subject's key is version 2, so a
  version-1 ciphertext made before the shredding reads as shredded, not as a forgery under the new key."""
  monkeypatch.setenv(KEY_STORE_VARIABLE, f'{pg.url}?table={pg.table("keys")}')
  master_key = load_master_key(environ={'PII_MASTER_KEY': KEY})
  store = PostgresKeyStore()
  subject, other = '01' + 'ab' * 31, '02' + 'ab' * 31
  keys = DataKeys(store, master_key)
  found = keys.for_subjects(TENANT, [subject, other])
  (v1, k1), (_, k_other) = found[subject], found[other]
  before = encrypt_value(k1, TENANT, 'user_id', subject, v1, 'u1')
  kept = encrypt_value(k_other, TENANT, 'user_id', other, 1, 'u2')
  assert store.rotate(TENANT, master_key)['keys'] == 2  # KEK version 2 before the shredding

  assert store.delete(TENANT, [subject]) == 1
  assert decrypt_value(DataKeys(store, master_key), TENANT, 'user_id', before) is None
  # The subject returns: a new key past the shredded version, wrapped under the tenant's newest KEK.
  returned = DataKeys(store, master_key).for_subjects(TENANT, [subject])[subject]
  assert returned[0] == v1 + 1 and returned[1] != k1
  after = encrypt_value(returned[1], TENANT, 'user_id', subject, returned[0], 'u1 again')
  reader = DataKeys(store, master_key)
  assert decrypt_value(reader, TENANT, 'user_id', before) is None
  assert decrypt_value(reader, TENANT, 'user_id', after) == 'u1 again'
  assert decrypt_value(reader, TENANT, 'user_id', kept) == 'u2'
  assert store.kek_version(TENANT) == 2

  # Rotation re-wraps keys, not markers; a second shredding deletes the new key and moves the marker on.
  assert store.rotate(TENANT, master_key)['keys'] == 2
  assert store.delete(TENANT, [subject]) == 1
  assert store.delete(TENANT, [subject]) == 0  # a marker alone: no key to delete
  reader = DataKeys(store, master_key)
  assert (
    decrypt_value(reader, TENANT, 'user_id', after) is None and decrypt_value(reader, TENANT, 'user_id', kept) == 'u2'
  )
  assert DataKeys(store, master_key).for_subjects(TENANT, [subject])[subject][0] == v1 + 2
  rows = pg.execute(
    f'SELECT key_version, kek_version, length(wrapped_key) > 0 FROM {pg.table("keys")} WHERE subject = %s ORDER BY 1',
    (subject,),
  ).fetchall()
  assert rows == [(2, 3, False), (3, 3, True)]
  store.close()
