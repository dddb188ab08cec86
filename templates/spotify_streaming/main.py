"""Flex Template launcher of the Spotify streaming pipeline.

Dataflow's Python template launcher runs this file (`FLEX_TEMPLATE_PYTHON_PY_FILE`
in templates/Dockerfile, TEMPLATE=spotify_streaming) with the job's parameters and
Dataflow's own options, all as `--name=value`. It hands them to
`pipelines.spotify_streaming.run` (without waiting: a streaming job runs until
drained or cancelled) after the same fixes as the batch launcher
(`templates/spotify_batch/main.py`): boolean parameters become bare flags,
the workers' SDK image defaults to `$BEAM_SDK_CONTAINER_IMAGE`, and
`--pii_key_secret` (a Secret Manager secret version) is passed on as the PII
key's reference (workers read the secret; the job graph holds only its name). Source secrets (Kafka SASL password, Event Hubs connection
string) are read from the environment by the pipeline as on any runner.

Locally it runs the same way, e.g. over a bounded Kafka read on the DirectRunner::

    python templates/spotify_streaming/main.py --source=kafka --bootstrap_servers=127.0.0.1:9092 \\
        --topic=plays --bounded=true --tenant_id=acme --output=out/stream
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Optional

# The image copies the repository to /template and runs this file by path, so
# the repository root is not on sys.path by itself.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from templates.spotify_batch.main import LauncherError, pipeline_argv_from

__all__ = ['main']


def main(argv: Optional[list[str]] = None) -> int:
  logging.getLogger().setLevel(logging.INFO)
  # Registers the streaming options, so that their boolean flags are known to to_beam_argv.
  from pipelines import spotify_streaming

  try:
    beam_argv, pii_key_secret = pipeline_argv_from(sys.argv[1:] if argv is None else argv)
    # Bounded reads (--bounded, tests) finish; a streaming job is left running on its runner.
    result = spotify_streaming.run(beam_argv, wait=False, pii_key_secret=pii_key_secret)
    if '--bounded' in beam_argv or any(a.startswith('--max_records_per_partition') for a in beam_argv):
      result.wait_until_finish()
  except (LauncherError, spotify_streaming.ConfigError) as error:
    print(f'spotify_streaming launcher: {error}', file=sys.stderr)
    return 2
  logging.info('spotify_streaming submitted: %s', getattr(result, 'job_id', lambda: None)() or type(result).__name__)
  return 0


if __name__ == '__main__':
  sys.exit(main())
