"""scripts/test.sh runs every stage even when one fails, ends with one line per stage, and
exits non-zero when any failed; the 3.6/3.8 stages find their interpreters through
$PYENV_ROOT, say why they skip, and fail in CI. Driven with stub stages in a copy of
scripts/ (the real test.sh and lib.sh, stubbed setup and stages): nothing real runs."""
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# Each stub stage appends its name to $STAGE_LOG, then does what $STUB_<NAME> says: exit
# with that status, or call lib.sh's stage_unavailable ("unavailable").
STUB_STAGE = """#!/usr/bin/env bash
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
echo %(name)s >>"$STAGE_LOG"
case "${STUB_%(name)s:-0}" in
  unavailable) stage_unavailable %(name)s "no interpreter for %(name)s here" ;;
  *) [ "${STUB_%(name)s:-0}" = 0 ] || echo "%(name)s broke" >"$DEVICE_AGENT_STAGE_NOTE"
     exit "${STUB_%(name)s:-0}" ;;
esac
"""
STUB_TOOL = """#!/usr/bin/env bash
if [ "$1" = -c ]; then exec %(python)s "$@"; fi  # test.sh asks python for its version
echo "%(name)s browser_skip=${DEVICE_AGENT_SKIP_BROWSER:-} $*" >>"$STAGE_LOG"
exit "${STUB_%(name)s:-0}"
"""


def _executable(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def tree(tmp_path):
    """A checkout whose scripts/ holds the real test.sh and lib.sh and stub everything else;
    returns run(*args, **env) -> (exit status, output, stages run in order)."""
    scripts, tools = tmp_path / "scripts", tmp_path / "bin"
    scripts.mkdir()
    tools.mkdir()
    for name in ("test.sh", "lib.sh"):
        shutil.copy(os.path.join(ROOT, "scripts", name), str(scripts / name))
    _executable(str(scripts / "setup.sh"), "true\n")  # the environment "exists"
    for name, script in (("browser", "install-browser.sh"), ("py36", "test-py36.sh"),
                         ("py38", "test-py38.sh")):
        _executable(str(scripts / script), STUB_STAGE % {"name": name})
    for name in ("ruff", "python"):
        _executable(str(tools / name), STUB_TOOL % {"name": name, "python": sys.executable})
    log = tmp_path / "stages.log"

    def run(*args, **env):
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("CI", "DEVICE_AGENT_SKIP_BROWSER")}
        environment.update(env, STAGE_LOG=str(log),
                           PATH=str(tools) + os.pathsep + os.environ["PATH"])
        if log.exists():
            log.unlink()
        proc = subprocess.run([BASH, str(scripts / "test.sh")] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, env=environment, timeout=60)
        calls = log.read_text().splitlines()
        run.calls = calls
        return proc.returncode, proc.stdout, [line.split()[0] for line in calls]

    return run


def _summary(output):
    """{stage: its outcome line} and the closing line, from test.sh's last lines."""
    lines = output.splitlines()
    stages = lines[lines.index("test.sh: stages") + 1:-1]
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in stages), lines[-1]


def test_every_stage_passing_exits_zero(tree):
    status, output, ran = tree()
    assert status == 0, output
    assert ran == ["ruff", "browser", "python", "py36", "py38"]
    outcomes, closing = _summary(output)
    suite = "suite (%d.%d)" % sys.version_info[:2]
    assert list(outcomes) == ["ruff", "browser", suite, "torch side 3.6", "API side 3.8"]
    assert all(outcome.startswith("passed") for outcome in outcomes.values()), outcomes
    assert closing == "test.sh: no stage failed"


@pytest.mark.parametrize("failing,stage", [
    ("STUB_ruff", "ruff"), ("STUB_py36", "torch side 3.6"),
    ("STUB_python", "suite (%d.%d)" % sys.version_info[:2])])
def test_a_failing_stage_lets_the_others_run_and_fails_the_command(tree, failing, stage):
    status, output, ran = tree(**{failing: "3"})
    assert status == 1, output
    assert ran == ["ruff", "browser", "python", "py36", "py38"]  # nothing after it is hidden
    outcomes, closing = _summary(output)
    assert outcomes[stage].startswith("failed   (exit 3 after ")
    assert [name for name, outcome in outcomes.items() if not outcome.startswith("passed")] \
        == [stage]
    assert closing == "test.sh: FAILED: " + stage
    if failing == "STUB_py36":  # the reason a stage wrote is in its line
        assert outcomes[stage].endswith(": py36 broke)")


def test_a_stage_that_cannot_run_says_why_and_fails_only_in_ci(tree):
    status, output, _ = tree(STUB_py38="unavailable")
    assert status == 0, output
    assert _summary(output)[0]["API side 3.8"] == "skipped  (no interpreter for py38 here)"
    status, output, _ = tree(STUB_py38="unavailable", CI="true")
    assert status == 1, output
    outcome = _summary(output)[0]["API side 3.8"]
    assert outcome.startswith("failed") and "no interpreter for py38 here" in outcome
    assert "CI=true" in outcome


@pytest.mark.parametrize("how", [("--no-browser",), ("DEVICE_AGENT_SKIP_BROWSER",)])
def test_the_browser_can_be_skipped_and_the_summary_says_so(tree, how):
    if how == ("--no-browser",):
        status, output, ran = tree("--no-browser", "-k", "x")
    else:
        status, output, ran = tree("-k", "x", DEVICE_AGENT_SKIP_BROWSER="1")
    assert status == 0, output
    assert "browser" not in ran  # chromium is not installed
    outcome = _summary(output)[0]["browser"]
    assert outcome.startswith("skipped") and "--no-browser" in outcome
    [pytest_call] = [call for call in tree.calls if call.startswith("python ")]
    assert pytest_call == "python browser_skip=1 -m pytest -q -k x"  # the tests skip too


def _lib(command, **env):
    environment = dict(os.environ, **env)
    return subprocess.run([BASH, "-c", 'source "%s"; %s' % (
        os.path.join(ROOT, "scripts", "lib.sh"), command)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=True, env=environment, timeout=30)


def test_interpreters_are_found_through_pyenv_root_and_a_broken_shim_is_passed_over(tmp_path):
    version_dir = tmp_path / "pyenv" / "versions" / "3.8.99" / "bin"
    version_dir.mkdir(parents=True)
    _executable(str(version_dir / "python3.8"), "#!/bin/sh\nexit 0\n")
    shims = tmp_path / "shims"
    shims.mkdir()
    _executable(str(shims / "python3.8"), "#!/bin/sh\nexit 127\n")  # pyenv: not selected
    path = str(shims) + os.pathsep + "/usr/bin:/bin"
    found = _lib("find_python 3.8", PYENV_ROOT=str(tmp_path / "pyenv"), PATH=path)
    assert found.returncode == 0 and found.stdout.strip() == str(version_dir / "python3.8")
    missing = _lib("find_python 3.8", PYENV_ROOT=str(tmp_path / "none"), PATH=path)
    assert missing.returncode == 1 and missing.stdout == ""


@pytest.mark.parametrize("script,version", [("test-py36.sh", "3.6"), ("test-py38.sh", "3.8")])
def test_a_missing_interpreter_is_a_reasoned_skip_and_a_failure_in_ci(tmp_path, script,
                                                                      version):
    if any(os.path.exists(os.path.join(d, "python" + version)) for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has a system python%s" % version)
    env = dict(os.environ, PYENV_ROOT=str(tmp_path / "none"), PATH="/usr/bin:/bin",
               HOME=str(tmp_path))
    # DEVICE_AGENT_STAGE_NOTE: the running stage's own note, which this skip must not write
    # (seen: "torch side 3.6 failed: no Python 3.8 interpreter")
    for name in ("CI", "PY36", "PY38", "DEVICE_AGENT_STAGE_NOTE"):
        env.pop(name, None)
    command = [BASH, os.path.join(ROOT, "scripts", script)]
    skipped = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, env=env, timeout=30)
    assert skipped.returncode == 77, skipped.stderr
    assert "no Python %s interpreter" % version in skipped.stderr
    assert str(tmp_path / "none") in skipped.stderr  # it says where it looked
    failed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=dict(env, CI="true"), timeout=30)
    assert failed.returncode == 1 and "CI=true" in failed.stderr


def test_sourcing_setup_leaves_the_shells_options_alone(tmp_path):
    """`source scripts/setup.sh` puts the environment on PATH without turning on errexit,
    nounset or pipefail in the user's shell (a failing command would close the terminal)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".ready").write_text("")
    _executable(str(venv / "bin" / "pip"), "#!/bin/sh\nexit 0\n")  # the editable re-point
    script = ('set -o | grep -E "^(errexit|nounset|pipefail)" > before; '
              'source "%s"; echo "status $?"; '
              'set -o | grep -E "^(errexit|nounset|pipefail)" > after; '
              'echo "path ${PATH%%%%:*}"; echo "venv $DEVICE_AGENT_VENV"; false; echo alive'
              % os.path.join(ROOT, "scripts", "setup.sh"))
    proc = subprocess.run([BASH, "-c", script], cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                          env=dict(os.environ, DEVICE_AGENT_VENV_DIR=str(venv)))
    lines = proc.stdout.splitlines()
    assert lines == ["status 0", "path %s" % (venv / "bin"), "venv %s" % venv, "alive"], \
        proc.stderr
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert "off" in (tmp_path / "after").read_text()


def test_a_failing_setup_returns_to_the_sourcing_shell(tmp_path):
    proc = subprocess.run([BASH, "-c", 'source "%s"; echo "status $?"; echo alive' % os.path.join(
        ROOT, "scripts", "setup.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60,
        env=dict(os.environ, DEVICE_AGENT_VENV_DIR=str(tmp_path / "v"), PYTHON="false"))
    assert proc.stdout.splitlines() == ["status 1", "alive"]
    assert "could not be set up" in proc.stderr and "make-venv.sh: line" in proc.stderr
