"""``.ci/run``: a fresh virtual environment per run, then the README's test command inside it."""
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Stands in for python3, python and pip: logs "<its path> <args>", makes a venv whose bin/ holds
# the same stub, and answers `-m pytest` with $STUB_PYTEST_RC.
STUB = """#!/usr/bin/env bash
echo "$0 $*" >> "$STUB_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; cp "$0" "$3/bin/python3"; cp "$0" "$3/bin/pip"
    printf 'export VIRTUAL_ENV="%s"\\nexport PATH="%s/bin:$PATH"\\n' "$3" "$3" > "$3/bin/activate"
fi
if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then sleep "${STUB_PYTEST_SECONDS:-0}"; exit "${STUB_PYTEST_RC:-0}"; fi
exit 0
"""


def readme_test_command():
    """The README's test command split at ``&&``, each part as argv."""
    text = (ROOT / "README.md").read_text()
    line = re.search(r"^pip install -e .*python -m pytest$", text, re.M).group(0)
    return [shlex.split(part) for part in line.split("&&")]


def run_ci(tmp_path, pytest_rc=0, **env_extra):
    stubs, tmp = tmp_path / "stubs", tmp_path / "tmp"
    stubs.mkdir(exist_ok=True), tmp.mkdir(exist_ok=True)
    for name in ("python3", "python", "pip"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(stat.S_IRWXU)
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log), "TMPDIR": str(tmp),
           "STUB_PYTEST_RC": str(pytest_rc), **env_extra}
    env.pop("CI_TMPDIR", None)
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    return proc, [(Path(exe), shlex.split(args)) for exe, args in calls], tmp


def test_ci_builds_a_fresh_venv_and_runs_the_readme_command_in_it(tmp_path):
    proc, calls, tmp = run_ci(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (exe, args), *rest = calls
    assert exe.name == "python3" and args[:2] == ["-m", "venv"]
    venv = Path(args[2])
    assert venv.parent == tmp and not venv.exists()     # a new temporary folder, removed afterwards
    assert [exe.parent for exe, _ in rest] == [venv / "bin"] * len(rest)   # everything else inside it
    assert [[exe.name, *args] for exe, args in rest] == readme_test_command()
    second, calls2, _ = run_ci(tmp_path)
    assert second.returncode == 0 and calls2[0][1][2] != str(venv)   # another fresh venv on every run


@pytest.mark.parametrize("rc", [1, 5])
def test_ci_fails_when_the_tests_fail(tmp_path, rc):
    proc, calls, _ = run_ci(tmp_path, pytest_rc=rc)
    assert proc.returncode != 0 and calls[-1][1] == ["-m", "pytest"]


def test_ci_stops_at_its_time_limit_and_says_so(tmp_path):
    proc, calls, _ = run_ci(tmp_path, CI_TIMEOUT="1", STUB_PYTEST_SECONDS="20")
    assert proc.returncode == 124 and "stopped after CI_TIMEOUT=1 seconds" in proc.stderr
