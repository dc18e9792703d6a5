"""Real tracking stores for registry tests: `mlflow server` on 127.0.0.1 over a throwaway PostgreSQL 15, and SQLite.

The PostgreSQL cluster is made with initdb in a fresh folder, started with pg_ctl on a free port with
password authentication, and removed afterwards; `mlflow server` runs over it with proxied artifacts.
PostgreSQL refuses to run as root, so as root its binaries run as the `postgres` user. The tests skip,
saying why, only when initdb is not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DB_USER = "trainflow"
DB_PASSWORD = "planted-db-password"  # tests grep for it: it must never appear in anything trainflow records


def postgres_bin() -> Path | None:
    """The newest PostgreSQL's bin folder with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresMlflowServer:
    """Start with `start()`, stop with `stop()`; `uri` is the tracking URI (http://127.0.0.1:PORT)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="trainflow-pg-"))  # outside pytest's root-only tmp folders
        self.bin = postgres_bin()
        self.pg_port, self.port = free_port(), free_port()
        self.server: subprocess.Popen | None = None
        self.uri = f"http://127.0.0.1:{self.port}"

    def _run(self, command: list[str], **kwargs) -> None:
        done = subprocess.run(_as_postgres_user(command), capture_output=True, text=True, timeout=120, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> "PostgresMlflowServer":
        data, password_file = self.root / "data", self.root / "password"
        password_file.write_text(DB_PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={password_file}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"])
        self._run([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
                   "-o", f"-p {self.pg_port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", DB_USER, "mlflow"],
                  env={**os.environ, "PGPASSWORD": DB_PASSWORD})
        backend = f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.pg_port}/mlflow"
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        self.log = open(self.root / "mlflow-server.log", "w")
        self.server = subprocess.Popen(
            [str(mlflow_cli), "server", "--backend-store-uri", backend, "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run(_as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast",
                                              "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
