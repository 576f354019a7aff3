"""`tessera run`: variables (`-v`), `--echo`, `--continue-on-error` with a
summary and a non-zero exit, exact CSV and JSON, and `--format arrow` with
one stream per statement in `--output-dir` (several results on stdout are
refused)."""

import json
import os
import subprocess

import pyarrow.ipc as ipc
import pytest
from tessera_server import free_port, start_server, stop_server


def tessera(*args, stdin=None):
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120,
                          input=stdin)


@pytest.fixture
def connect(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    yield ("--connect", f"127.0.0.1:{port}")
    stop_server(proc)


def test_scripts(connect, data_dir):
    setup = ("CREATE TABLE ${t} (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 2;\n"
             "INSERT INTO ${t} VALUES (1, 'a,b'), (2, 'it''s :n'), (3, NULL);\n")
    done = tessera("run", *connect, "-v", "t=items", "-", stdin=setup)
    assert done.returncode == 0, done.stderr

    # Variables outside strings only; exact CSV; echo.
    script = "SELECT k, v FROM ${t} WHERE k <= :n ORDER BY k;"
    done = tessera("run", *connect, "-v", "t=items", "-v", "n=2", "--format", "csv",
                   "--echo", "-", stdin=script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("SELECT k, v FROM items WHERE k <= 2 ORDER BY k;\n"
                           "k,v\n1,\"a,b\"\n2,it's :n\n")
    done = tessera("run", *connect, "-", stdin="SELECT ${nope};")
    assert done.returncode != 0 and "-v nope=VALUE" in done.stderr

    # JSON, one object per line; NULL left out as arrow's writer does.
    done = tessera("run", *connect, "--format", "json", "-",
                   stdin="SELECT k, v FROM items ORDER BY k;")
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"k": 1, "v": "a,b"}, {"k": 2, "v": "it's :n"}, {"k": 3}]

    # Going on past errors: every statement runs, the exit says how many failed.
    script = ("SELECT count(*) AS n FROM items;\n"
              "SELECT * FROM missing;\n"
              "INSERT INTO items VALUES (4, 'd');\n"
              "SELEC 1;\n"
              "SELECT count(*) AS n FROM items;\n")
    done = tessera("run", *connect, "--continue-on-error", "--format", "csv", "-", stdin=script)
    assert done.returncode != 0
    assert done.stdout == "n\n3\ncount\n1\nn\n4\n"
    assert "statement at line 2 failed" in done.stderr
    assert "2 of 5 statements failed (at lines 2, 4)" in done.stderr
    # Without it, the first error stops the script.
    done = tessera("run", *connect, "--format", "csv", "-", stdin=script)
    assert done.returncode != 0 and done.stdout == "n\n4\n"

    # Arrow: one stream per statement, or one statement.
    two = "SELECT k FROM items ORDER BY k; SELECT v FROM items WHERE k = 1;"
    done = tessera("run", *connect, "--format", "arrow", "-", stdin=two)
    assert done.returncode != 0 and "--output-dir" in done.stderr
    out = os.path.join(data_dir, "out")
    done = tessera("run", *connect, "--format", "arrow", "--output-dir", out, "-", stdin=two)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["001.arrow", "002.arrow"]
    with open(os.path.join(out, "001.arrow"), "rb") as f:
        assert ipc.open_stream(f).read_all().column("k").to_pylist() == [1, 2, 3, 4]
    with open(os.path.join(out, "002.arrow"), "rb") as f:
        assert ipc.open_stream(f).read_all().column("v").to_pylist() == ["a,b"]
