"""The structure the code relies on: layers, one home per record, one edit path, the tool registry."""

import ast
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from rundir.readers import read_status
from rundir.records import RunInfo, RunStatus
from rundir.store import Store, read_nodes
from sandbox.guard import editable_spans
from tools.base import REGISTRY, register
from tests.loop_helpers import box
from tools.toolbox import _load_tools

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports (outside `if TYPE_CHECKING:`), incl. lazy imports."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package,forbidden", [
    ("rundir", ("agent", "tools", "sandbox")),  # the run directory sits below the tools
    ("tools", ("agent",)),  # no arrow back up to the loop
    ("sandbox", ("agent", "tools", "rundir")),
])
def test_layers_import_only_downwards(package, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p in sorted((ROOT / package).glob("*.py"))
           for m in _imports(p) if m.split(".")[0] in forbidden]
    assert bad == []


PACKAGES = ("agent", "tools", "rundir", "sandbox", "regimes")


def _module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (incl. lazy, function-level ones; not TYPE_CHECKING).
    `from pkg import name` is an edge to pkg.name where that is a module (`from regimes import runtime`)."""
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING" for n in ast.walk(node)}
        out = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
                out |= subs or ({node.module} & mods.keys())
        graph[mod] = out - {mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    """No two modules import each other, not even through a function-level import (a lazy import
    that dodges a circle still ties the two modules together; move the shared part down instead)."""
    assert _cycles(_module_graph()) == []


def test_the_circle_check_sees_lazy_imports():
    graph = _module_graph()
    assert "regimes.metabolism.plots" in graph["regimes.metabolism.evaluate"]  # function-level import
    assert "regimes.runtime" in graph["regimes.metabolism.data"]  # `from regimes import runtime` in a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_tool_contract_imports_no_tool():
    """tools/base.py is what the tool families import: importing a tool from it would close a circle."""
    families = ("code", "config", "files", "memory", "mutation")
    assert not _imports(ROOT / "tools" / "base.py") & {"tools.toolbox", *(f"tools.{f}" for f in families)}
    for family in families:
        assert "tools.toolbox" not in _imports(ROOT / "tools" / f"{family}.py")


def test_slot_scoped_tools_are_declared_at_registration(toy_ctx):
    _load_tools()
    scoped = {n for n, t in REGISTRY.items() if t.slot_scoped}
    assert scoped == {"set_config", "edit_code", "revert_code", "finish_mutation", "submit_analysis",
                      "choose_parent"}
    res = box(toy_ctx, "analyse", [0]).call("submit_analysis", {"slot": 1, "visual": "v", "observation": "o"})
    assert not res.ok and "slot 1 is not part of this step" in res.error


def test_a_slot_scoped_tool_needs_a_slot_field():
    class NoSlot(BaseModel):
        x: int = 0

    with pytest.raises(TypeError, match="slot_scoped needs a `slot` field"):
        register("no_slot_tool", "d", NoSlot, slot_scoped=True)(lambda env, args: "")
    assert "no_slot_tool" not in REGISTRY


def test_show_code_marks_what_the_guard_lets_change(toy_ctx):
    """The '>' lines are the guard's editable lines: a region's interior, not its markers (show_code
    once marked the markers too, which no edit may touch)."""
    path = "toyfit/train.py"
    shown = box(toy_ctx, "mutate", [0, 1]).call("show_code", {"slot": 0, "path": path}).content
    marked = {int(ln[1:6]) for ln in shown.splitlines()[1:] if ln.startswith(">")}
    text = toy_ctx.workspace.read(toy_ctx.workspace.root_commit, path)
    spans = editable_spans(toy_ctx.regime, path, text)
    assert marked == {i for a, b, _ in spans for i in range(a, b + 1)} and marked
    lines = text.splitlines()
    assert not any("editable" in lines[i - 1] for i in marked)  # neither marker line
    assert "(editable: update)" in shown.splitlines()[0]


def test_a_missing_file_names_the_workspace_error(toy_ctx):
    res = box(toy_ctx, "mutate", [0, 1]).call("show_code", {"slot": 0, "path": "toyfit/nope.py"})
    assert not res.ok and "no file 'toyfit/nope.py'" in res.error and "does not exist at commit" in res.error


def test_status_json_is_one_record_for_its_writer_and_its_readers(tmp_path):
    info = RunInfo(run_id="r1", regime="toy", variant="fit", profile="quick", slots=2, policy="heuristic",
                   model="m", budget={"iterations": 4})
    st = RunStatus.initial(info, "2026-01-01T00:00:00Z")
    st = st.updated({1: {"status": "running", "node": 2}}, phase="run_slots")
    (tmp_path / "status.json").write_text(json.dumps(st.to_json()))
    back = read_status(tmp_path)
    assert back == st and back.slots[1].status == "running" and back.slots[0].status == "pending"
    assert "system" not in st.to_json()["slots"][0]  # only where the run may change the system


def test_the_store_and_the_views_read_a_replaced_nodes_file_again(tmp_path):
    line = {"id": 1, "parent": None, "block": 1, "iter_in_block": 1, "iteration": 1, "slot": 0, "score": 0.5}
    (tmp_path / "nodes.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": 2}) + "\n")
    store = Store(tmp_path / "nodes.jsonl")
    assert [n.id for n in store.nodes()] == [1, 2] and [n["id"] for n in read_nodes(tmp_path)] == [1, 2]
    (tmp_path / "nodes.jsonl").write_text(json.dumps({**line, "id": 3}) + "\n")  # rewritten (e.g. repair)
    store.refresh()
    assert [n.id for n in store.nodes()] == [3] and store.best().id == 3
    assert [n["id"] for n in read_nodes(tmp_path)] == [3]


def test_run_start_up_is_resolved_once(tmp_path, monkeypatch):
    """plan_run is what `agent run` prints and what start_run records: --device cpu on a CUDA machine
    is the quick profile in both (start_run once chose full whenever CUDA existed)."""
    import calendar
    import time

    from agent.run import RunError, RunOptions, plan_run
    from tests.loop_helpers import TOY_PLUGINS

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    opts = RunOptions(regime="toy", regime_path=[TOY_PLUGINS], slots=2, device="cpu", runs_root=tmp_path)
    plan = plan_run(opts, cuda=True)
    assert (plan.device, plan.profile, plan.policy) == ("cpu", "quick", "heuristic")
    assert plan.profile_reason == "profile quick: --device cpu, so the CPU-sized profile; --profile full for paper scale"
    assert plan.iterations == plan.n_iter_block and plan.run_dir.parent == tmp_path
    stamp = plan.run_dir.name.removeprefix("toy-")
    assert abs(calendar.timegm(time.strptime(stamp, "%Y%m%d-%H%M%S")) - time.time()) < 120  # named in UTC
    with pytest.raises(RunError, match="unknown variant 'nope'"):
        plan_run(opts.model_copy(update={"variant": "nope"}), cuda=False)
    with pytest.raises(RunError, match="needs ANTHROPIC_API_KEY"):
        plan_run(opts.model_copy(update={"policy": "claude"}), cuda=False)


def test_the_heuristic_reads_its_step_context_and_the_toolbox_only():
    """No reach into the ToolEnv (store, regime, slot files) or the ToolBox's Step: the heuristic reads
    the typed records of its StepContext and what the step's tools wrote (ToolBox.slot_config / plan)."""
    tree = ast.parse((ROOT / "agent" / "policies" / "heuristic.py").read_text())
    reaches = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and (n.attr == "env" or (n.attr == "step" and isinstance(n.value, ast.Name) and n.value.id == "tools"))]
    assert reaches == []
