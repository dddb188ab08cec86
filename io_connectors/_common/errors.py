"""Connector errors: one base class, and the one-line form of an exception.

Every connector's error class derives from `ConnectorError`, so a caller (the
`check` command, a pipeline's entry point) can catch any connector's failure
in one place and print it as one clear line; messages never hold secrets
(see `io_connectors._common.masking`).
"""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ['ConnectorError', 'first_line', 'short_error']


class ConnectorError(Exception):
  """A connector failed: a server unreachable, credentials refused, input unreadable."""


def short_error(error: BaseException, mask: Optional[Callable[[str], str]] = None) -> str:
  """`Type: first line of the message`, at most 500 characters (for dead letters and logs).

  mask: masks the secrets in the line (e.g. `masking.mask_secrets` with the
  connector's), before it is cut: cut first, a secret the cut goes through
  would keep its first characters.
  """
  text = str(error).strip().splitlines()
  line = f'{type(error).__name__}: {text[0] if text else ""}'
  return (mask(line) if mask is not None else line)[:500]


def first_line(error: BaseException) -> str:
  """The first line of `error`'s message, or its type's name when it has none (drivers' messages run long)."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
