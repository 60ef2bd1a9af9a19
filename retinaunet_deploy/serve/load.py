"""Concurrent KServe v2 clients (tritonclient, HTTP or gRPC): the load test and benchmark.

Each client is a thread with its own HTTP and gRPC client objects (tritonclient's are not
shared across threads); they take requests from one list in order until it is empty, so
`clients` requests are in flight at a time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from retinaunet_deploy.serve import protocol

KINDS = ("http", "grpc")


@dataclass
class Outcome:
    """One request's fate: `outputs` (the response tensors) or `error` (its message);
    `started`/`finished` on `time.monotonic()`'s clock, seconds."""

    index: int
    kind: str
    outputs: dict[str, np.ndarray] | None
    error: str | None
    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def connect(kind: str, host: str, http_port: int, grpc_port: int):
    """A tritonclient client of `kind` ("http" or "grpc")."""
    if kind == "grpc":
        from tritonclient import grpc

        return grpc.InferenceServerClient(f"{host}:{grpc_port}")
    from tritonclient import http

    return http.InferenceServerClient(f"{host}:{http_port}", connection_timeout=120,
                                      network_timeout=120)


def infer(client, kind: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Send one request, `batch` (N, H, W, C), and return its response tensors by name.

    Raises tritonclient's `InferenceServerException` with the server's message when the
    server refuses the request.
    """
    if kind == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    from tritonclient.utils import np_to_triton_dtype

    tensor = module.InferInput(protocol.INPUT, list(batch.shape), np_to_triton_dtype(batch.dtype))
    tensor.set_data_from_numpy(batch)
    outputs = [module.InferRequestedOutput(name) for name in protocol.OUTPUTS]
    response = client.infer(protocol.MODEL_NAME, [tensor], outputs=outputs)
    return {name: response.as_numpy(name) for name in protocol.OUTPUTS}


def run_clients(requests: list[tuple[np.ndarray, str]], clients: int, host: str,
                http_port: int, grpc_port: int) -> list[Outcome]:
    """Send `requests` ((batch (N, H, W, C), "http" or "grpc") each) from `clients`
    concurrent threads; returns an `Outcome` per request, in the requests' order. A
    failed request is recorded (its error's message), never raised."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    lock = threading.Lock()
    cursor = iter(range(len(requests)))

    def work():
        connections = {}
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                break
            batch, kind = requests[index]
            started = time.monotonic()
            try:
                if kind not in connections:
                    connections[kind] = connect(kind, host, http_port, grpc_port)
                outputs, error = infer(connections[kind], kind, batch), None
            except Exception as failure:  # noqa: BLE001 - the outcome records every failure
                outputs, error = None, f"{type(failure).__name__}: {failure}"
            outcomes[index] = Outcome(index, kind, outputs, error, started, time.monotonic())
        for connection in connections.values():
            connection.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` TCP ports free on `host` now (the OS's choice)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """`retinaunet-deploy serve RUN_DIR ARGS...` in a child process on free loopback ports,
    ready (its "serving ..." line printed) when constructed; `stop()` sends SIGTERM and
    returns its exit code. `lines` holds what it printed.

    Raises `RuntimeError` with its output when it exits or is not ready in `timeout` s.
    """

    def __init__(self, run_dir, *args: str, timeout: float = 150.0, pythonpath=None):
        import os
        import subprocess
        import sys

        self.host = "127.0.0.1"
        self.http, self.grpc = free_ports(2)
        environment = dict(os.environ)
        if pythonpath:
            environment["PYTHONPATH"] = str(pythonpath)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "retinaunet_deploy.cli", "serve", str(run_dir),
             "--host", self.host, "--port", str(self.http), "--grpc-port", str(self.grpc),
             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=environment)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any(line.startswith("serving ") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("retinaunet-deploy serve did not start: "
                                   + "".join(self.lines)[-2000:])
            time.sleep(0.1)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def stop(self) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except Exception:
            self.process.kill()
            raise
