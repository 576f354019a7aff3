"""Starts real `tessera` processes (serve, coordinator, worker) and etcd for
the client tests."""

import os
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir, port, env=None, sign_in=False, args=()):
    """Runs `tessera serve` with 3 workers on `data_dir` (with `env` added to
    its environment; without sign-in unless `sign_in`); returns once it
    listens."""
    access = [] if sign_in else ["--insecure"]
    proc = start_process(
        ["serve", *access, *args, "--listen", f"127.0.0.1:{port}", "--workers", "3",
         "--data-dir", data_dir],
        os.path.join(data_dir, f"serve-{port}.log"),
        env,
    )
    wait_listening(proc, "127.0.0.1", port, "tessera serve")
    return proc


def start_process(args, log_path, env=None):
    """Runs `tessera ARGS`, its stderr in `log_path` (a file, not a pipe:
    nobody reads a pipe while the process runs, and a full one would block
    it); returns at once."""
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [binary, *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    proc.log = log
    return proc


def wait_listening(proc, host, port, what, timeout=60):
    """Returns once `host:port` accepts connections; fails if `proc` exits."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: " + server_log(proc))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start listening in {timeout} s")
            time.sleep(0.1)


def start_etcd(data_dir, ports=None):
    """A real etcd (Debian's, installed by scripts/setup-system.sh) on free
    loopback ports (or `ports`, (client, peer), to start it again on the
    same data); returns (process, "etcd://127.0.0.1:PORT")."""
    client, peer = ports or (free_port(), free_port())
    c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = open(os.path.join(data_dir, "etcd.log"), "a+b")
    proc = subprocess.Popen(
        [
            os.environ.get("TESSERA_ETCD", "etcd"),
            "--name=test",
            f"--data-dir={os.path.join(data_dir, 'etcd')}",
            f"--listen-client-urls={c}",
            f"--advertise-client-urls={c}",
            f"--listen-peer-urls={p}",
            f"--initial-advertise-peer-urls={p}",
            f"--initial-cluster=test={p}",
            "--max-txn-ops=4096",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    proc.log = log
    proc.ports = (client, peer)
    wait_listening(proc, "127.0.0.1", client, "etcd")
    return proc, f"etcd://127.0.0.1:{client}"


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


def crash_at_failpoint(data_dir, port, failpoint, sql):
    """Starts `tessera serve` on `data_dir` with `TESSERA_FAILPOINT` set to
    `failpoint`, runs `sql` (which must fail: the server dies under it) and
    checks that the server aborted there."""
    import signal

    import adbc_driver_flightsql.dbapi as flightsql

    proc = start_server(data_dir, port, env={"TESSERA_FAILPOINT": failpoint})
    conn = flightsql.connect(f"grpc://127.0.0.1:{port}")
    cur = conn.cursor()
    failed = False
    try:
        cur.execute(sql)
    except Exception:
        failed = True
    finally:
        code = proc.wait(timeout=60)
        # Closing handles on a server that is gone fails; that is expected.
        for handle in (cur, conn):
            try:
                handle.close()
            except Exception:
                pass
    assert failed, f"{sql} succeeded although the server was to die at {failpoint}"
    assert code == -signal.SIGABRT, f"the server did not die at {failpoint}: exit {code}"
