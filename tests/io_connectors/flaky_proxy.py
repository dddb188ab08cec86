"""A TCP proxy in front of a real local server that cuts connections mid-read.

Tests of "connection lost mid-read" put it between a connector and the real
server: bytes pass through unchanged until a connection has carried
`cut_after_bytes` from the server, then that connection is shut down (both
sides), `cuts` times in all; later connections pass untouched.

    with CuttingProxy(server_port, cut_after_bytes=20_000) as proxy:
      url = f'mongodb://user:pw@127.0.0.1:{proxy.port}/db'
      ...
      assert proxy.cuts_done == 1

`cut_request_when(data) -> bool` cuts instead (or too) a connection whose
client sends a chunk it accepts, before that chunk reaches the server: a
command that never arrives, as when a client is killed mid-call.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

__all__ = ['CuttingProxy']


class CuttingProxy:
  def __init__(
    self,
    target_port: int,
    cut_after_bytes: Optional[int] = None,
    cuts: int = 1,
    cut_request_when: Optional[Callable[[bytes], bool]] = None,
  ):
    self._target = ('127.0.0.1', target_port)
    self._cut_after = cut_after_bytes
    self.cut_request_when = cut_request_when
    self._cuts_left = cuts
    self.cuts_done = 0
    self._lock = threading.Lock()
    self._listener = socket.create_server(('127.0.0.1', 0))
    self.port = self._listener.getsockname()[1]
    self._sockets = []
    self._closed = False
    threading.Thread(target=self._accept, daemon=True).start()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._closed = True
    self._listener.close()
    with self._lock:
      for s in self._sockets:
        _shut(s)

  def _accept(self):
    while not self._closed:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return
      try:
        server = socket.create_connection(self._target, timeout=10)
      except OSError:
        client.close()
        continue
      server.settimeout(None)
      with self._lock:
        self._sockets += [client, server]
      threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
      threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

  def _pump(self, source, sink, from_server):
    passed = 0
    try:
      while True:
        data = source.recv(65536)
        if not data:
          break
        if not from_server and self.cut_request_when is not None and self.cut_request_when(data):
          with self._lock:
            self.cuts_done += 1
          break
        if from_server and self._cut_after is not None:
          passed += len(data)
          with self._lock:
            cut = passed > self._cut_after and self._cuts_left > 0
            if cut:
              self._cuts_left -= 1
              self.cuts_done += 1
          if cut:
            break
        sink.sendall(data)
    except OSError:
      pass
    _shut(source)
    _shut(sink)


def _shut(s):
  try:
    s.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass
  try:
    s.close()
  except OSError:
    pass
