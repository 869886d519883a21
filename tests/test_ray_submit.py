"""`ray submit cluster-local.yaml sweeps/ablation_profd.py -- --smoke`, for real, on this machine.

What a user of the on-prem variant does, end to end: an SSH server on 127.0.0.1 (Debian's
openssh-server and rsync, installed with apt-get when missing), `ray up` of the shipped
``cluster-local.yaml`` (a copy with the SSH key this test generates and the node's environment
built from the interpreter running the tests, see below), `ray submit` of the ProFD ablation
sweep in smoke mode, then `ray down`. It checks what
the user would look at afterwards: `ray submit` exits 0; the head's MLflow server
(127.0.0.1:5050, started by the cluster's ``head_start_ray_commands``) holds the
``ablation_profd`` experiment with exactly one FINISHED run per trial of the smoke grid and
no RUNNING run; the leaderboard CSV (and Markdown) is in the head's home with one row per
ablation, built from those runs. It also checks that the login shell `ray submit` uses
imports ``reidbench`` from the mount (``~/reidbench-src``), not from this checkout, and that
the sweep really logged to the server (no SQLite fallback under the output folder).

Decisions:

* The node's environment: the shipped ``setup_commands`` make ``~/reidbench-venv`` from the
  node's own ``python3`` with ``--system-site-packages`` and pip-install the mount into it,
  which assumes (as on a real on-prem node) that the system interpreter holds every
  dependency and a setuptools that builds the editable wheel offline. The tests may run
  from a venv or a conda env instead, where the loopback node's system ``python3`` has
  neither. So the copy swaps exactly those two commands (the test fails if it cannot find
  them) for: a venv made by the interpreter running the tests (same Python version), whose
  site-packages gets one ``.pth`` file putting the mount ``~/reidbench-src`` first on
  ``sys.path``, then the test interpreter's site folders (``site.addsitedir``, so their own
  ``.pth`` files apply too). No pip, setuptools or download on the node, and the test's own
  environment is only read: its site folders are listed before and after, and must match.
  Everything else in the shipped file (the ``ray`` launcher, PATH, MLflow, `ray start`)
  runs as shipped.
* Processes: every process this test starts carries an environment variable with a token
  unique to this run (the ``ray`` commands get it from us; the sshd gets it too and hands
  it to every session through ``SetEnv``, so the head's Ray processes, its Ray workers and
  the MLflow server inherit it). Cleanup ends the MLflow server by its pid file, sshd by
  its pid file, then every process still carrying the token, by PID (`ray down` has been
  seen to leave the head's ``gcs_server`` running; ssh control masters linger 10 s).
  Nothing is ended by name, so other users' processes on the machine are never touched —
  except by Ray itself: ``ray up``/``ray down`` run
  ``ray stop``, which stops every Ray process of the user. CI runs tests one at a time,
  so that is acceptable there; do not run this test beside other Ray work.
* Files: ``~/.bashrc`` (setup appends two lines) is backed up and restored byte for byte;
  ``~/reidbench-src``, ``~/reidbench-venv``, ``~/reidbench-mlflow``, ``~/leaderboards``,
  Ray's ``~/ray_bootstrap_*`` and the submitted ``~/ablation_profd.py`` are removed. If
  any of them exists before the test starts (a leftover, or a real cluster set up on this
  machine), the test fails rather than overwrite it, unless a claim file says a run of this
  test made it: before it creates anything, a run writes ``~/.reidbench-ray-submit-test.json``
  (its token, PID, ``~/.bashrc`` as it was, and the paths above, none of which existed then)
  and removes it only when its cleanup is complete. A run that was killed (a session stopped
  mid-test, SIGKILL) leaves the claim behind; the next run ends the processes carrying the
  claim's token, restores ``~/.bashrc`` and removes the claimed paths, and says so. A claim
  whose owner still runs stops the test. The synthetic benchmark is generated
  into the shared cache (``~/.cache/reidbench``) and kept there, as any run would. Ray's
  files on the "laptop" side go too when this run made them: the config cache
  ``/tmp/ray-config-<hash>``, the local provider's ``/tmp/ray/cluster-reidbench-local.*``
  and a ``/tmp/ray/ray_current_cluster`` that `ray down` failed to reset (it would send a
  later plain ``ray.init()`` to the dead cluster). Ray's session logs in /tmp/ray stay.
* The sweep runs exactly as ``--smoke`` defines it, no extra overrides: of a trial's ~75 s
  on 2 loaded cores only ~30 s is its MLflow run and ~5-8 s its epochs (the rest is the
  trial actor starting and importing torch), so cutting epochs (``optim.epochs_scale``)
  would save little.
* The sweep writes under ``~/reidbench-submit-test-<token>`` (``--output-dir``), not the
  default ``~/runs/sweeps``, so a user's own runs in the home are never overwritten.
* sshd listens on 127.0.0.1:22 only (Ray's local provider always connects to port 22),
  root with the generated key only, ``UsePAM no``, its own config, host key and pid file;
  ``StrictModes no`` because the authorized-keys file lives in the test's temporary folder.

Skipped (with the reason) only when not running as root or when apt-get cannot install
the packages. Timings of apt-get, `ray up`, `ray submit` and `ray down` are printed and
written with the logs to ``tests/artifacts/ray_submit/`` (or $REIDBENCH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from reidbench.harness.tune import expand, sweep_parser

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HOME = Path.home()
ARTIFACTS = Path(os.environ.get("REIDBENCH_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")) / "ray_submit"
SSHD = Path("/usr/sbin/sshd")
SSH_PORT = 22  # Ray's local provider has no port setting
MLFLOW_URI = "http://127.0.0.1:5050"  # cluster-local.yaml's head_start_ray_commands
EXPERIMENT = "ablation_profd"
SMOKE_DATASETS = ["synthetic_occluded"]  # sweeps/ablation_profd.py's default
MARK = "REIDBENCH_RAY_SUBMIT_TEST"
BASHRC = HOME / ".bashrc"
# Everything the cluster's commands and Ray create in the head's home.
REMOTE_PATHS = ["reidbench-src", "reidbench-venv", "reidbench-mlflow", "leaderboards", "ray_bootstrap_config.yaml",
                "ray_bootstrap_key.pem", "ablation_profd.py"]
# Measured on the 2-core development machine while other work kept its load average at 10-14:
# `ray up` 59-86 s (rsync, venv, editable install, MLflow server, `ray start`), `ray submit` of
# the 10-trial smoke sweep 419-552 s, `ray down` 6-31 s.
UP_TIMEOUT = 900
SUBMIT_TIMEOUT = 1800
DOWN_TIMEOUT = 300
RAY_TMP = Path(tempfile.gettempdir()) / "ray"
NODE_PTH = "reidbench-test-env.pth"  # written into the node venv's site-packages
CLAIM = HOME / ".reidbench-ray-submit-test.json"  # what a run is about to create (see the module docstring)
RAY_LOCAL_FILES = [RAY_TMP / "ray_current_cluster", RAY_TMP / "cluster-reidbench-local.state",
                   RAY_TMP / "cluster-reidbench-local.lock"]


# ----------------------------------------------------------------------------- the node's environment

def interpreter_site_dirs() -> list[str]:
    """The site folders of the interpreter running the tests (venv, conda env or system Python),
    in the order it searches them: user site, then site-packages (a venv made with
    --system-site-packages lists its base's too), then purelib/platlib if not among them."""
    dirs = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    paths = sysconfig.get_paths()
    dirs += [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    found = []
    for d in dirs:
        if Path(d).is_dir() and d not in found:
            found.append(d)
    return found


def site_listing(dirs: list[str]) -> dict[str, list[str]]:
    """What each site folder holds (``__pycache__`` aside: importing may add bytecode)."""
    return {d: sorted(n for n in os.listdir(d) if n != "__pycache__") for d in dirs}


def node_setup_commands(shipped: list[str], site_dirs: list[str]) -> list[str]:
    """``shipped`` with its venv creation and pip install swapped for a venv made by this
    interpreter that sees the mount first, then ``site_dirs`` (see the module docstring)."""
    make = [i for i, c in enumerate(shipped) if " -m venv " in c and "reidbench-venv" in c]
    install = [i for i, c in enumerate(shipped) if "pip install" in c and "reidbench-src" in c]
    assert len(make) == 1 and len(install) == 1, (
        f"cluster-local.yaml's setup_commands changed: the test expects one command making ~/reidbench-venv and "
        f"one pip-installing ~/reidbench-src, to swap them for the test's environment: {shipped}")
    # The .pth: the mount as a plain path line, then one `import site; site.addsitedir(...)` line per folder.
    write_pth = ('import sys, sysconfig, pathlib; src, *dirs = sys.argv[1:]; '
                 'lines = [src] + ["import site; site.addsitedir(%r)" % d for d in dirs]; '
                 f'pathlib.Path(sysconfig.get_path("purelib"), "{NODE_PTH}").write_text("".join(l + chr(10) for l in lines))')
    commands = list(shipped)
    commands[make[0]] = (f"test -x ~/reidbench-venv/bin/python || "
                         f"{shlex.quote(sys.executable)} -m venv --without-pip ~/reidbench-venv")
    commands[install[0]] = (f"~/reidbench-venv/bin/python -c {shlex.quote(write_pth)} \"$HOME/reidbench-src\" "
                            + " ".join(shlex.quote(d) for d in site_dirs))
    return commands


# ----------------------------------------------------------------------------- machine set-up

def ensure_packages() -> float:
    """Install Debian's openssh-server and rsync if missing; return the seconds apt-get took (0 if present)."""
    if SSHD.exists() and shutil.which("rsync") and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return 0.0
    if shutil.which("apt-get") is None:
        pytest.skip("openssh-server/rsync are missing and apt-get is not available to install them")
    start = time.perf_counter()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "openssh-server", "rsync"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install openssh-server and rsync ({' '.join(cmd)}): {done.stderr[-500:]}")
    if not (SSHD.exists() and shutil.which("rsync")):
        pytest.skip("apt-get installed openssh-server and rsync but /usr/sbin/sshd or rsync is missing")
    return time.perf_counter() - start


def listening(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8)]
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def marked_processes(token: str) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries this run's token."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARK) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_alive(proc: psutil.Process) -> bool:
    """Still running (the same process: psutil compares creation times), and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:150]}")
        except psutil.Error:
            out.append(f"{p.pid} (gone)")
    return out


def end_processes(procs: list[psutil.Process], grace: float = 15.0) -> None:
    """SIGTERM each process by PID, wait, SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
        if not procs:
            return


def end_by_pid_file(pid_file: Path, is_ours) -> tuple[list[psutil.Process], str | None]:
    """End the process ``pid_file`` names and its descendants, if ``is_ours(proc)``; return them
    (to check later that they are gone) and a note when the file does not lead to one of ours."""
    try:
        proc = psutil.Process(int(pid_file.read_text().strip()))
        if not is_ours(proc):
            return [], f"pid {proc.pid} in {pid_file} is not a process this test started; left alone"
        family = [*proc.children(recursive=True), proc]
    except FileNotFoundError:
        return [], f"{pid_file} is missing"
    except (ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
        return [], None
    end_processes(family)
    return family, None


def process_identity(pid: int) -> float | None:
    """The creation time of process ``pid`` (with the PID, what identifies it), or None when it is gone."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def remove_path(path: Path) -> bool:
    """Remove a file, link or folder this test made; True if something was there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return False
    return True


def recover_interrupted_run(home: Path, claim_path: Path) -> list[str]:
    """Undo what a killed run of this test left in ``home``, as its claim file lists it; return notes.

    Only what the claim names is touched: the processes carrying its token, ``.bashrc`` (written
    back as the claim recorded it; one the run created is removed only if it holds nothing but the
    cluster's lines) and the claimed paths, which did not exist when that run started. Fails when
    the claim's owner is still running (another run of this test)."""
    if not claim_path.exists():
        return []
    claim = json.loads(claim_path.read_text())
    if process_identity(claim["pid"]) == claim["pid_created"]:
        pytest.fail(f"{claim_path}: run {claim['token']} (pid {claim['pid']}) of this test is still running")
    notes = [f"{claim_path}: run {claim['token']} (started {time.ctime(claim['started'])}) was interrupted; "
             f"undoing what it left"]
    left = marked_processes(claim["token"])
    if left:
        notes.append(f"ended its processes {describe(left)}")
        end_processes(left)
    bashrc = home / ".bashrc"
    if claim["bashrc"] is not None:
        if not bashrc.exists() or bashrc.read_bytes() != bytes.fromhex(claim["bashrc"]):
            bashrc.write_bytes(bytes.fromhex(claim["bashrc"]))
            bashrc.chmod(claim["bashrc_mode"])
            notes.append(f"restored {bashrc}")
    elif bashrc.exists():
        lines = [line for line in bashrc.read_text(errors="replace").splitlines() if line.strip()]
        if all("reidbench-venv/bin" in line or "MLFLOW_TRACKING_URI" in line for line in lines):
            bashrc.unlink()
            notes.append(f"removed {bashrc}, which that run created")
    removed = []
    removed += [name for name in claim["paths"] if remove_path(home / name)]
    removed += [name for name in claim["ray_local_files"] if remove_path(Path(name))]
    if removed:
        notes.append(f"removed {removed}")
    claim_path.unlink()
    return notes


class LocalCluster:
    """The SSH server, the cluster config copy and everything to undo afterwards."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.token = secrets.token_hex(8)
        self.env = {**os.environ, MARK: self.token, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.key = workdir / "id_ed25519"
        self.config = workdir / "cluster-local.yaml"
        self.output_dir = HOME / f"reidbench-submit-test-{self.token}"
        self.sshd: subprocess.Popen | None = None
        self.sshd_pid_file = workdir / "sshd.pid"
        self.bashrc: bytes | None = None
        self.bashrc_mode: int | None = None
        self.made_run_sshd = False
        self.cluster_started = False
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.ray_files_before = {p for p in RAY_LOCAL_FILES if p.exists()}
        self.notes: list[str] = []

    # -- preconditions
    def check_machine_is_free(self) -> None:
        """Fail (not skip) when something this test would create or bind is already there."""
        taken = {port: listening(port) for port in (SSH_PORT, 5050)}
        taken = {port: addrs for port, addrs in taken.items() if addrs}
        assert not taken, f"ports needed by the test are in use: {taken} (sshd needs 22, the head's MLflow 5050)"
        present = [str(HOME / p) for p in REMOTE_PATHS if (HOME / p).exists()]
        assert not present, (f"{present} already exist; this test creates and removes them (a leftover of an "
                             f"interrupted run, or a real cluster set up here?) — remove them first")
        text = BASHRC.read_text() if BASHRC.exists() else ""
        assert "reidbench-venv/bin" not in text and "MLFLOW_TRACKING_URI" not in text, (
            f"{BASHRC} already has the cluster's PATH/MLFLOW_TRACKING_URI lines; the test restores the file as it "
            f"finds it, so remove them first")

    def write_claim(self) -> None:
        """Record, before anything is made, what this run will create (removed by a complete cleanup)."""
        bashrc = BASHRC.read_bytes() if BASHRC.exists() else None
        partial = CLAIM.with_name(CLAIM.name + ".tmp")  # written whole, then renamed: a kill leaves no half claim
        partial.write_text(json.dumps({
            "token": self.token, "pid": os.getpid(), "pid_created": process_identity(os.getpid()),
            "started": self.started, "bashrc": bashrc.hex() if bashrc is not None else None,
            "bashrc_mode": BASHRC.stat().st_mode & 0o7777 if bashrc is not None else None,
            "paths": [*REMOTE_PATHS, self.output_dir.name],
            "ray_local_files": [str(p) for p in RAY_LOCAL_FILES if p not in self.ray_files_before]}))
        os.replace(partial, CLAIM)

    # -- sshd
    def start_sshd(self) -> None:
        run = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*run, "-f", str(self.key), "-C", f"reidbench-test-{self.token}"], check=True)
        subprocess.run([*run, "-f", str(self.dir / "ssh_host_ed25519_key")], check=True)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(f"{self.key}.pub").read_text())
        authorized.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text(f"""\
Port {SSH_PORT}
ListenAddress 127.0.0.1
HostKey {self.dir / 'ssh_host_ed25519_key'}
PidFile {self.sshd_pid_file}
AuthorizedKeysFile {authorized}
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
MaxSessions 64
MaxStartups 64
SetEnv {MARK}={self.token}
""")
        if not Path("/run/sshd").exists():  # privilege separation directory; the package makes it at boot only
            Path("/run/sshd").mkdir(mode=0o755, parents=True)
            self.made_run_sshd = True
        check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, f"sshd rejects the generated config: {check.stderr}"
        self.sshd = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-E", str(self.dir / "sshd.log")],
                                     env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.sshd.poll() is not None:
                pytest.fail(f"sshd exited with {self.sshd.returncode}: {(self.dir / 'sshd.log').read_text()}")
            if self.ssh("true", check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"sshd did not accept the key within 30 s: {(self.dir / 'sshd.log').read_text()}")
        assert int(self.sshd_pid_file.read_text()) == self.sshd.pid
        assert listening(SSH_PORT) == {"127.0.0.1"}, f"sshd must listen on 127.0.0.1 only: {listening(SSH_PORT)}"

    def ssh(self, command: str, check: bool = True, login: bool = False) -> subprocess.CompletedProcess:
        """Run ``command`` on the head as `ray` does (``login``: through ``bash --login -c -i``)."""
        if login:
            command = f"bash --login -c -i {shlex.quote(command)}"
        done = subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
             "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}", "-o", "LogLevel=ERROR",
             "-o", "ConnectTimeout=10", "-p", str(SSH_PORT), "root@127.0.0.1", command],
            capture_output=True, text=True, env=self.env, timeout=120, stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"ssh {command!r} failed ({done.returncode}): {done.stderr[-2000:]}"
        return done

    # -- the cluster
    def write_config(self, site_dirs: list[str]) -> None:
        """The shipped config with this test's key and the node's environment built from ``site_dirs``."""
        config = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
        config["auth"]["ssh_private_key"] = str(self.key)
        config["setup_commands"] = node_setup_commands(config["setup_commands"], site_dirs)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def backup_bashrc(self) -> None:
        if BASHRC.exists():
            self.bashrc = BASHRC.read_bytes()
            self.bashrc_mode = BASHRC.stat().st_mode & 0o7777

    def ray(self, name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """A `ray` CLI command from the repository root (``file_mounts``' "." is the cwd), timed and logged."""
        log = self.dir / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as out:
            try:
                done = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], cwd=REPO, env=self.env,
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess(args, returncode=-9)
                out.write(f"\n[test] timed out after {timeout} s\n")
        self.timings[f"ray {name}"] = round(time.perf_counter() - start, 1)
        print(f"[ray-submit-test] ray {name}: {self.timings[f'ray {name}']} s, exit {done.returncode}")
        done.stdout = log.read_text(errors="replace")
        return done

    # -- undo everything
    def cleanup(self) -> list[str]:
        """Undo everything; return what could not be undone (empty when all is clean)."""
        problems, ended = [], []
        if self.cluster_started:
            down = self.ray("down", "down", "-y", str(self.config), timeout=DOWN_TIMEOUT)
            if down.returncode != 0:
                problems.append(f"ray down exited {down.returncode}: {down.stdout[-1500:]}")
            # The MLflow server is not Ray's: end it by the pid file head_start_ray_commands wrote.
            family, note = end_by_pid_file(HOME / "reidbench-mlflow" / "server.pid",
                                           lambda p: p.environ().get(MARK) == self.token and "mlflow" in " ".join(p.cmdline()))
            ended += family
            if note:
                self.notes.append(note)
        if self.sshd is not None:
            # sshd rewrites its process title over its environment, so it is recognised by PID (our child).
            family, note = end_by_pid_file(self.sshd_pid_file, lambda p: p.pid == self.sshd.pid)
            ended += family
            if note:
                self.notes.append(note)
            try:
                self.sshd.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(timeout=15)
        # Whatever else this test started (the head's gcs_server, Ray workers, ssh control masters).
        for _ in range(3):
            left = marked_processes(self.token)
            if not left:
                break
            self.notes.append(f"ended by PID after ray down: {describe(left)}")
            end_processes(left)
            ended += left
        alive = [p for p in ended if is_alive(p)]
        if alive:
            problems.append(f"processes this test ended are still alive: {describe(alive)}")
        still = marked_processes(self.token)
        if still:
            problems.append(f"processes this test started are still alive: {describe(still)}")
        if self.bashrc is not None:
            BASHRC.write_bytes(self.bashrc)
            BASHRC.chmod(self.bashrc_mode)
        elif BASHRC.exists():
            BASHRC.unlink()
        for name in [*REMOTE_PATHS, self.output_dir.name]:
            path = HOME / name
            remove_path(path)
            if path.exists():
                problems.append(f"could not remove {path}")
        if self.made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        # Ray's bookkeeping on the "laptop" side: the config cache `ray down` wrote (named by a hash
        # of the config, which holds our key's path), the local provider's state files if they are
        # new, and the current-cluster address if `ray down` did not reset it (a stale one makes a
        # later plain ray.init() try to join the dead cluster).
        for cache in Path(tempfile.gettempdir()).glob("ray-config-*"):
            try:
                if cache.stat().st_mtime >= self.started and str(self.key) in cache.read_text(errors="replace"):
                    cache.unlink()
            except OSError:
                pass
        for path in RAY_LOCAL_FILES:
            if path not in self.ray_files_before and path.exists():
                if path.name == "ray_current_cluster":
                    self.notes.append(f"removed {path} left by the cluster ({path.read_text().strip()})")
                path.unlink()
        if not problems:
            CLAIM.unlink(missing_ok=True)
        return problems

    def save_artifacts(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in ("up.log", "submit.log", "down.log", "sshd.log"):
            if (self.dir / log).exists():
                shutil.copy(self.dir / log, ARTIFACTS / log)
        (ARTIFACTS / "timings.json").write_text(json.dumps({**self.timings, "notes": self.notes}, indent=2))


def smoke_trial_names() -> list[str]:
    """The run names the smoke sweep must produce, from the sweep script's own grid."""
    spec = importlib.util.spec_from_file_location("ablation_profd_sweep", REPO / "sweeps" / "ablation_profd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = sweep_parser("", EXPERIMENT).parse_args(["--smoke"])
    return [p["name"] for p in expand(module.trials(args), SMOKE_DATASETS, [0])]


# ----------------------------------------------------------------------------- the tests

def test_node_environment_imports_the_mount_first_and_this_interpreters_packages(tmp_path):
    """The copy's setup_commands, run in a scratch home (no sshd, no root, a few seconds): the node
    venv imports reidbench from the mount and ray from the test interpreter, its `ray` launcher
    works, every other shipped command is kept, and the test interpreter's site folders are untouched."""
    shipped = yaml.safe_load((REPO / "cluster-local.yaml").read_text())["setup_commands"]
    site_dirs = interpreter_site_dirs()
    assert sysconfig.get_paths()["purelib"] in site_dirs, site_dirs
    before = site_listing(site_dirs)
    commands = node_setup_commands(shipped, site_dirs)
    assert len(commands) == len(shipped) and sum(a != b for a, b in zip(commands, shipped)) == 2
    home = tmp_path / "home"
    shutil.copytree(REPO / "reidbench", home / "reidbench-src" / "reidbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(home)
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command!r} failed: {done.stderr[-2000:]}"
    venv = home / "reidbench-venv"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import reidbench, ray, sys; print(reidbench.__file__); "
                            "print(ray.__file__); print(sys.prefix)"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    package, ray_module, prefix = probe.stdout.split()
    import ray

    assert Path(package) == home / "reidbench-src" / "reidbench" / "__init__.py"
    assert Path(ray_module).resolve() == Path(ray.__file__).resolve() and prefix == str(venv)
    launcher = subprocess.run([str(venv / "bin" / "ray"), "--version"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert launcher.returncode == 0 and ray.__version__ in launcher.stdout, launcher.stdout + launcher.stderr[-2000:]
    assert site_listing(site_dirs) == before


def test_a_killed_runs_leftovers_are_undone_from_its_claim_and_nothing_else(tmp_path):
    """The CI failure this guards against: a run killed mid-test (its session stopped) left
    ~/reidbench-src and the rest behind, and every later run failed on them."""
    home, claim_path = tmp_path / "home", tmp_path / "claim.json"
    home.mkdir()
    original = b"# the user's own bashrc\n"
    (home / ".bashrc").write_bytes(original + b'export PATH="$HOME/reidbench-venv/bin:$PATH"\n')
    (home / "reidbench-src" / "reidbench").mkdir(parents=True)
    (home / "ray_bootstrap_key.pem").write_text("key")
    (home / "unclaimed").mkdir()
    (home / "leaderboards.bak").write_text("a user's file beside a claimed name")
    token, other = secrets.token_hex(8), secrets.token_hex(8)
    sleepers = {t: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                    env={**os.environ, MARK: t}) for t in (token, other)}
    claim = {"token": token, "pid": os.getpid(), "pid_created": process_identity(os.getpid()), "started": time.time(),
             "bashrc": original.hex(), "bashrc_mode": 0o644, "paths": [*REMOTE_PATHS, f"reidbench-submit-test-{token}"],
             "ray_local_files": [str(tmp_path / "ray_current_cluster")]}
    try:
        # the owner is alive (this very process): nothing is touched
        claim_path.write_text(json.dumps(claim))
        with pytest.raises(pytest.fail.Exception, match="still running"):
            recover_interrupted_run(home, claim_path)
        assert (home / "reidbench-src").exists() and claim_path.exists() and sleepers[token].poll() is None
        # the same PID with another creation time is another process: the owner is gone
        claim_path.write_text(json.dumps({**claim, "pid_created": 0.0}))
        (tmp_path / "ray_current_cluster").write_text("127.0.0.1:6379")
        notes = recover_interrupted_run(home, claim_path)
        assert sorted(p.name for p in home.iterdir()) == [".bashrc", "leaderboards.bak", "unclaimed"], notes
        assert (home / ".bashrc").read_bytes() == original
        assert not (tmp_path / "ray_current_cluster").exists() and not claim_path.exists()
        assert sleepers[token].wait(timeout=30) is not None and sleepers[other].poll() is None
        assert any("interrupted" in n for n in notes)
        assert recover_interrupted_run(home, claim_path) == []  # no claim: nothing to do
    finally:
        for proc in sleepers.values():
            proc.kill()
            proc.wait()


def test_ray_submit_smoke_sweep_end_to_end(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: installs packages with apt-get and runs sshd for the local cluster's ssh_user root")
    apt_seconds = ensure_packages()
    cluster = LocalCluster(tmp_path)
    cluster.timings["apt-get install"] = round(apt_seconds, 1)
    cluster.notes += recover_interrupted_run(HOME, CLAIM)
    cluster.check_machine_is_free()
    cluster.write_claim()
    expected = smoke_trial_names()
    assert len(expected) == 10, f"the smoke grid changed: {expected}"
    site_dirs = interpreter_site_dirs()
    site_before = site_listing(site_dirs)
    try:
        cluster.backup_bashrc()
        cluster.start_sshd()
        cluster.write_config(site_dirs)
        cluster.cluster_started = True  # from here on, `ray down` runs in cleanup even if `ray up` fails half-way
        up = cluster.ray("up", "up", "-y", "--no-config-cache", str(cluster.config), timeout=UP_TIMEOUT)
        assert up.returncode == 0, f"ray up failed:\n{up.stdout[-5000:]}"

        # The shell `ray submit` runs the script in: the venv first on PATH, the package from the mount.
        probe = cluster.ssh("python -c 'import reidbench, ray, torch, sys; print(reidbench.__file__); print(sys.prefix); "
                            "print(ray.__file__)'; command -v ray; echo $MLFLOW_TRACKING_URI", login=True)
        package, prefix, ray_module, ray_bin, uri = probe.stdout.strip().splitlines()[-5:]
        assert package.startswith(str(HOME / "reidbench-src" / "reidbench")), package
        assert prefix == str(HOME / "reidbench-venv") and ray_bin == str(HOME / "reidbench-venv" / "bin" / "ray")
        # the node's ray is this interpreter's (so its version matches the `ray` CLI driving the cluster)
        import ray

        assert Path(ray_module).resolve() == Path(ray.__file__).resolve(), (ray_module, ray.__file__)
        assert uri == MLFLOW_URI

        submit = cluster.ray("submit", "submit", "--no-config-cache", str(cluster.config),
                             str(REPO / "sweeps" / "ablation_profd.py"), "--", "--smoke",
                             "--output-dir", str(cluster.output_dir), timeout=SUBMIT_TIMEOUT)
        assert submit.returncode == 0, f"ray submit failed:\n{submit.stdout[-8000:]}"
        assert f"{len(expected)} trials" in submit.stdout, submit.stdout[-3000:]

        # MLflow, queried on the head's server before it is shut down.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=MLFLOW_URI)
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None, f"no experiment {EXPERIMENT!r} on {MLFLOW_URI}"
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        names = Counter(r.info.run_name for r in runs)
        assert names == Counter(expected), f"expected one run per trial {expected}, found {dict(names)}"
        statuses = {r.info.run_name: r.info.status for r in runs}
        assert set(statuses.values()) == {"FINISHED"}, statuses
        for run in runs:
            assert run.data.tags.get("sweep") == EXPERIMENT, run.data.tags
            test_metrics = [k for k in run.data.metrics if k.startswith("test/") and k.endswith(("/R1", "/mAP"))]
            assert test_metrics, f"{run.info.run_name} logged no test metrics: {sorted(run.data.metrics)}"
            # the ProFD sweep keeps the last epoch (tune.LAST_EPOCH), so no validation split
            assert float(run.data.params["data.val_fraction"]) == 0.0, run.data.params["data.val_fraction"]
            assert not any(k.startswith("val/") for k in run.data.metrics), sorted(run.data.metrics)
        assert not (cluster.output_dir / "mlflow.db").exists(), "the sweep fell back to SQLite: MLFLOW_TRACKING_URI lost"

        # The leaderboard, written on the head (this machine's home).
        board_dir = cluster.output_dir / "leaderboard" / EXPERIMENT
        assert (board_dir / "leaderboard.md").exists()
        board = pd.read_csv(board_dir / "leaderboard.csv")
        ablations = sorted(name.split("/")[1] for name in expected)
        profd = board[board["method"] == "profd"]
        assert sorted(profd["ablation"].unique()) == ablations, board[["method", "ablation", "dataset"]]
        assert (profd["dataset"] == "synthetic_occluded").all() and (profd["n_seeds"] == 1).all()
        assert profd["R1_mean"].between(0, 100).all() and profd["mAP_mean"].between(0, 100).all()
        board_ids = {i for ids in profd["run_ids"].astype(str) for i in ids.replace(";", ",").split(",") if i.strip()}
        assert {i.strip() for i in board_ids} == {r.info.run_id for r in runs}
        assert profd["setup"].astype(str).str.contains("tiny").all(), "smoke runs must be labelled as unlike the paper"
    finally:
        problems = cluster.cleanup()
        cluster.save_artifacts()
        print(f"[ray-submit-test] timings {cluster.timings}")
        for note in cluster.notes:
            print(f"[ray-submit-test] {note}")
    assert not problems, problems
    assert site_listing(site_dirs) == site_before, "the node's set-up changed the test interpreter's site folders"
    assert (BASHRC.read_bytes() if BASHRC.exists() else None) == cluster.bashrc, f"{BASHRC} was not restored"
    assert not listening(SSH_PORT) and not listening(5050), "sshd or the MLflow server still listens"
