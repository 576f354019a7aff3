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
    # A file, not a pipe: nobody reads a pipe while the server runs, and a
    # full one would block it.
    log = open(os.path.join(data_dir, f"serve-{port}.log"), "w+b")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "3", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    proc.log = log
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("tessera serve exited: " + server_log(proc))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("tessera serve did not start listening in 60 s")
            time.sleep(0.2)


def server_log(proc):
    """What the server wrote to stderr so far."""
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()
