"""The git workspace: plumbing commits that touch no checkout, lineage, node tags, worktrees."""

import shutil
import threading
from pathlib import Path

import pytest

from regimes.base import MetricSpec, Regime
from sandbox.workspace import Workspace, WorkspaceError, edit_message

FIXTURE = Path(__file__).parent / "fixtures" / "sandbox" / "fakesci"
TRAIN = "regimes/fakesci/train.py"


def _regime(package_dir: Path, package: str = "regimes.fakesci") -> Regime:
    return Regime(name="fake", title="Fake", description="d", package=package, package_dir=package_dir,
                  train_entry=f"{package}.train", mutable=[], metrics=[MetricSpec(name="value")],
                  primary_metric="value", instructions=Path("fake.md"), editable=[{"path": TRAIN}])


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    """The fixture package plus a cache dir, generated data and bytecode that must not be copied."""
    d = tmp_path / "src" / "fakesci"
    shutil.copytree(FIXTURE, d)
    (d / "__pycache__").mkdir(exist_ok=True)
    (d / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"x")
    (d / "data").mkdir()
    (d / "data" / "inputs.pt").write_bytes(b"x")
    (d / "weights.pt").write_bytes(b"x")
    return d


@pytest.fixture()
def ws(tmp_path, src) -> Workspace:
    return Workspace.create(tmp_path / "workspace", _regime(src))


def test_create_copies_the_package_at_its_import_path(ws):
    assert ws.files("root") == [".gitignore", "regimes/__init__.py", "regimes/fakesci/__init__.py",
                                "regimes/fakesci/data.py", "regimes/fakesci/evaluate.py", TRAIN,
                                "regimes/runtime.py"]
    assert ws.read("root", "regimes/__init__.py") == ""
    # the shared runtime travels with the code (a confined training imports nothing else)
    import regimes.runtime

    assert ws.read("root", "regimes/runtime.py") == Path(regimes.runtime.__file__).read_text()
    assert ws.resolve("root") == ws.root_commit == ws.resolve("HEAD")
    assert ws.log("root")[0]["message"].startswith("root: copy of regimes.fakesci")
    with pytest.raises(WorkspaceError, match="exists and is not empty"):
        Workspace.create(ws.root, _regime(FIXTURE))


def test_plugin_package_is_copied_as_its_own_top_level_dir(tmp_path, src):
    ws = Workspace.create(tmp_path / "w2", _regime(src, package="myplugin"))
    assert ws.files("root") == [".gitignore", "myplugin/__init__.py", "myplugin/data.py", "myplugin/evaluate.py",
                                "myplugin/train.py", "regimes/__init__.py", "regimes/runtime.py"]
    with pytest.raises(WorkspaceError, match="not a Python package"):
        Workspace.create(tmp_path / "w3", _regime(tmp_path))


def test_commit_edit_touches_no_checkout(ws):
    head_before = ws.resolve("HEAD")
    on_disk = (ws.root / TRAIN).read_text()
    old = ws.read("root", TRAIN)
    msg = edit_message(4, 2, "VALUE 1 -> 2", "a larger value")
    assert msg == "[iter 4 slot 2] VALUE 1 -> 2 — hypothesis: a larger value"
    c1 = ws.commit_edit(ws.root_commit, TRAIN, old.replace("VALUE = 1.0", "VALUE = 2.0"), msg)
    c2 = ws.commit_edit(c1, TRAIN, old.replace("VALUE = 1.0", "VALUE = 3.0"), edit_message(5, 2, "3", "more"))
    # nothing checked out changed: HEAD, the main tree and its index
    assert ws.resolve("HEAD") == head_before
    assert (ws.root / TRAIN).read_text() == on_disk
    assert ws.repo.git.status("--porcelain") == ""
    entries = ws.log(c2)
    assert [e["commit"] for e in entries] == [c2, c1, ws.root_commit]
    assert entries[0]["parent"] == c1 and entries[1]["parent"] == ws.root_commit
    assert entries[1]["message"] == msg and {e["author"] for e in entries} == {"gnn-agent"}
    assert "-VALUE = 1.0\n+VALUE = 2.0" in ws.diff("root", c1, TRAIN)
    assert ws.diff(c1, c1) == ""
    with pytest.raises(WorkspaceError, match="changes nothing"):
        ws.commit_edit(c1, TRAIN, ws.read(c1, TRAIN), "same")
    with pytest.raises(WorkspaceError, match="unknown commit"):
        ws.commit_edit("deadbeef", TRAIN, "x", "m")
    # revert returns the file to the parent's version, on top of the current lineage
    r = ws.revert_file(c2, ws.root_commit, TRAIN, "[iter 6 slot 2] revert")
    assert ws.read(r, TRAIN) == old and ws.log(r, 1)[0]["parent"] == c2


def test_node_tags_and_reopen(ws):
    c = ws.commit_edit(ws.root_commit, TRAIN, ws.read("root", TRAIN) + "\n", "m")
    assert ws.node_commit(3) is None
    ws.tag_node(3, c)
    ws.tag_node(4, "root")
    again = Workspace.open(ws.root)
    assert again.node_commit(3) == c and again.node_commit(4) == ws.root_commit
    ws.tag_node(3, "root")  # a node re-run on resume moves its tag
    assert ws.node_commit(3) == ws.root_commit
    with pytest.raises(WorkspaceError, match="not a workspace"):
        Workspace.open(ws.root.parent / "nowhere")


def test_concurrent_checkouts_each_get_their_commit(ws, tmp_path):
    old = ws.read("root", TRAIN)
    commits = [ws.commit_edit(ws.root_commit, TRAIN, old.replace("VALUE = 1.0", f"VALUE = {i}.5"), f"v{i}")
               for i in range(4)]
    dests = [tmp_path / "iter_001" / f"slot_{i:02d}" / "code" for i in range(4)]
    errors = []

    def go(i):
        try:
            ws.checkout(commits[i], dests[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, d in enumerate(dests):
        assert f"VALUE = {i}.5" in (d / TRAIN).read_text()
    ws.remove_checkout(dests[0])
    assert not dests[0].exists()


def test_stale_worktrees_after_a_crash(ws, tmp_path):
    dest = tmp_path / "iter_002" / "slot_00" / "code"
    ws.checkout("root", dest)
    c = ws.commit_edit(ws.root_commit, TRAIN, ws.read("root", TRAIN).replace("1.0", "7.0"), "m")
    # crash 1: the directory survived; the resumed run checks out the same slot again
    again = Workspace.open(ws.root)
    again.checkout(c, dest)
    assert "VALUE = 7.0" in (dest / TRAIN).read_text()
    # crash 2: the directory is gone but git still lists the worktree
    shutil.rmtree(dest)
    again = Workspace.open(ws.root)
    again.checkout("root", dest)
    assert "VALUE = 1.0" in (dest / TRAIN).read_text()
    assert str(dest) in ws.repo.git.worktree("list")
    # never clobber something that is not a checkout
    other = tmp_path / "precious"
    other.mkdir()
    (other / "results.txt").write_text("keep")
    with pytest.raises(WorkspaceError, match="is not a checkout"):
        ws.checkout("root", other)
    assert (other / "results.txt").read_text() == "keep"
