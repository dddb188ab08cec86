"""Keeping secrets out of messages: one way to mask the credentials of a URL.

Usage::

    from io_connectors.masking import mask_url
    mask_url('postgresql://music:s3cret@db:5432/music')   # 'postgresql://music:***@db:5432/music'
    mask_url('https://ghp_token@github.com/org/repo')      # 'https://***@github.com/org/repo'
"""

import re

__all__ = ['mask_url']

# The user info of scheme://userinfo@host...; also multi-host URLs
# (mongodb://u:p@h1:1,h2:2/db) that urllib cannot parse.
_USERINFO = re.compile(r'(?<=://)([^/@?#]*)@')


def mask_url(url: str) -> str:
  """`url` with its password replaced by ***; a user info without ':' (a token) is masked whole."""

  def mask(match):
    userinfo = match.group(1)
    return (userinfo.split(':', 1)[0] + ':***@') if ':' in userinfo else '***@'

  return _USERINFO.sub(mask, url or '')
