"""Patterns run on users' values stay linear in a value's length (no catastrophic backtracking).

Each test times a pattern on a hostile value far longer than a fix needs
(the `regex` module's `timeout=`, or a forked child for the `re` module's,
which has none), with a margin of 500x or more over what the linear pattern
takes, and checks that the rewritten pattern matches what the old one did on
values such as users write.
"""

from __future__ import annotations

import multiprocessing
import re

import pytest
import regex


def _finishes_within(seconds: float, function, *args) -> bool:
  """Whether `function(*args)` returns within `seconds`, run in a forked child that is killed when it does not."""
  child = multiprocessing.get_context('fork').Process(target=function, args=args, daemon=True)
  child.start()
  child.join(seconds)
  if child.is_alive():
    child.kill()
    child.join()
    return False
  return child.exitcode == 0


def _fullmatch_all(pattern: str, texts) -> None:
  for text in texts:
    re.fullmatch(pattern, text)


def _comparable_names(names) -> None:
  from transforms.entities import comparable_name

  for name in names:
    comparable_name(name)


def _email_addresses(values) -> None:
  from transforms.pii.pseudonyms import is_email_address

  for value in values:
    is_email_address(value)


# 40,000 characters: the old patterns took 30 s and more on each (quadratic), the new ones under 10 ms.
_LONG = 40_000


@pytest.mark.unit
def test_the_number_field_pattern_is_linear_in_a_values_length():
  """An int or float field's text (`FLOAT_PATTERN`, tried on every string such a field receives) split a run
  of digits between `[0-9]+` and `[0-9]*` every way there is before failing on its end."""
  from transforms.entities import FLOAT_PATTERN

  digits = ['1' * _LONG + 'x', '1' * _LONG + '.' + '1' * _LONG + 'x', ' -' + '9' * _LONG + 'e']
  assert _finishes_within(3.0, _fullmatch_all, FLOAT_PATTERN, digits)


@pytest.mark.unit
def test_the_email_patterns_are_linear_in_a_values_length():
  """An email field's pattern (`EMAIL_PATTERN`) and `pseudonyms`' (asked of every identifier pseudonymised)
  tried each dot of the domain as its last, each time reading on to the value's end."""
  from transforms.entities import EMAIL_PATTERN

  domains = ['a@' + 'a.' * (_LONG // 2) + '@', 'a@' + 'b.' * (_LONG // 2) + ' x']
  assert _finishes_within(3.0, _fullmatch_all, EMAIL_PATTERN, domains)
  assert _finishes_within(3.0, _email_addresses, domains)


@pytest.mark.unit
def test_a_column_name_in_capitals_is_made_comparable_in_linear_time():
  """A headerless CSV's first row is its column names: a long cell in capitals was read from each letter."""
  assert _finishes_within(3.0, _comparable_names, ['A' * _LONG, 'AB' * (_LONG // 2) + ' x', 'A1' * (_LONG // 2)])


_NUMBER_TEXTS = [
  '0',
  '1',
  '-1',
  '+7',
  '12',
  '1.',
  '.5',
  '1.5',
  '-0.25',
  '1e3',
  '1E+3',
  '1.5e-3',
  '.5e2',
  ' 42 ',
  '\t3.0\t',
  '1.2.3',
  '1e',
  'e3',
  '.',
  '-',
  '',
  ' ',
  '1 2',
  '0x10',
  '1_000',
  'inf',
  'NaN',
  '١٢',
  '12a',
  '1..2',
  '+-1',
  '1.e5',
  '00012',
  '9223372036854775808',
  '1' * 30 + '.' + '0' * 30,
]
_EMAIL_TEXTS = [
  'ana@example.org',
  'ana.perez+1@mail.example.co.uk',
  'a@b.c',
  'a@.b.c',
  'a@b..c',
  'a@b.',
  'a@.b',
  'a@b',
  'a@bc.',
  'a@..',
  'a@...',
  '@b.c',
  'a@@b.c',
  'a b@c.d',
  'a@b.c d',
  'a@b.c\n',
  'x@-.-',
  'é@ü.de',
  'a@b.c.',
  'a@.bc.',
  'a.b@c',
  'a@b.c@d.e',
  '',
  '.@..',
  'Bob@Example.COM',
  ' ana@example.org',
  'u1',
]
_NAMES = [
  'IPAddress',
  'playedAt',
  'PLAYED_AT',
  'HTTPServerURL',
  'userID',
  'ABCDeFGHi',
  'A',
  'Ab',
  'AB',
  'ABc',
  'aBC',
  'iOSVersion',
  'XMLHttpRequest',
  'ÉTATCivil',
  'track ID',
  'X1Y2Zz',
  'MSISDNNumber',
]


@pytest.mark.unit
def test_the_linear_field_patterns_match_what_the_old_ones_did():
  from transforms import entities
  from transforms.pii import pseudonyms

  old_float = r'^[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$'
  old_email = r'^[^@ \t\r\n]+@[^@ \t\r\n]+\.[^@ \t\r\n]+$'
  old_address = r'[^@\s]+@[^@\s]+\.[^@\s]+'
  for text in _NUMBER_TEXTS:
    assert bool(re.fullmatch(old_float, text)) == bool(re.fullmatch(entities.FLOAT_PATTERN, text)), text
  for text in _EMAIL_TEXTS:
    assert bool(re.fullmatch(old_email, text)) == bool(re.fullmatch(entities.EMAIL_PATTERN, text)), text
    assert bool(re.fullmatch(old_address, text)) == pseudonyms.is_email_address(text), text
  old_acronym = re.compile(r'([A-Z]+)([A-Z][a-z])')
  for name in _NAMES:
    assert entities._ACRONYM_BOUNDARY.sub('_', name) == old_acronym.sub(r'\1_\2', name), name
