"""What the benchmark scripts share: the machine's description, printing a result and keeping it as JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from typing import Callable, Sequence

__all__ = ['machine_info', 'publish_result', 'write_row_count', 'read_row_count', 'compile_package']


def machine_info(packages: Sequence[str]) -> dict:
  """CPUs, CPU model, memory, Python and the versions of `packages` (None when not installed)."""
  info = {
    'nproc': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
    'cpu_count': os.cpu_count(),
    'python': platform.python_version(),
    'platform': platform.platform(),
    'cpu': platform.processor() or platform.machine(),
  }
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      models = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    if models:
      info['cpu'] = models[0]
  except OSError:
    pass
  if hasattr(os, 'sysconf') and 'SC_PHYS_PAGES' in os.sysconf_names:
    info['memory_gb'] = round(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30, 1)
  for dist in packages:
    try:
      info[dist.replace('-', '_')] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      info[dist.replace('-', '_')] = None
  return info


def compile_package(repo_root: str) -> None:
  """The package's bytecode written, as an installed package has it (pip compiles what it installs): with
  PYTHONDONTWRITEBYTECODE set, or in a fresh checkout, every timed command and each of its Beam workers would
  otherwise compile the modules from source at start-up (~0.3 CPU s a process, measured)."""
  import compileall

  for folder in ('pipelines', 'transforms', 'io_connectors'):
    compileall.compile_dir(os.path.join(repo_root, folder), quiet=1)


def publish_result(
  result: dict, name: str, report: Callable[[dict], str], as_json: bool, results_dir: str, repo_root: str
) -> None:
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


def write_row_count(records, path: str):
  """Adds to the pipeline of `records` (RecordBatches) the writing of their total row count to `path`."""
  import apache_beam as beam

  def write(n):
    with open(path, 'w', encoding='utf-8') as f:
      f.write(str(n))

  return (
    records
    | 'RowsPerBatch' >> beam.Map(lambda b: b.num_rows)
    | 'TotalRows' >> beam.CombineGlobally(sum)
    | 'WriteCount' >> beam.Map(write)
  )


def read_row_count(path: str) -> int:
  with open(path, encoding='utf-8') as f:
    return int(f.read())
