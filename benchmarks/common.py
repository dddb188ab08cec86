"""What the benchmark scripts share: printing a result and keeping it as JSON."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

__all__ = ['publish_result']


def publish_result(result: dict, name: str, report: Callable[[dict], str], as_json: bool, results_dir: str,
                   repo_root: str) -> None:
  """Prints the report and writes `results_dir/<name>-<UTC time>.json`, or (as_json) the JSON to stdout."""
  if as_json:
    print(report(result), file=sys.stderr, flush=True)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write('\n')
    return
  print(report(result))
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f'{name}-{result["started_utc"].replace(":", "")}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  print(f'result: {os.path.relpath(path, repo_root)}')
