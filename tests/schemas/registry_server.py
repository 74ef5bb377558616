"""A minimal Schema Registry REST endpoint (register, fetch by id) served on a free port.

Only what confluent-kafka's SchemaRegistryClient calls for register_schema and get_schema, so
the real client runs over real HTTP. A full registry (Confluent, Karapace) is not provisioned.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def registry_server() -> Iterator[tuple[str, dict[str, list[int]]]]:
    """Yield (url, subjects -> schema ids) of a running registry; stop it afterwards."""
    schemas: dict[int, str] = {}
    subjects: dict[str, list[int]] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            m = re.fullmatch(r"/subjects/([^/]+)/versions(\?.*)?", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not m:
                self._send(404, {"error_code": 404, "message": "not found"})
                return
            with lock:
                text = body["schema"]
                sid = next((i for i, s in schemas.items() if s == text), len(schemas) + 1)
                schemas[sid] = text
                ids = subjects.setdefault(m.group(1), [])
                if sid not in ids:
                    ids.append(sid)
            self._send(200, {"id": sid})

        def do_GET(self) -> None:  # noqa: N802
            m = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
            if m and int(m.group(1)) in schemas:
                self._send(200, {"schema": schemas[int(m.group(1))], "schemaType": "AVRO"})
            else:
                self._send(404, {"error_code": 40403, "message": "Schema not found"})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", subjects
    finally:
        server.shutdown()
        server.server_close()
