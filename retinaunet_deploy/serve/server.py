"""`serve`: start the bundled `tritonserver` on a model repository written to a temporary
folder (`serve.repository`), wait until it is ready, and stop it on SIGTERM or SIGINT.

Stopping (SIGTERM or SIGINT to `serve`): the model is unloaded through Triton's
repository API first, which makes Triton refuse new requests at once (the model is no
longer ready: "... has no available versions") while the requests it accepted, queued and
running, finish; once the unload completes (at most `drain_seconds`), tritonserver gets
SIGTERM, exits 0, and so does `serve`. Measured here: tritonserver 2.51 sent SIGTERM
directly keeps accepting new requests until it is idle, so under steady load it never
drains before its exit timeout; hence the unload first.
"""

from __future__ import annotations

import ctypes
import json
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from retinaunet_deploy.errors import ArtifactError, ConfigError, RetinaUNetError
from retinaunet_deploy.serve import protocol
from retinaunet_deploy.serve.repository import (
    SERVED_RUNTIMES,
    ServeOptions,
    default_env,
    remove,
    triton_home,
    write_repository,
)

HOST, HTTP_PORT, GRPC_PORT = "127.0.0.1", 8000, 8001
ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [^\]]+\] ?(.*)$")
PR_SET_PDEATHSIG = 1
BENIGN = ("CudaDriverHelper", "CUDA driver", "cuda driver", "pinned memory")


class ServerError(RetinaUNetError):
    """tritonserver stopped before it was ready, or exited with an error."""


def served_artifact(run_dir: Path, artifact: str | None, runtime: str) -> tuple[Path, str]:
    """(file, runtime) to serve: the run's recommendation (`recommendation.json`, as
    `predict RUN_DIR` reads it) or `artifact` (a file name in the run, or a path).

    Raises `ArtifactError` (no recommendation, a changed or missing file) or
    `ConfigError` (a recommendation in a runtime the server does not run).
    """
    from retinaunet_deploy.recommendation import recommended_artifact

    run_dir = Path(run_dir)
    if artifact is None:
        path, recommended = recommended_artifact(run_dir)
        chosen = recommended if runtime == "auto" else runtime
        if chosen not in SERVED_RUNTIMES:
            raise ConfigError(f"{run_dir}'s recommendation runs {path.name} in {chosen}, which "
                              f"serve does not run; pass --artifact with one of the run's .onnx "
                              f"files")
        return path, chosen
    path = Path(artifact)
    if not path.is_file() and (run_dir / artifact).is_file():
        path = run_dir / artifact
    if not path.is_file():
        raise ArtifactError(f"{artifact} not found (neither a file nor one in {run_dir}); name "
                            f"one of the run's .onnx files")
    return path, runtime


def command(home: Path, repository: Path, backends: Path, host: str, http_port: int,
            grpc_port: int, drain_seconds: int) -> list[str]:
    """The tritonserver command line (metrics off: no third port to collide)."""
    return [str(home / "bin" / "tritonserver"), f"--model-repository={repository}",
            f"--backend-directory={backends}", f"--http-address={host}",
            f"--http-port={http_port}", f"--grpc-address={host}", f"--grpc-port={grpc_port}",
            "--allow-metrics=false", f"--exit-timeout-secs={drain_seconds}",
            "--disable-auto-complete-config", "--model-control-mode=explicit",
            f"--load-model={protocol.MODEL_NAME}"]


def _die_with_parent() -> None:
    """In the child: SIGTERM when `serve` dies (Linux), so no server outlives it."""
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def first_error(log: Path) -> str:
    """The first error line of a tritonserver log, without its prefix ("" when none);
    CUDA's complaints on a machine without a GPU are not errors here."""
    if not log.exists():
        return ""
    for line in log.read_text(errors="replace").splitlines():
        match = ERROR_LINE.match(line)
        if (match or line.startswith("error:")) and not any(
                benign in line for benign in BENIGN):
            return (match.group(1) if match else line).strip()[:400]
    return ""


def _http(host: str, port: int, route: str, body: bytes | None = None):
    """(status, body) of a request to Triton's HTTP endpoint; (0, b"") when it does not
    answer."""
    request = urllib.request.Request(f"http://{host}:{port}{route}", data=body,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def ready(host: str, port: int) -> bool:
    """Whether /v2/health/ready answers 200."""
    return _http(host, port, "/v2/health/ready")[0] == 200


def drain(host: str, port: int, process: subprocess.Popen, seconds: float) -> None:
    """Unload the model (new requests refused, accepted ones finish), wait until it is
    unloaded or `seconds` pass, then SIGTERM tritonserver."""
    name = protocol.MODEL_NAME
    _http(host, port, f"/v2/repository/models/{name}/unload", b"{}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        status, body = _http(host, port, "/v2/repository/index", b"{}")
        models = json.loads(body or b"[]") if status == 200 else []
        if not any(m.get("name") == name and m.get("state") != "UNAVAILABLE" for m in models):
            break
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)


def serve(run_dir: Path, artifact: str | None = None, runtime: str = "auto",
          host: str = HOST, http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
          env: Path | None = None, options: ServeOptions | None = None,
          echo: Callable[[str], None] = print, ready_timeout: float = 180.0,
          drain_seconds: int = 30) -> None:
    """Serve RUN_DIR's recommended artifact (or `artifact`) until SIGTERM/SIGINT.

    Blocks; returns when tritonserver exited 0 after a stop signal. Raises
    `ArtifactError`/`ConfigError` for the artifact or environment (before anything
    starts), `ServerError` with tritonserver's first error line when it fails.
    """
    from retinaunet_deploy.runtime.registry import resolve

    path, runtime = served_artifact(run_dir, artifact, runtime)
    options = options or ServeOptions()
    home = triton_home()
    root = Path(tempfile.mkdtemp(prefix="retinaunet-serve."))
    log = root / "tritonserver.log"
    stop = {"asked": False}
    process = None
    previous = {}

    def ask_to_stop(signum, frame):
        stop["asked"] = True

    try:
        repository, backends = write_repository(root / "triton", path, runtime,
                                                env or default_env(), options)
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, ask_to_stop)
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                command(home, repository, backends, host, http_port, grpc_port, drain_seconds),
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches `serve` only, which drains.
                start_new_session=True,
                # One libc call between fork and exec; `serve` starts no threads before it.
                preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + ready_timeout
        while not ready(host, http_port):
            if process.poll() is not None or stop["asked"]:
                break
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready after {ready_timeout:.0f} s "
                                  f"({first_error(log) or 'no error logged'}); is port "
                                  f"{http_port} or {grpc_port} taken?")
            time.sleep(0.2)
        else:
            echo(f"serving {path} ({resolve(path, runtime).name}) as model '{protocol.MODEL_NAME}' (KServe v2): "
                 f"HTTP http://{host}:{http_port}, gRPC {host}:{grpc_port}; SIGTERM or Ctrl-C "
                 f"drains and stops")
        code = _wait(process, stop, lambda: drain(host, http_port, process, drain_seconds))
        if code != 0 or not stop["asked"]:
            reason = first_error(log) or f"exit code {code}"
            raise ServerError(f"tritonserver stopped ({reason}); check the ports ({http_port}, "
                              f"{grpc_port}) and the serve environment ('make serve-env')")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        remove(root)
    echo("tritonserver drained and stopped")


def _wait(process: subprocess.Popen, stop: dict, drain_now: Callable[[], None]) -> int:
    """tritonserver's exit code; drains it (once) when a stop was asked for. The signal
    handler only sets the flag: the drain's HTTP calls run here, outside it."""
    drained = False
    while True:
        try:
            return process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if stop["asked"] and not drained:
                drained = True
                drain_now()
