"""`bertkit serve --model RUN`: a fine-tuned run behind an HTTP JSON endpoint.

    bertkit serve --model runs/sst2 --port 8000
    curl -s localhost:8000/predict -d '{"inputs": ["a gorgeous film", "flat and dull"]}'
    # {"predictions": [{"id": "0", "text": "a gorgeous film", "prediction": "1", "probabilities": {...}}, ...]}

POST /predict takes {"inputs": [...]}, each input as `bertkit.Predictor` takes it (a string: one
line of `predict --input`; a list: its tab-separated fields; an object: its JSON form) and answers
with the Predictor's records. GET /health answers the run's task and labels. Bad input is a 400 with
{"error": message}, naming the input (`input 3: ...`); the server keeps serving. Requests are
answered one at a time (one model, one device), each as one batch of at most --max-batch inputs.
It listens on 127.0.0.1 unless --host says otherwise: the endpoint has no authentication.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bertkit.commands.evaluate import add_model_and_data_arguments

MAX_BODY_BYTES = 16 << 20


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_model_and_data_arguments(parser, argv)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    parser.add_argument("--max-batch", type=int, default=256, help="most inputs one request may hold (default 256)")


class PredictionServer(ThreadingHTTPServer):
    """An HTTP server around one Predictor; the model runs one request at a time."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], predictor: Any, max_batch: int):
        super().__init__(address, PredictionHandler)
        self.predictor = predictor
        self.max_batch = max_batch
        self.model_lock = threading.Lock()


class PredictionHandler(BaseHTTPRequestHandler):
    server: PredictionServer

    def reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path != "/health":
            self.reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; POST /predict or GET /health"})
            return
        task = self.server.predictor.task
        self.reply(HTTPStatus.OK, {"status": "ok", "task": task.name, "labels": task.label_names(),
                                   "input": task.raw_input})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/predict":
            self.reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; POST /predict"})
            return
        try:
            inputs = self.read_inputs()
        except ValueError as err:
            self.reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        try:
            with self.server.model_lock:
                predictions = self.server.predictor(inputs)
        except ValueError as err:  # DataError: an input the task cannot read, named by its index
            self.reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except Exception as err:  # noqa: BLE001 - the server must answer, and keep serving
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})
            return
        self.reply(HTTPStatus.OK, {"predictions": predictions})

    def read_inputs(self) -> list[Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            raise ValueError(f"expected a JSON body of 1 byte to {MAX_BODY_BYTES >> 20} MiB, got {length} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"the body is not JSON ({err})") from None
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ValueError('expected {"inputs": [...]} with at least one input')
        if len(inputs) > self.server.max_batch:
            raise ValueError(f"{len(inputs)} inputs; at most --max-batch {self.server.max_batch} per request")
        return inputs

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server uses
        print(f"{self.address_string()} {format % args}", file=sys.stderr)


def make_server(args: argparse.Namespace) -> PredictionServer:
    from bertkit.commands.predict import Predictor

    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    predictor = Predictor.from_args(args)
    return PredictionServer((args.host, args.port), predictor, args.max_batch)


def run(args: argparse.Namespace) -> int:
    server = make_server(args)
    host, port = server.server_address[:2]
    print(f"serving {args.model} ({server.predictor.task.name}) on http://{host}:{port}: POST /predict "
          f'{{"inputs": [...]}}, GET /health; Ctrl-C stops', file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
