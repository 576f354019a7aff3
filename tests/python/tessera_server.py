"""Starts real `tessera serve` processes for the client tests."""

import os
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir, port, env=None):
    """Runs `tessera serve` with 3 workers on `data_dir` (with `env` added to
    its environment); returns once it listens."""
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "3", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("tessera serve exited: " + proc.stderr.read().decode())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("tessera serve did not start listening in 60 s")
            time.sleep(0.2)


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
