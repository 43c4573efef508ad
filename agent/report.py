"""`agent report RUN_DIR`: report/report.md plus PNGs, from the run's files.

Works for every policy (claude, heuristic, optuna, random): all of them write
nodes.jsonl, which is the only required input. The regime plugin (for the
mutable keys and metric names) and the workspace (for the best node's code
diff) are used when available and skipped with a note when not.

Plots (matplotlib, Agg, the object API so no global pyplot state is touched):
  scores.png        score per iteration, colour = slot, marker = strategy
  best_so_far.png   running best score
  ucb_tree.png      the search tree: depth x order, edges parent -> child, colour = score
  params.png        one panel per mutable parameter that varied: value vs score
"""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from agent import systems as sys_mod
from agent.fmt import best_node, best_so_far, fmt_score, fmt_value, policy_steps_line, varied_keys
from rundir.io import llm_cost
from rundir.readers import read_run_yaml, read_status, slot_out_dir
from rundir.records import Mutation
from rundir.store import read_nodes

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
CLASS_COLOURS = {"converged": "#2ca02c", "partial": "#ff7f0e", "failed": "#d62728"}


class ReportError(Exception):
    """The report cannot be written (e.g. no finished node yet)."""


# ----------------------------------------------------------------------------- data helpers

def _scored(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if isinstance(n.get("score"), (int, float)) and math.isfinite(n["score"])]


def _order(nodes: list[dict]) -> list[dict]:
    """Nodes in iteration order (id order; ids are assigned as trainings are launched)."""
    return sorted(nodes, key=lambda n: (n.get("id") is None, n.get("id") or 0))


def lineage(nodes: list[dict], node_id: int) -> list[dict]:
    """The chain root-child ... node_id (first element is the oldest ancestor in the store)."""
    by_id = {n.get("id"): n for n in nodes}
    chain, seen, cur = [], set(), by_id.get(node_id)
    while cur is not None and cur.get("id") not in seen:
        seen.add(cur.get("id"))
        chain.append(cur)
        cur = by_id.get(cur.get("parent"))
    return chain[::-1]


def tree_layout(nodes: list[dict]) -> dict[int, tuple[float, int]]:
    """(x, depth) of each node: leaves spread left to right in DFS order, a parent above its children's mean.

    Nodes whose parent is None (or not in the store, e.g. a parent of another
    block) hang from the virtual root at depth 0.
    """
    ids = {n["id"] for n in nodes if n.get("id") is not None}
    children: dict[Any, list[int]] = defaultdict(list)
    for n in _order(nodes):
        if n.get("id") is None:
            continue
        p = n.get("parent")
        children[p if p in ids else None].append(n["id"])
    pos: dict[int, tuple[float, int]] = {}
    next_x = [0.0]

    # Iterative post-order walk: deep trees must not hit the recursion limit.
    stack: list[tuple[Any, int, bool]] = [(None, 0, False)]
    while stack:
        nid, depth, expanded = stack.pop()
        kids = children.get(nid, [])
        if not expanded and kids:
            stack.append((nid, depth, True))
            for k in reversed(kids):
                stack.append((k, depth + 1, False))
            continue
        if nid is None:
            continue
        if kids:
            x = sum(pos[k][0] for k in kids) / len(kids)
        else:
            x = next_x[0]
            next_x[0] += 1.0
        pos[nid] = (x, depth)
    return pos


def _load_regime(run_cfg: dict) -> tuple[Any, str | None]:
    """(regime or None, note when it could not be loaded)."""
    name = run_cfg.get("regime")
    if not name:
        return None, "run.yaml names no regime"
    try:
        from regimes.registry import get_regime

        return get_regime(name, [Path(p) for p in run_cfg.get("regime_path") or []] or None), None
    except Exception as e:  # the report must still be written from nodes.jsonl alone
        return None, f"regime {name!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def param_keys(nodes: list[dict], regime: Any) -> list[str]:
    """Mutable keys that took more than one value (the regime's list; else the varied training keys)."""
    varied = set(varied_keys(nodes, sections=("training", "graph_model", "simulation")))
    if regime is not None:
        return [p.key for p in regime.mutable if p.key in varied]
    return [k for k in sorted(varied) if k.startswith("training.") and not k.endswith(".seed")]


# ----------------------------------------------------------------------------- plots

def _figure(w: float = 8.0, h: float = 4.5):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _block_lines(ax, nodes: list[dict]) -> None:
    """Dashed vertical lines where a new block starts."""
    prev = None
    for n in _order(nodes):
        b = n.get("block")
        if prev is not None and b != prev:
            ax.axvline(n["id"] - 0.5, color="grey", ls="--", lw=0.8)
            ax.text(n["id"] - 0.4, 1.0, f"block {b}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="grey")
        prev = b


def plot_scores(nodes: list[dict], path: Path) -> Path:
    """Score per iteration: colour = slot, marker = strategy."""
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    strategies = sorted({n.get("strategy") or "—" for n in nodes})
    marker = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(strategies)}
    slots = sorted({int(n.get("slot") or 0) for n in nodes})
    for n in _scored(nodes):
        ax.scatter(n["id"], n["score"], color=cmap(int(n.get("slot") or 0) % 10),
                   marker=marker[n.get("strategy") or "—"], s=42, edgecolors="black", linewidths=0.4, zorder=3)
    _block_lines(ax, nodes)
    ax.set_xlabel("iteration (node id)")
    ax.set_ylabel("score (UCB reward)")
    ax.set_title("score per iteration")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=cmap(s % 10), label=f"slot {s}") for s in slots]
    handles += [Line2D([], [], ls="", marker=marker[s], color="grey", label=s) for s in strategies]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.savefig(path)
    return path


def plot_best_so_far(nodes: list[dict], path: Path) -> Path:
    """Running best score over iterations, with every score faint behind it."""
    fig = _figure(8, 3.5)
    ax = fig.add_subplot()
    ordered = _scored(_order(nodes))
    xs = [n["id"] for n in ordered]
    ax.scatter(xs, [n["score"] for n in ordered], s=12, color="lightgrey", zorder=2, label="score")
    ax.step(xs, best_so_far(ordered), where="post", color="#1f77b4", lw=2, zorder=3, label="best so far")
    _block_lines(ax, nodes)
    ax.set_xlabel("iteration (node id)")
    ax.set_ylabel("score")
    ax.set_title("best score so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path)
    return path


def plot_ucb_tree(nodes: list[dict], path: Path) -> Path:
    """The search tree: x = order, y = depth (root on top), colour = score."""
    pos = tree_layout(nodes)
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    by_id = {n["id"]: n for n in nodes if n.get("id") is not None}
    root_x = (min(x for x, _ in pos.values()) + max(x for x, _ in pos.values())) / 2 if pos else 0.0
    for nid, (x, d) in pos.items():
        p = by_id[nid].get("parent")
        px, pd = pos.get(p, (root_x, 0))
        ax.plot([px, x], [-pd, -d], color="grey", lw=0.8, zorder=1)
    ax.scatter([root_x], [0], marker="s", color="black", s=40, zorder=3)
    ax.annotate("root", (root_x, 0), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ids = list(pos)
    scores = [by_id[i].get("score") if isinstance(by_id[i].get("score"), (int, float)) else float("nan") for i in ids]
    finite = [s for s in scores if math.isfinite(s)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    sc = ax.scatter([pos[i][0] for i in ids], [-pos[i][1] for i in ids], c=scores, cmap="viridis",
                    vmin=vmin, vmax=vmax, s=70, edgecolors="black", linewidths=0.5, zorder=3,
                    plotnonfinite=True)
    if len(ids) <= 80:
        for i, sc_i in zip(ids, scores):
            # dark label on the bright end of viridis, light label on the dark end
            bright = math.isfinite(sc_i) and (sc_i - vmin) / (vmax - vmin) > 0.6
            ax.text(pos[i][0], -pos[i][1], str(i), fontsize=6, ha="center", va="center",
                    color="black" if bright else "white", fontweight="bold", zorder=4)
    fig.colorbar(sc, ax=ax, label="score")
    depth = max((d for _, d in pos.values()), default=1)
    blocks: dict[Any, list[float]] = defaultdict(list)
    for i in ids:
        blocks[by_id[i].get("block")].append(pos[i][0])
    if len(blocks) > 1:  # each block restarts from the root: label its subtrees
        for b, xs in blocks.items():
            ax.text((min(xs) + max(xs)) / 2, -depth - 0.35, f"block {b}", ha="center", va="top", fontsize=8,
                    color="dimgrey")
        ax.set_ylim(-depth - 0.6, 0.3)
    ax.set_yticks([-d for d in range(depth + 1)], [str(d) for d in range(depth + 1)])
    ax.set_ylabel("depth")
    ax.set_xticks([])
    ax.set_title("UCB tree (edges parent → child)")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.savefig(path)
    return path


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_params(nodes: list[dict], keys: list[str], regime: Any, path: Path) -> Path:
    """One panel per parameter: its value against the score, colour = classification."""
    from regimes.base import get_dotted

    n = len(keys)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.2 * cols + 0.5, 2.8 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    scored = _scored(nodes)
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        vals = [get_dotted(x.get("config") or {}, key) for x in scored]
        ys = [x["score"] for x in scored]
        colours = [CLASS_COLOURS.get(x.get("classification"), "grey") for x in scored]
        spec = regime.param(key) if regime is not None else None
        if _numeric([v for v in vals if v is not None]) and (spec is None or spec.type in ("float", "int")):
            pts = [(v, y, c) for v, y, c in zip(vals, ys, colours) if v is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], s=22,
                       edgecolors="black", linewidths=0.3)
            xs = [p[0] for p in pts]
            pos_vals = [x for x in xs if x > 0]
            # auto log scale only for floats spanning a decade (ints such as time steps stay linear)
            wide = (bool(pos_vals) and any(isinstance(x, float) for x in xs) and min(xs) >= 0
                    and max(pos_vals) / min(pos_vals) >= 10)
            if (spec is not None and spec.log) or (spec is None and wide):
                if min(xs) > 0:
                    ax.set_xscale("log")
                else:  # zeros (e.g. a regulariser switched off) stay visible on a symlog axis
                    ax.set_xscale("symlog", linthresh=min(pos_vals) if pos_vals else 1e-6)
        else:
            cats = sorted({str(v) for v in vals})
            idx = {c: j for j, c in enumerate(cats)}
            ax.scatter([idx[str(v)] for v in vals], ys, c=colours, s=22, edgecolors="black", linewidths=0.3)
            ax.set_xticks(range(len(cats)), cats, fontsize=7)
        ax.set_title(key.split(".", 1)[-1], fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("score", fontsize=8)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("parameter versus score (green converged, orange partial, red failed)", fontsize=9)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- markdown

def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_names(nodes: list[dict], regime: Any, limit: int = 5) -> list[str]:
    if regime is not None:
        names = list(regime.log_metrics) or [regime.primary_metric]
        if regime.primary_metric not in names:
            names.insert(0, regime.primary_metric)
        return names[:limit]
    seen: list[str] = []
    for x in nodes:
        for k in (x.get("metrics") or {}):
            if k not in seen:
                seen.append(k)
    return seen[:limit]


def _code_diff(run_dir: Path, node: dict) -> str:
    """Markdown for the best node's code against the workspace root."""
    ws_root = run_dir / "workspace"
    if not ws_root.is_dir():
        return "No workspace in this run directory: code lineage was not recorded, so no diff is shown."
    try:
        from sandbox.workspace import Workspace

        ws = Workspace.open(ws_root)
        commit = node.get("commit") or ws.node_commit(int(node["id"]))
        if not commit:
            return "The node records no commit; it ran on the root code."
        diff = ws.diff(ws.root_commit, commit)
    except Exception as e:  # a broken or foreign workspace must not stop the report
        return f"The code diff could not be computed ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})."
    if not diff.strip():
        return f"No code change against root (commit `{str(commit)[:10]}`)."
    return f"Commit `{str(commit)[:10]}` against root:\n\n```diff\n{diff.rstrip()}\n```"


def _robustness_summary(nodes: list[dict], best: dict, key: str) -> str:
    """The report's robustness line: the best node's recipe over the systems it ran on, and the most robust recipe."""
    systems = sys_mod.systems(_scored(nodes), key)
    if len(systems) <= 1:
        return (f"- Robustness: every node ran on one system ({key}={sys_mod.fmt_system(systems[0] if systems else None)}); "
                "robustness across systems is not measured.")
    own = sys_mod.robustness_of(_scored(nodes), best, key)
    multi = [r for r in sys_mod.robustness(_scored(nodes), key) if r.n_systems >= 2]
    parts = [f"best node's {sys_mod.robustness_line(own)}" if own else "best node's recipe: —"]
    if multi and (own is None or multi[0].recipe != own.recipe):
        parts.append(f"most robust: {sys_mod.robustness_line(multi[0])}")
    elif not multi:
        parts.append("no recipe ran on 2+ systems yet")
    return f"- Robustness over {len(systems)} systems ({key}): " + "; ".join(parts) + "."


def _systems_section(nodes: list[dict], regime: Any, key: str) -> list[str]:
    ident = list(getattr(regime, "identifiability_metrics", []) or [])
    rows = []
    for r in sys_mod.by_system(nodes, key, ident):
        rows.append([sys_mod.fmt_system(r.system), r.nodes, "—" if r.best_id is None else r.best_id,
                     fmt_score(r.best_score), sys_mod.identifiability_text(r.identifiability) or "—"])
    md = ["## Systems and robustness", "",
          f"Each `{key}` simulates another system; a score compares configs only within one system.", "",
          _md_table(["system", "nodes", "best node", "best score", "data (identifiability)"], rows), ""]
    rob = [r for r in sys_mod.robustness(_scored(nodes), key) if r.n_systems >= 2][:10]
    if rob:
        md += ["Recipes run on 2+ systems (a recipe: the config without the system key, and the code commit):", "",
               _md_table(["recipe of node", "nodes", "systems", "mean", "worst", "worst system", "per system"],
                         [[r.first_id, ", ".join(map(str, r.node_ids[:8])), r.n_systems, fmt_score(r.mean),
                           fmt_score(r.worst), sys_mod.fmt_system(r.worst_system),
                           ", ".join(f"{sys_mod.fmt_system(s)}: {v:.4f}" for s, v in r.per_system.items())]
                          for r in rob]), ""]
    else:
        md += ["No recipe ran on 2+ systems yet: robustness is not measured.", ""]
    return md


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write `out_dir` (default RUN_DIR/report)/report.md and its PNGs; return the Markdown path."""
    run_dir = Path(run_dir)
    nodes = _order(read_nodes(run_dir))
    if not nodes:
        raise ReportError(f"{run_dir}/nodes.jsonl has no finished node yet")
    if not _scored(nodes):
        raise ReportError(f"{run_dir}/nodes.jsonl has no node with a score")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = read_run_yaml(run_dir)
    st = read_status(run_dir)
    regime, regime_note = _load_regime(run_cfg)
    regime_name = run_cfg.get("regime") or (st.regime if st else "?")
    variant = run_cfg.get("variant") or (st.variant if st else None) or "default"
    best = best_node(nodes)
    assert best is not None  # _scored(nodes) is non-empty
    cost, calls = llm_cost(run_dir)

    plot_scores(nodes, out / "scores.png")
    plot_best_so_far(nodes, out / "best_so_far.png")
    plot_ucb_tree(nodes, out / "ucb_tree.png")
    keys = param_keys(nodes, regime)
    if keys:
        plot_params(nodes, keys, regime, out / "params.png")
    elif (out / "params.png").exists():
        (out / "params.png").unlink()  # stale from an earlier report of this run

    blocks = sorted({x.get("block") for x in nodes if x.get("block") is not None})
    classes = defaultdict(int)
    for x in nodes:
        classes[x.get("classification") or "?"] += 1
    md: list[str] = [f"# Run report: {regime_name} [{variant}]", ""]
    md.append(_md_table(["run", "policy", "model", "profile", "slots", "executor", "nodes", "blocks", "LLM cost"], [[
        f"`{run_dir.name}`", run_cfg.get("policy") or (st.policy if st else "?"),
        run_cfg.get("model") or (st.model if st else "") if (run_cfg.get("policy") or "") == "claude" else "—",
        run_cfg.get("profile") or (st.profile if st else "?"), run_cfg.get("slots", "?"),
        run_cfg.get("executor", "?"), len(nodes), len(blocks), f"${max(cost, st.cost_usd if st else 0):.2f} ({calls} calls)"]]))
    md += ["", f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
           + (f"; run phase `{st.phase}`, {st.iterations_done}/{st.iterations_total or '?'} iterations." if st else "."), ""]
    if regime_note:
        md += [f"> Note: {regime_note}; parameters below are the training keys that varied.", ""]
    skey = sys_mod.system_key(regime)
    mixed = sys_mod.mixes(nodes, skey)
    on_system = f" on system {sys_mod.fmt_system(sys_mod.system_of(best, skey))}" if mixed else ""
    md += ["## Summary", "",
           f"- Best: node {best['id']} (block {best.get('block')}, slot {best.get('slot')}, "
           f"{best.get('strategy') or '—'}) score **{fmt_score(best['score'])}**{on_system}, "
           f"{best.get('classification') or '—'}.",
           _robustness_summary(nodes, best, skey),
           "- Classification: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())) + ".",
           f"- Failed trainings: {sum(1 for x in nodes if x.get('status') not in (None, 'ok'))}."]
    steps = policy_steps_line(st) if st else None
    if steps:
        last = st.policy_steps.last_fallback if st.policy_steps else None
        md.append(f"- Policy: {steps}." + (f" Last fallback: step {last.step}, {last.reason}."
                                           if last else ""))
    elif (run_cfg.get("policy") or "") == "claude":
        md.append("- Policy: no step was answered by claude yet.")
    md.append("")

    md += ["## Score per iteration", "", "Colour = slot, marker = strategy; dashed lines start a new block.", "",
           "![score per iteration](scores.png)", "", "## Best so far", "", "![best so far](best_so_far.png)", "",
           "## UCB tree", "", "Depth from the root down, children under their parent, colour = score.", "",
           "![UCB tree](ucb_tree.png)", "", "## Parameters versus score", ""]
    md += (["![parameters versus score](params.png)", ""] if keys
           else ["No mutable parameter took more than one value in this run.", ""])

    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for x in nodes:
        by_strategy[x.get("strategy") or "—"].append(x)
    rows = []
    for s, xs in sorted(by_strategy.items(), key=lambda kv: -len(kv[1])):
        sc = [x["score"] for x in _scored(xs)]
        rows.append([s, len(xs), fmt_score(sum(sc) / len(sc)) if sc else "—", fmt_score(max(sc)) if sc else "—",
                     sum(1 for x in xs if x.get("classification") == "converged")])
    md += ["## Strategies", "", _md_table(["strategy", "nodes", "mean score", "best score", "converged"], rows), ""]

    if mixed:
        md += _systems_section(nodes, regime, skey)
    metric_names = _metric_names(nodes, regime)
    top = sorted(_scored(nodes), key=lambda x: (-x["score"], x["id"]))[:10]
    md += ["## Top nodes", ""] + (["Nodes of different systems: compare scores within one system (column system).", ""]
                                  if mixed else [])
    md += [_md_table(
        ["node", "parent", "block", "slot"] + (["system"] if mixed else []) + ["strategy", "mutation", "score", "class"]
        + metric_names,
        [[x["id"], "root" if x.get("parent") is None else x["parent"], x.get("block", ""), x.get("slot", "")]
         + ([sys_mod.fmt_system(sys_mod.system_of(x, skey))] if mixed else [])
         + [x.get("strategy") or "—", Mutation.of(x.get("mutation")).line() or "—", fmt_score(x["score"]), x.get("classification") or "—"]
         + [fmt_value((x.get("metrics") or {}).get(m)) if m in (x.get("metrics") or {}) else "—" for m in metric_names]
         for x in top]), ""]

    md += [f"## Best node: {best['id']}", ""]
    chain = lineage(nodes, best["id"])
    md.append("Lineage: root → " + " → ".join(f"{x['id']} ({Mutation.of(x.get('mutation')).line() or '—'})" for x in chain))
    md.append("")
    for label, field in (("Observation", "observation"), ("Visual", "visual"), ("Next", "next")):
        if best.get(field):
            md.append(f"- {label}: {best[field]}")
    deg = best.get("degeneracy") or {}
    if isinstance(deg, dict) and deg.get("diagnosis") not in (None, "n/a"):
        md.append(f"- Degeneracy: {deg.get('diagnosis')} (gap {fmt_value(deg.get('gap'))})")
    md += ["", "### Metrics", "", _md_table(["metric", "value"],
                                             [[k, fmt_value(v)] for k, v in (best.get("metrics") or {}).items()]), ""]
    md += ["### Config", "", "```yaml", yaml.safe_dump(best.get("config") or {}, sort_keys=False).rstrip(), "```", ""]
    md += ["### Code", ""]
    changes = [(x["id"], c) for x in chain for c in (x.get("code_changes") or []) if isinstance(c, dict)]
    if changes:
        md += ["Code edits along the lineage:", ""]
        md += [f"- node {nid}: `{c.get('file', '?')}` {c.get('function') or ''} — {c.get('change') or ''}"
               + (f" (hypothesis: {c['hypothesis']})" if c.get("hypothesis") else "") for nid, c in changes]
        md.append("")
    md += [_code_diff(run_dir, best), ""]
    md += ["### Plots", ""]
    src = slot_out_dir(run_dir, best.get("out_dir"))
    plots = sorted((src / "plots").glob("*.png")) if src is not None and (src / "plots").is_dir() else []
    if plots and regime is not None and regime.plots:
        # the regime's plot list says which matter most: those first, in its order
        ranked: list[Path] = []
        for pattern in regime.plots:
            ranked += [p for p in sorted(src.glob(pattern)) if p in plots and p not in ranked]
        plots = ranked + [p for p in plots if p not in ranked]
    if plots:
        dest = out / "best_plots"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir()
        for p in plots:
            shutil.copy2(p, dest / p.name)
            md += [f"![{p.stem}](best_plots/{p.name})", ""]
    else:
        md += [f"No plots found in `{best.get('out_dir')}/plots`.", ""]
    md += ["## Files", "", f"- memory: `{run_dir / 'memory.md'}`", f"- full log: `{run_dir / 'analysis.md'}`",
           f"- store: `{run_dir / 'nodes.jsonl'}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
