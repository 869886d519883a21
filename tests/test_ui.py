"""`reidbench ui` in a real browser: start it on a SQLite store holding a sweep's runs,
render the experiment's runs page in headless Chromium (Debian's package; installed with
apt-get when missing and we are root), and check from the rendered DOM that the sweep's
runs are listed. The screenshot is kept under tests/artifacts/ (or
$REIDBENCH_TEST_ARTIFACTS). Every process the test starts is ended by its process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reidbench.cli import main
from reidbench.harness.ui import runs_url, ui_command

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("REIDBENCH_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT = 240  # seconds: MLflow's server imports a lot; on a loaded 2-core machine it took 70 s
RUN_NAMES = [f"profd/default/synthetic_occluded/{seed}" for seed in range(3)]


def ensure_chromium() -> float:
    """Install Debian's chromium if missing (root only); return the seconds it took (0 if present)."""
    if Path(CHROMIUM).exists():
        return 0.0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    start = time.perf_counter()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {done.stderr[-500:]}")
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get installed chromium but /usr/bin/chromium is missing")
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """End ``proc`` and everything in its process group (it was started in its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing else of its group survived
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def log_sweep(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweep-ui-test")
    for seed, name in enumerate(RUN_NAMES):
        run = client.create_run(exp_id, run_name=name, tags={"method": "profd", "ablation": "default",
                                                             "dataset": "synthetic_occluded", "seed": str(seed)})
        client.log_metric(run.info.run_id, "test/standard/R1", 50.0 + seed)
        client.set_terminated(run.info.run_id)
    other = client.create_experiment("another-sweep")
    run = client.create_run(other, run_name="clip_reid/default/synthetic_market/0")
    client.set_terminated(run.info.run_id)
    return exp_id


def render(url: str, screenshot: Path, profile: Path) -> str:
    """The DOM of ``url`` after the React app had 15 s of virtual time, plus a screenshot."""
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
           "--window-size=1920,1080", f"--screenshot={screenshot}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        stop_group(proc, grace=5)
    return out


def test_ui_lists_the_sweeps_runs_in_headless_chromium(tmp_path):
    timings = {"chromium_install_s": round(ensure_chromium(), 1)}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = log_sweep(uri)
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "reidbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert server.poll() is None, f"reidbench ui exited: {(tmp_path / 'ui.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no UI after {SERVER_START_TIMEOUT} s: {(tmp_path / 'ui.log').read_text()[-2000:]}"
            time.sleep(0.5)
        timings["server_start_s"] = round(time.perf_counter() - start, 1)
        assert listening_addresses(port) == {"127.0.0.1"}, "the UI must bind to 127.0.0.1 only by default"

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "ui_runs.png"
        screenshot.unlink(missing_ok=True)
        start = time.perf_counter()
        dom = ""
        for attempt in range(2):  # a loaded machine can need a second, warmer render
            dom = render(runs_url("127.0.0.1", port, exp_id), screenshot, tmp_path / f"chromium-profile-{attempt}")
            if all(name in dom for name in RUN_NAMES):
                break
        timings["render_s"] = round(time.perf_counter() - start, 1)
        (ARTIFACTS / "ui_dom.html").write_text(dom)
        missing = [name for name in RUN_NAMES if name not in dom]
        assert not missing, f"runs not listed on the rendered page: {missing} (DOM saved in {ARTIFACTS / 'ui_dom.html'})"
        assert "clip_reid/default/synthetic_market/0" not in dom  # another experiment's run
        assert screenshot.exists() and screenshot.stat().st_size > 20_000
    finally:
        stop_group(server)
        log.close()
    assert server.poll() is not None
    (ARTIFACTS / "ui_timings.json").write_text(json.dumps(timings, indent=1))
    print(f"UI test timings: {timings}")


def test_ui_refuses_a_missing_store_and_a_server_uri(tmp_path, capsys):
    missing = tmp_path / "nothing" / "mlflow.db"
    assert main(["ui", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no tracking store at {missing}" in capsys.readouterr().err
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5000"]) == 2
    assert "is a tracking server already" in capsys.readouterr().err


def test_ui_command_binds_localhost_by_default(tmp_path):
    cmd = ui_command(str(tmp_path / "mlflow.db"))
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs_url("0.0.0.0", 5000, "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
