"""Adversarial suite (issue 11): every route to the truth, the machine or the agent that an edited
training could take, run as a REAL training through the real runner (sandbox.runner.run_training:
stage -> confined training -> trusted evaluation), never through the guard.

The attacking package (tests/fixtures/adversarial/advsci) tries each route and records what it
obtained in OUT/got.json. Every secret it could reach holds "LEAK-". Confined, no route may obtain
anything and no "LEAK-" may appear anywhere in the out dir. The same trainings run once more with
confine=False as a control: there most routes DO obtain something, so a route that "fails" under
confinement fails because of the confinement, not because the attack is broken.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from regimes.base import MetricSpec, Regime
from sandbox import confine
from sandbox.runner import RunSpec, regime_entries, run_training
from sandbox.workspace import Workspace

ADV = Path(__file__).parent / "fixtures" / "adversarial" / "advsci"
REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(confine.landlock_abi() < 4 or not confine.namespaces_available(),
                                reason=f"confinement here: {confine.describe(True)} (needs Landlock ABI >= 4 "
                                       "and user namespaces)")

#: routes that need only the standard library (and numpy): one training
PLAIN_ROUTES = [
    "read_truth_by_path", "np_fromregex", "np_fromfile", "getattr_cache_path", "dict_cache_path",
    "list_cache_dir", "evaluate_module_load_truth", "other_slot_dir", "real_home", "run_dir",
    "project_sources", "import_trusted_modules", "write_outside_out", "write_run_dir", "write_inputs",
    "write_config", "symlink_in_out", "hardlink_in_out", "shell_subprocess", "shell_execv", "fork_exec_alias",
    "tcp_connect", "tcp_bind", "udp_send", "proc_parent_environ", "proc_parent_cwd_cmdline", "os_environ_key",
    "signal_agent", "setsid_child", "plant_module_for_eval",
]
#: routes through torch (the aliases the guard missed in issue 11): a second training
TORCH_ROUTES = ["torch_load_alias", "torch_from_file", "shell_cpp_extension", "torch_serialization_os"]
#: closed by construction even without confinement (scrubbed environment, the launcher's reaper)
CLOSED_WITHOUT_CONFINEMENT = {"os_environ_key", "setsid_child", "plant_module_for_eval"}
#: need root to work unconfined (the staged config is read-only to its owner)
ROOT_ONLY = {"write_config"}


class World:
    """A run-like layout with secrets everywhere a training must not reach."""

    def __init__(self, base: Path, torch_truth: bool = False):
        tag = secrets.token_hex(6)
        self.base = base
        self.cache = base / "cache"
        (self.cache / "advsci").mkdir(parents=True)
        self.truth = self.cache / "advsci" / "truth.json"
        self.truth.write_text(json.dumps({"W": f"LEAK-truth-{tag}"}))
        self.truth_pt = self.cache / "advsci" / "truth.pt"
        if torch_truth:
            import torch

            torch.save({"W": f"LEAK-truthpt-{tag}"}, self.truth_pt)
        self.home = base / "home"
        self.home.mkdir()
        (self.home / ".secret").write_text(f"LEAK-home-{tag}")
        self.run = base / "run"
        self.other_slot = self.run / "iterations" / "iter_001" / "slot_00"
        self.other_slot.mkdir(parents=True)
        (self.other_slot / "metrics.json").write_text(json.dumps({"note": f"LEAK-slot-{tag}"}))
        (self.run / "memory.md").write_text(f"# memory LEAK-run-{tag}\n")
        self.out = self.run / "iterations" / "iter_001" / "slot_01"
        self.escape = base / "escaped.txt"
        self.late = base / "late.txt"
        self.key = f"sk-ant-LEAK-key-{tag}"
        regime = Regime(name="adv", title="Adversarial", description="attacks", package="advsci", package_dir=ADV,
                        train_entry="advsci.train", mutable=[], metrics=[MetricSpec(name="leaked_routes")],
                        primary_metric="leaked_routes", instructions=Path("adv.md"))
        self.entries = regime_entries(regime)
        ws = Workspace.create(self.run / "workspace", regime)
        self.code = ws.checkout(ws.root_commit, self.run / "code" / ws.root_commit[:16])


class Listeners:
    """A TCP and a UDP listener on the host's loopback, recording whatever reaches them."""

    def __init__(self):
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(5)
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.received: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._tcp, daemon=True), threading.Thread(target=self._udp, daemon=True)]
        for t in self.threads:
            t.start()

    def _tcp(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            self.received.append("tcp: " + conn.recv(100).decode(errors="replace"))
            conn.close()

    def _udp(self):
        while not self.stop.is_set():
            try:
                data, _ = self.udp.recvfrom(100)
            except OSError:
                continue
            self.received.append("udp: " + data.decode(errors="replace"))

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        self.tcp.close()
        self.udp.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, OSError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _attack(base: Path, routes: list[str], confined: bool, torch_truth: bool = False) -> dict:
    """Run one attacking training; returns what the test needs to judge it."""
    world = World(base, torch_truth=torch_truth)
    lis = Listeners()
    signals: list[int] = []
    old_handler = signal.signal(signal.SIGUSR1, lambda s, f: signals.append(s))
    saved = {k: os.environ.get(k) for k in ("GNN_AGENT_CACHE", "HOME", "ANTHROPIC_API_KEY")}
    os.environ.update({"GNN_AGENT_CACHE": str(world.cache), "HOME": str(world.home), "ANTHROPIC_API_KEY": world.key})
    try:
        truth = str(world.truth_pt if torch_truth else world.truth)
        cfg = {"routes": routes, "port": lis.tcp.getsockname()[1], "udp_port": lis.udp.getsockname()[1],
               "test_pid": os.getpid(),
               "targets": {"truth": truth, "cache_root": str(world.cache), "other_slot": str(world.other_slot),
                           "home": str(world.home), "run_dir": str(world.run), "escape": str(world.escape),
                           "late_marker": str(world.late),
                           "sources": [str(REPO_ROOT / "sandbox" / "confine.py"), str(ADV / "evaluate.py"),
                                       str(REPO_ROOT / "README.md")]}}
        world.out.mkdir(parents=True, exist_ok=True)
        config = world.out / "config.yaml"  # where the loop keeps it: in the slot dir
        config.write_text(json.dumps(cfg))
        spec = RunSpec(slot=1, node_id=2, config_path=config, out_dir=world.out, code_dir=world.code,
                       train_entry="advsci.train", **world.entries, confine=confined, timeout_s=120, grace_s=1)
        res = run_training(spec)
        time.sleep(0.3)  # a late datagram or connection still counts
    finally:
        lis.close()
        signal.signal(signal.SIGUSR1, old_handler)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    got_p = world.out / "got.json"
    got = json.loads(got_p.read_text()) if got_p.is_file() and not got_p.is_symlink() else {}
    leaks = sorted(str(p.relative_to(world.out)) for p in world.out.rglob("*")
                   if p.is_file() and not p.is_symlink() and b"LEAK-" in p.read_bytes())
    setsid_pid = None
    if (world.out / "setsid.pid").is_file():
        setsid_pid = int((world.out / "setsid.pid").read_text())
    return {"res": res, "got": got, "leaks": leaks, "world": world, "received": list(lis.received),
            "signals": signals, "setsid_pid": setsid_pid}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _attack(tmp_path_factory.mktemp("plain"), PLAIN_ROUTES, confined=True)


@pytest.fixture(scope="module")
def plain_control(tmp_path_factory):
    return _attack(tmp_path_factory.mktemp("plain_control"), PLAIN_ROUTES, confined=False)


@pytest.fixture(scope="module")
def with_torch(tmp_path_factory):
    return _attack(tmp_path_factory.mktemp("torch"), TORCH_ROUTES, confined=True, torch_truth=True)


@pytest.fixture(scope="module")
def torch_control(tmp_path_factory):
    return _attack(tmp_path_factory.mktemp("torch_control"), TORCH_ROUTES, confined=False, torch_truth=True)


def test_confined_trainings_ran_and_were_evaluated(plain, with_torch):
    for run in (plain, with_torch):
        res = run["res"]
        assert res.status == "ok", (res.reason, res.traceback_tail)
        assert res.confinement.startswith("landlock ABI")
        assert res.metrics["leaked_routes"] == 0 and res.metrics["routes"] == len(run["got"])


@pytest.mark.parametrize("route", PLAIN_ROUTES)
def test_plain_route_obtains_nothing(plain, route):
    assert route in plain["got"], plain["got"]
    assert plain["got"][route]["obtained"] is None, plain["got"][route]


@pytest.mark.parametrize("route", TORCH_ROUTES)
def test_torch_route_obtains_nothing(with_torch, route):
    assert route in with_torch["got"], with_torch["got"]
    assert with_torch["got"][route]["obtained"] is None, with_torch["got"][route]


def test_no_secret_reached_the_out_dir_or_anything_outside(plain, with_torch):
    for run in (plain, with_torch):
        w = run["world"]
        assert run["leaks"] == [], run["leaks"]
        assert not w.escape.exists() and not (w.run / "planted.txt").exists()
        assert run["received"] == []  # nothing reached the host's loopback, by TCP or UDP
        assert run["signals"] == []  # the agent process got no signal
        # the shells never ran
        assert not any((w.out / m).exists() for m in ("shell_ran", "execv_ran", "cpp_ran", "ts_ran"))
        # the staged config is untouched: the evaluation read what the runner wrote
        assert "planted" not in (w.out / "config.yaml").read_text()


def test_setsid_child_does_not_outlive_the_training(plain, plain_control):
    for run in (plain, plain_control):
        pid = run["setsid_pid"]
        assert pid is not None, run["got"].get("setsid_child")
        t0 = time.time()
        while _alive(pid) and time.time() - t0 < 3:
            time.sleep(0.05)
        assert not _alive(pid), f"setsid child {pid} outlived its training"


def test_the_loops_records_in_the_out_dir_are_put_back(tmp_path):
    """launch.json / config.yaml / result.json live in the slot dir, which the training may write:
    the runner restores them and fails the training (confined or not)."""
    for confined in (True, False):
        base = tmp_path / ("on" if confined else "off")
        base.mkdir()
        out = base / "run" / "iterations" / "iter_001" / "slot_01"
        out.mkdir(parents=True)
        records = {"launch.json": b'{"commit": "abc"}\n', "result.json": b'{"status": "ok"}\n'}
        for name, data in records.items():
            (out / name).write_bytes(data)
        run = _attack(base, ["rewrite_loop_records"], confined)
        assert run["got"]["rewrite_loop_records"]["obtained"] is not None  # the writes themselves work...
        for name, data in records.items():
            assert (out / name).read_bytes() == data  # ...and are undone
        assert run["res"].status == "failed" and "changed" in run["res"].reason and "restored" in run["res"].reason


def test_modules_planted_in_the_out_dir_never_run_in_the_evaluation(plain, plain_control):
    """The evaluation runs with cwd = the out dir; -P keeps that dir off its sys.path."""
    for run in (plain, plain_control):
        assert (run["world"].out / "json.py").is_file()  # planted...
        assert not (run["world"].out / "hijacked").exists()  # ...and never imported
    assert plain["res"].status == "ok"


def test_a_symlinked_answer_never_makes_the_evaluation_read_the_truth(tmp_path):
    for confined in (True, False):
        run = _attack(tmp_path / ("on" if confined else "off"), ["predictions_symlink_to_truth"], confined)
        assert run["leaks"] == []
        if confined:  # Landlock refuses the symlink: the training's real answer is evaluated
            assert run["res"].status == "ok" and run["got"]["predictions_symlink_to_truth"]["obtained"] is None
        else:  # the runner finds the link before the evaluation and fails the training
            assert run["res"].status == "failed" and "links" in run["res"].reason


def test_control_without_confinement_the_attacks_are_real(plain_control, torch_control):
    """The same trainings unconfined: the routes work (so the confined failures are the confinement's)."""
    assert plain_control["res"].confinement == confine.OFF_LABEL
    expected = set(PLAIN_ROUTES) - CLOSED_WITHOUT_CONFINEMENT - (set() if os.geteuid() == 0 else ROOT_ONLY)
    missing = [r for r in sorted(expected) if plain_control["got"][r]["obtained"] is None]
    assert missing == [], {r: plain_control["got"][r] for r in missing}
    missing = [r for r in TORCH_ROUTES if torch_control["got"][r]["obtained"] is None]
    assert missing == [], {r: torch_control["got"][r] for r in missing}
    for r in CLOSED_WITHOUT_CONFINEMENT:
        assert plain_control["got"][r]["obtained"] is None, plain_control["got"][r]
    assert plain_control["received"] and plain_control["signals"]


REGEN_ATTACK = '''"""Attack: regenerate the true W from the simulator in the checkout and the config's seed."""
import argparse
import sys
from pathlib import Path

import torch

from regimes.signal.config import load_config
from regimes.signal.simulator import make_connectivity

ap = argparse.ArgumentParser()
for a in ("--config", "--inputs", "--out", "--device"):
    ap.add_argument(a)
args = ap.parse_args()
sim = load_config(args.config).simulation
w = make_connectivity(sim, torch.Generator().manual_seed(sim.seed))  # what generate() did before the secret
torch.save({"W": w}, Path(args.out) / "regen.pt")
sys.exit(0)
'''


def test_regenerating_the_truth_from_simulator_and_seed_gives_another_network(tmp_path, monkeypatch):
    """The simulator is in the workspace and the seed in the config: without the data secret (in the
    cache root / the agent's environment, out of the training's reach) W could be recomputed."""
    import torch
    import yaml

    from regimes.signal.config import load_config
    from regimes.signal.data import open_cache
    from regimes.sparse_connectivity import REGIME as regime

    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    cfg = regime.default_config(None, "quick")
    cfg["simulation"].update(n_neurons=30, n_frames=400)  # small: only W matters here
    ws = Workspace.create(tmp_path / "workspace", regime)
    code = ws.checkout(ws.root_commit, tmp_path / "code")
    (code / "regimes" / "signal" / "regen_attack.py").write_text(REGEN_ATTACK)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = run_training(RunSpec(slot=0, node_id=1, config_path=config, out_dir=tmp_path / "out", code_dir=code,
                               train_entry="regimes.signal.regen_attack", **regime_entries(regime), timeout_s=300))
    assert (tmp_path / "out" / "regen.pt").is_file(), (res.reason, res.traceback_tail)
    regen = torch.load(tmp_path / "out" / "regen.pt", weights_only=True)["W"]
    true_w = open_cache(load_config(config).simulation, log=lambda *_: None).truth()["W"]
    assert regen.shape == true_w.shape
    assert not torch.allclose(regen, true_w), "the training regenerated the true W from the seed"
    # control: with the data secret (which only trusted code has) the same recipe gives the truth
    from regimes.signal import data as signal_data
    from regimes.signal.simulator import make_connectivity

    net, _ = signal_data.generators(load_config(config).simulation, tmp_path / "cache")
    assert torch.equal(make_connectivity(load_config(config).simulation, net), true_w)
