"""Separate Tessera processes for benchmarks: a coordinator and workers
on loopback addresses standing in for machines, and small client helpers."""

import os
import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


HOSTS = {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4", "w5": "127.0.0.5"}


class Cluster:
    """A coordinator on 127.0.0.1 and three workers (w2-w4 on 127.0.0.2-4),
    separate processes of `bin`, each with a data dir of its own under
    `root`."""

    def __init__(self, root: str, bin: str):
        self.root = root
        self.bin = bin
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        with open(os.path.join(root, "secret"), "w") as f:
            f.write(os.urandom(16).hex() + "\n")
        self.log = open(os.path.join(root, "coordinator.log"), "wb")
        self.coordinator = subprocess.Popen(
            [self.bin, "coordinator", "--insecure", "--listen", self.address, "--worker-lease", "2",
             "--data-dir", os.path.join(root, "coordinator"),
             "--cluster-secret-file", os.path.join(root, "secret")],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", self.port, self.coordinator)
        self.workers = {}
        self.ports = {}
        for name, host in (("w2", "127.0.0.2"), ("w3", "127.0.0.3"), ("w4", "127.0.0.4")):
            self.start(name, host)

    def start(self, name: str, host: str | None = None) -> None:
        host = host or HOSTS[name]
        port = free_port()
        log = open(os.path.join(self.root, f"{name}.log"), "ab")
        proc = subprocess.Popen(
            [self.bin, "worker", "--join", self.address, "--listen", f"{host}:{port}",
             "--data-dir", os.path.join(self.root, name),
             "--cluster-secret-file", os.path.join(self.root, "secret")],
            stdout=log, stderr=subprocess.STDOUT)
        wait_port(host, port, proc)
        self.workers[name] = proc
        self.ports[name] = port

    def kill(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGKILL)
        self.workers[name].wait()

    def stop(self) -> None:
        for p in [*self.workers.values(), self.coordinator]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def wait_for(check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit("timed out")


def workers_up(cur, n, timeout=120):
    """Waits until `n` workers are up."""
    wait_for(lambda: len([w for w in rows(cur, "SHOW WORKERS") if w["state"] == "up"]) == n,
             timeout)
