"""Shared fixtures and helpers: tiny real inputs built by the tests.

``navml(...)`` runs the command line in a fresh process, as a user does
(import it: ``from conftest import navml``). The class fixtures are the
registry entries the tests share, written as in params.yaml.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from navml.config import ClassSpec, parse_classes  # noqa: E402
from navml.geo.grid import Grid  # noqa: E402

#: the parking class as params.yaml declares it (``classes.parking``)
PARKING = {
    "task": "segmentation",
    "tags": {"amenity": "parking"},
    "osm_tags": {"amenity": "parking", "parking": "surface"},
}


def navml(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m navml *args`` in ``cwd`` with this interpreter; output captured as text."""
    return subprocess.run([sys.executable, "-m", "navml", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def small_grid() -> Grid:
    """A small grid: zoom-18 tiles of 256 px in zoom-16 shards (4 x 4 tiles, 1024 px)."""
    return Grid(zoom=18, tile_size=256, shard_zoom=16)


@pytest.fixture
def parking_registry() -> dict:
    """A ``classes`` params section with the parking class only (a fresh copy per test)."""
    return {"parking": copy.deepcopy(PARKING)}


@pytest.fixture
def parking(parking_registry) -> ClassSpec:
    """The parking class of ``parking_registry``, parsed as the stages parse it."""
    return parse_classes(parking_registry)[0]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process started by a fixture; kill it if it lingers past 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: Credentials of the moto S3 server, as a user sets them for an S3-compatible endpoint (moto accepts any).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of moto's S3 server, running in its own process on a free port of 127.0.0.1.

    Its own process, not moto's threaded server in this one: in-process, the server shared
    the interpreter (and its GIL and event loops) with s3fs and the Dask client and hung.
    """
    import time
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's S3 server did not start on {url} (exit code {proc.poll()})")
                time.sleep(0.2)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def cluster(s3_endpoint, tmp_path_factory):
    """The tcp:// address of a Dask cluster for the whole session: ``dask scheduler`` and
    ``dask worker`` (2 single-threaded worker processes), each in its own process.

    Started once (seconds) and reached by its address, as a real cluster is. The scheduler
    is not in the test process: there it shared the GIL with TensorFlow and, once under
    load in CI, missed the client's heartbeats. The workers reach the moto S3 server with
    the AWS settings the S3 tests give the client. Logs: ``dask*/{scheduler,workers}.log``.
    """
    from distributed import Client

    from navml.geo.parallel import thread_env

    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, **thread_env(2), **S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    procs = []

    def start(name: str, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        with (logs / f"{name}.log").open("w") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen([sys.executable, "-m", f"distributed.cli.{module}", *args], env=env, stdout=log, stderr=log))

    try:
        start("scheduler", "dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--dashboard-address", "127.0.0.1:0")
        start("workers", "dask_worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard", env=env)
        try:
            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
        except (OSError, TimeoutError) as exc:
            pytest.fail(f"the Dask cluster did not start on {address} ({exc}); logs in {logs}")
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)
