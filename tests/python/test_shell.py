"""`tessera shell` under a pseudo-terminal, as a person types into it: Tab
completes a table and a column, `\\dt` and `\\d t` list and describe,
long results show their first and last rows with a footer, `\\x` shows
records, a statement with `;` inside a string spans lines and runs once
it ends, a comment after the `;` does not hold it back, EXPLAIN prints
the plan as text, and every statement is in the history file at once."""

import os

import pexpect
import pytest
from tessera_server import free_port, start_server, stop_server

PROMPT = "tessera> "


@pytest.fixture
def shell(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    env = dict(os.environ, HOME=str(data_dir), NO_COLOR="1", TERM="xterm")
    child = pexpect.spawn(binary, ["shell", "--connect", f"127.0.0.1:{port}"], env=env,
                          encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect_exact(PROMPT)
    yield child
    child.sendline("\\q")
    child.expect(pexpect.EOF)
    stop_server(proc)


def run(child, line):
    """Types `line` and Enter; the output up to the next prompt (the line
    editor redraws the prompt while a line is typed: only one after the
    Enter counts)."""
    child.sendline(line)
    child.expect_exact("\r\n")
    child.expect_exact(PROMPT)
    return child.before


def test_the_shell_as_typed(shell, data_dir):
    out = run(shell, "CREATE TABLE readings (sensor BIGINT, reading_value DOUBLE) "
                     "PARTITION BY HASH (sensor) PARTITIONS 4;")
    assert "Error" not in out, out
    run(shell, "INSERT INTO readings SELECT value, value * 0.5 FROM range(1000);")

    # Tab completes a table, then a column (names asked after the CREATE).
    shell.send("SELECT count(*) FROM read\t")
    shell.expect_exact("readings")
    out = run(shell, " WHERE reading_v\t > 100;")
    assert "799" in out, out

    # \dt and \d t.
    out = run(shell, "\\dt")
    assert "readings" in out and "HASH" in out, out
    out = run(shell, "\\d readings")
    assert "reading_value" in out and "Float64" in out, out

    # A long result: first and last rows, and how many there are.
    out = run(shell, "SELECT sensor FROM readings ORDER BY sensor;")
    assert "1000 rows (40 shown" in out, out
    assert "│ 0 " in out.replace("  ", " ") or " 0 │" in out, out
    assert "999" in out and "500" not in out, out
    run(shell, ".maxrows 4")
    out = run(shell, "SELECT sensor FROM readings ORDER BY sensor;")
    assert "1000 rows (4 shown" in out and "│    998 │" in out, out
    assert "│      2 │" not in out and "│    997 │" not in out, out

    # \x: one record per block.
    run(shell, "\\x")
    out = run(shell, "SELECT sensor, reading_value FROM readings WHERE sensor = 3;")
    assert "-[ RECORD 1 ]-" in out and "reading_value | 1.5" in out, out
    run(shell, "\\x")

    # A ';' inside a string does not end the statement; the one after it does,
    # even with a comment behind it.
    shell.sendline("SELECT 'a;")
    out = run(shell, "b' AS s; -- the end")
    assert "a;\\nb" in out and "Error" not in out, out

    # EXPLAIN prints the plan's text, not a table around it.
    out = run(shell, "EXPLAIN SELECT count(*) FROM readings;")
    assert "physical_plan:" in out and "│ physical_plan" not in out, out

    # A syntax error says where.
    out = run(shell, "SELEC 1;")
    assert "Error" in out and "LINE 1: SELEC 1;\r\n        ^" in out, out

    # Every statement is in the history file already.
    with open(os.path.join(data_dir, ".tessera_history")) as f:
        history = f.read()
    assert "SELECT sensor, reading_value FROM readings WHERE sensor = 3;" in history
    assert "\\dt" in history


def test_ctrl_c_cancels_the_statement_and_keeps_the_shell(shell):
    shell.sendline("SELECT count(*) FROM range(100000000000) AS a WHERE value % 7 = 3;")
    shell.expect_exact("\r\n")
    shell.sendintr()
    shell.expect_exact("Cancelled.")
    shell.expect_exact(PROMPT)
    out = run(shell, "SELECT 41 + 1 AS answer;")
    assert "42" in out, out


def test_a_large_result_streams_through_the_shell(shell):
    """Ten million rows (80 MB of values) through the shell: it shows the
    first and last rows and the count, and holds only those (its peak
    memory grows by a small part of the result)."""
    from test_ingest import memory_kib

    before = memory_kib(shell.pid, "VmHWM")
    out = run(shell, "SELECT value AS v FROM range(10000000);")
    assert "10000000 rows (40 shown" in out, out
    assert "9999999" in out and "5000000" not in out, out
    grew = (memory_kib(shell.pid, "VmHWM") - before) * 1024
    assert grew < 40 << 20, f"the shell grew by {grew >> 20} MiB for an 80 MB result"
    # CSV streams too, and is exact.
    run(shell, ".mode csv")
    out = run(shell, "SELECT value AS v FROM range(3);")
    assert out.split("\r\n")[:4] == ["v", "0", "1", "2"], out


def test_a_long_statement_shows_its_progress(data_dir):
    """A statement running longer than 2 s shows a progress bar: the rows
    its scans read of those the table holds. One worker is stopped
    (SIGSTOP) so the statement cannot end before the bar shows; once it
    runs again the statement ends with the exact answer."""
    import signal

    from test_cluster_processes import stop_all, two_workers_with_rows

    procs = {}
    child = None
    try:
        coordinator = two_workers_with_rows(data_dir, procs, 200000, lease=60)
        binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
        env = dict(os.environ, HOME=str(data_dir), NO_COLOR="1", TERM="xterm")
        child = pexpect.spawn(binary, ["shell", "--connect", coordinator], env=env,
                              encoding="utf-8", timeout=60, dimensions=(50, 200))
        child.expect_exact(PROMPT)
        procs["w2"].send_signal(signal.SIGSTOP)
        try:
            child.sendline("SELECT count(*) AS n, sum(v) AS s FROM t;")
            child.expect(r"\d[\d,]* of ~200,000 rows scanned \(", timeout=30)
        finally:
            procs["w2"].send_signal(signal.SIGCONT)
        child.expect_exact(PROMPT, timeout=120)
        out = child.before
        assert "200000" in out and str(sum(range(200000))) in out, out
        assert "Error" not in out, out
        # The bar's line is cleared before the result is drawn.
        table = out.index("\u250c")
        assert "rows scanned" not in out[table:], out
        assert "\x1b[2K" in out[:table], out
        child.sendline("\\q")
        child.expect(pexpect.EOF)
    finally:
        if child is not None and child.isalive():
            child.terminate(force=True)
        stop_all(procs.values())
