"""scripts/install.sh puts a working `tessera` without debug line tables
under PREFIX/bin, and says so when that directory is not on PATH."""

import os
import subprocess


def test_install_puts_a_smaller_working_binary_on_the_prefix(tmp_path):
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    done = subprocess.run(["scripts/install.sh", "--from", binary, "--prefix", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "bin" / "tessera"
    assert f"installed {installed}" in done.stdout, done.stdout
    assert "is not on PATH" in done.stdout, done.stdout
    assert installed.stat().st_size < os.path.getsize(binary)
    version = subprocess.run([str(installed), "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("tessera "), version

    bad = subprocess.run(["scripts/install.sh", "--from", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not an executable" in bad.stderr, bad.stderr
