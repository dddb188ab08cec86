"""A local OTLP/HTTP trace receiver for tests: parses `ExportTraceServiceRequest` protobufs at /v1/traces.

Built on opentelemetry-proto's messages (the OTLP spec's own protos); it
listens on 127.0.0.1, port 0, and keeps every span it receives with its
attributes decoded, plus the request headers (to check the exporter's
credentials arrive, and only there).

Usage::

    with OtlpReceiver() as receiver:
      run(['--otlp_endpoint', receiver.endpoint, ...])
      spans = receiver.wait_for(lambda spans: any(s['name'] == 'run spotify_batch' for s in spans))
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from typing import Callable, Dict, List

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
  ExportTraceServiceRequest,
  ExportTraceServiceResponse,
)

__all__ = ['OtlpReceiver']


def _value(any_value):
  kind = any_value.WhichOneof('value')
  if kind == 'array_value':
    return [_value(v) for v in any_value.array_value.values]
  if kind == 'kvlist_value':
    return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
  return getattr(any_value, kind) if kind else None


def _span(span, resource: Dict) -> Dict:
  return {
    'name': span.name,
    'trace_id': span.trace_id.hex(),
    'span_id': span.span_id.hex(),
    'parent_span_id': span.parent_span_id.hex() or None,
    'kind': span.kind,
    'attributes': {kv.key: _value(kv.value) for kv in span.attributes},
    'events': [{'name': e.name, 'attributes': {kv.key: _value(kv.value) for kv in e.attributes}} for e in span.events],
    'status_code': span.status.code,
    'status_message': span.status.message,
    'resource': resource,
  }


class OtlpReceiver:
  """An OTLP/HTTP (protobuf) endpoint in a thread; `spans` and `headers` hold what arrived."""

  def __init__(self):
    self.spans: List[Dict] = []
    self.headers: List[Dict[str, str]] = []
    self.raw: List[bytes] = []
    self._lock = threading.Lock()
    receiver = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if self.headers.get('Content-Encoding') == 'gzip':
          body = gzip.decompress(body)
        if self.path != '/v1/traces' or self.headers.get('Content-Type') != 'application/x-protobuf':
          self.send_error(404 if self.path != '/v1/traces' else 415)
          return
        request = ExportTraceServiceRequest()
        try:
          request.ParseFromString(body)
        except Exception:
          self.send_error(400, 'not an ExportTraceServiceRequest')
          return
        spans = []
        for resource_spans in request.resource_spans:
          resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
          for scope_spans in resource_spans.scope_spans:
            spans += [_span(s, resource) for s in scope_spans.spans]
        with receiver._lock:
          receiver.spans += spans
          receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
          receiver.raw.append(body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header('Content-Type', 'application/x-protobuf')
        self.send_header('Content-Length', str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

      def log_message(self, *args):
        pass

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.endpoint = f'http://127.0.0.1:{self._server.server_address[1]}'

  def __enter__(self) -> 'OtlpReceiver':
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()

  def wait_for(self, predicate: Callable[[List[Dict]], bool], timeout_s: float = 20.0) -> List[Dict]:
    """The spans received once `predicate(spans)` holds; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
      with self._lock:
        spans = list(self.spans)
      if predicate(spans):
        return spans
      if time.monotonic() > deadline:
        raise AssertionError(f'spans received: {sorted({s["name"] for s in spans})}')
      time.sleep(0.1)
