"""Apache Beam pipelines that ingest, clean and deliver a music-streaming platform's data."""

import setuptools

BEAM = 'apache-beam==2.77.0'

EXTRAS = {
  # Beam 2.77's apache_beam.dataframe and ReadFromCsv break on pandas 3.
  'dataframe': ['pandas>=2.0,<2.4'],
  'gcp': ['apache-beam[gcp]==2.77.0', 'google-cloud-storage>=2.14'],
  'aws': ['apache-beam[aws]==2.77.0', 'boto3>=1.34'],
  # TensorFlow alone is ~2 GB: only ML users pay for it.
  'ml': [
    'tensorflow>=2.16',
    'tensorflow-transform>=1.21,<1.22',
    'tensorflow-metadata>=1.21,<1.22',
    'tensorflow-datasets>=4.9',
    # tfds reads its resources through etils.epath, which needs it but does not declare it.
    'importlib_resources>=6',
    'mlflow>=3.10',
    'datasets>=3.0',
    # The feature store (pipelines.feature_store): Feast 0.67 is the first recent release that accepts dill 0.4
    # (datasets' multiprocess needs it); it needs tenacity<9 and prometheus-client<0.25 (pinned below).
    # Not feast[redis]: that extra caps redis<8; Feast's Redis online store runs on our redis 8.1 (tested).
    'feast==0.67.0',
    'redis==8.1.0',
  ],
  # Source and sink families: each imports its client only when used.
  # psycopg plans and coordinates; ADBC's driver reads splits by binary COPY straight into Arrow (C++).
  'postgres': ['psycopg[binary]==3.3.9', 'adbc-driver-postgresql==1.13.0'],
  'mongodb': ['pymongo>=4.6'],
  'redis': ['redis==8.1.0'],
  'search': ['opensearch-py==3.2.0', 'elasticsearch==8.19.2'],
  'clickhouse': ['clickhouse-connect==1.12.0'],
  'kafka': ['confluent-kafka==2.16.1'],
  'pulsar': ['pulsar-client==3.13.0'],
  'websocket': ['websockets==17.4'],
  'webhooks': ['starlette==1.10.0', 'uvicorn==0.54.0', 'redis==8.1.0'],
  # Mixpanel's import sink and Google Analytics 4 reports (io_connectors.apis.analytics).
  'analytics': ['mixpanel==5.4.1', 'google-analytics-data==0.23.3'],
  # OpenLineage run events (--openlineage_url).
  'lineage': ['openlineage-python==1.54.0'],
  # --output_format iceberg / delta (SQL catalogs on PostgreSQL through psycopg, the postgres extra).
  'tables': ['pyiceberg[sql-sqlite,pyarrow,pyiceberg-core]==0.12.0', 'deltalake==1.6.6', 'psycopg[binary]==3.3.9'],
  # Spotify privacy exports: JSON arrays streamed member by member.
  'exports': ['ijson==3.6.0'],
  # Audio features: librosa (numba, scipy, soxr) and libsndfile's decoders.
  'audio': ['librosa==0.11.0', 'soundfile==0.14.0'],
  # --otlp_endpoint (pipelines.tracing): OpenTelemetry spans over OTLP/HTTP.
  'tracing': ['opentelemetry-sdk==1.45.2', 'opentelemetry-exporter-otlp-proto-http==1.45.2'],
  # Metrics out (pipelines.prometheus_export) and the monitoring job's collectors (io_connectors.monitoring).
  # prometheus-client 0.24: the newest Feast (the ml extra) accepts (<0.25); the API used here is the same.
  'monitoring': ['prometheus-client==0.24.1', 'psutil==7.2.2'],
  'test': [
    'pytest>=8',
    'pytest-xdist>=3.5',
    'moto[server]>=5.0',
    'gcp-storage-emulator>=2024.8.3',
    'pandas>=2.0,<2.4',
    'jsonschema>=4',
    'openapi-schema-validator==0.9.0',
    'httpx==0.28.1',
    'connectorx==0.4.6',
    # ClickHouse's engine in process: no ClickHouse server installs on our machines (see README).
    'chdb==4.4.0',
    # A real SMTP server in process for the alert email channel's tests (io_connectors.sinks.alerts).
    'aiosmtpd==1.4.6',
    # scripts/lint.sh: pinned, since a new release may add findings.
    'ruff==0.17.6',
    'mypy==2.4.1',
  ],
}
# The tests talk to every family's real server.
EXTRAS['test'] += sorted(
  {
    req
    for name in (
      'postgres',
      'mongodb',
      'redis',
      'search',
      'clickhouse',
      'kafka',
      'pulsar',
      'websocket',
      'webhooks',
      'analytics',
      'lineage',
      'tables',
      'exports',
      'audio',
      'tracing',
      'monitoring',
    )
    for req in EXTRAS[name]
  }
)
EXTRAS['all'] = sorted({req for name, reqs in EXTRAS.items() if name != 'ml' for req in reqs} | set(EXTRAS['ml']))

setuptools.setup(
  name='music-beam-pipelines',
  version='0.1.0',
  description=__doc__,
  long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
  long_description_content_type='text/markdown',
  license='MIT',
  python_requires='>=3.10',
  packages=setuptools.find_packages(include=['pipelines*', 'transforms*', 'io_connectors*']),
  package_data={'': ['*.json', '*.yaml', '*.yml']},
  install_requires=[
    BEAM,
    # Beam 2.77 caps pyarrow below 26.
    'pyarrow>=16,<26',
    'numpy>=1.26',
    'pydantic>=2.7,<3',
    'presidio-analyzer>=2.2.350',
    'presidio-anonymizer>=2.2.350',
    'openpyxl>=3.1',
    'fastavro>=1.9',
    # JSON decoded ~3x faster than json where the text is plain UTF-8 JSON (transforms.json_values.loads_utf8).
    'orjson>=3.9',
    'pyyaml>=6',
    # Python twins of the RE2 prefilters (\\p{..} classes) in transforms.pii.scanner.
    'regex>=2023.0',
    # AES-256-GCM of crypto-shredding (transforms.pii.crypto_shred); its key store needs the postgres extra.
    'cryptography>=42',
    # The batch job's data-quality report (OUTPUT/_report.html): charts with plotly's JavaScript inlined.
    'plotly==7.1.0',
  ],
  extras_require=EXTRAS,
)
