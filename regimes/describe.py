"""Readable forms of a regime for the command line.

`describe_regime` is what `agent regimes show NAME` prints (Markdown, so it
reads well as plain text and renders with rich); `default_config_yaml` is
what `agent regimes config NAME` prints; `regime_summary_line` is one row of
`agent regimes`.
"""

from __future__ import annotations

import inspect

from regimes.base import Profile, Regime


def _resolve(regime: Regime | str, regime_path=None) -> Regime:
    if isinstance(regime, Regime):
        return regime
    from regimes.registry import get_regime

    return get_regime(regime, regime_path)


def _range(p) -> str:
    if p.type == "bool":
        return "true / false"
    if p.type == "choice":
        return "one of " + ", ".join(str(c) for c in p.choices)
    scale = "log" if p.log else "linear"
    return f"[{p.low:g}, {p.high:g}] {scale}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _doc(method) -> str:
    doc = inspect.getdoc(method) or ""
    return " ".join(doc.split())


def regime_summary_line(regime: Regime) -> str:
    """`name  title  (variants: a, b; default a)` for `agent regimes`."""
    variants = "" if regime.variants == ["default"] else f"  (variants: {', '.join(regime.variants)}; default {regime.default_variant})"
    return f"{regime.name:<24} {regime.title}{variants}"


def describe_regime(regime: Regime | str, regime_path=None) -> str:
    """The regime's whole contract as Markdown text (for `agent regimes show NAME`)."""
    r = _resolve(regime, regime_path)
    cls = type(r)
    lines = [f"# {r.name}: {r.title}", "", r.description, ""]
    variants = ("none" if r.variants == ["default"]
                else f"{', '.join(r.variants)} (default {r.default_variant})")
    lines += [f"- variants: {variants}",
              f"- science package: {r.package} ({r.package_dir})",
              f"- training entry: python -m {r.train_entry} --config X --out DIR --device D",
              f"- instructions: {r.instructions}", ""]
    lines += ["## Mutable keys (the exploration space)", "", "| key | type | range | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| {p.key} | {p.type} | {_range(p)} | {_cell(p.description)} |" for p in r.mutable]
    lines += ["", "## Frozen", ""]
    wild = [f for f in r.frozen if f.endswith(".*")]
    named = [f for f in r.frozen if not f.endswith(".*")]
    if wild:
        lines.append(f"- whole sections, except the mutable keys above: {', '.join(wild)}")
    if named:
        lines.append(f"- named: {', '.join(named)}")
    if r.slot_fixed:
        lines += ["", "## Slot-fixed (pinned per slot, repeating)", ""]
        lines += [f"- {k}: slot s gets {v}[s % {len(v)}]" for k, v in r.slot_fixed.items()]
    lines += ["", f"## claude: section", "", f"- allowed keys: {', '.join(r.claude_keys)}; the policy may change "
              "ucb_c (0.5-3.0); n_epochs and data_augmentation_loop cap the training keys of the same name"]
    lines += ["", "## Metrics", "", f"Primary: **{r.primary_metric}**", "",
              "| metric | good | meaning |", "| --- | --- | --- |"]
    lines += [f"| {m.name}{' (primary)' if m.name == r.primary_metric else ''} | {_cell(m.good)} | {_cell(m.description)} |"
              for m in r.metrics]
    lines += ["", f"- score (UCB reward): {_doc(cls.score)}",
              f"- classification: {_doc(cls.classify)}",
              f"- degeneracy: {_doc(cls.degeneracy)}"]
    if r.log_config:
        lines.append("- analysis.md Config line: " + ", ".join(f"{s}={k}" for s, k in r.log_config.items()))
    if r.log_metrics:
        lines.append("- analysis.md Metrics line: " + ", ".join(r.metric_labels.get(m, m) for m in r.log_metrics))
    lines += ["", "## Code edits", ""]
    if not r.editable or r.code_edit_when == "never":
        lines.append("- none allowed")
    else:
        when = {"block_end": "only at a block end",
                "after_warmup": f"not in the first {r.code_warmup_iters} iterations of a block"}[r.code_edit_when]
        lines.append(f"- when: {when}")
        for e in r.editable:
            where = (f"functions {', '.join(e.functions)}" if e.functions else "") + \
                    (f"marker regions {', '.join(e.regions)}" if e.regions else "")
            lines.append(f"- {e.path}: {where or 'whole file'}")
        lines.append(f"- imports allowed: {', '.join(r.import_allowlist)}")
        lines.append(f"- ground-truth names rejected: {', '.join(r.truth_identifiers)}")
    if r.code_strategies:
        lines += ["", "## Code strategies (heuristic policy)", ""]
        lines += [f"- {s.name} ({s.file}): {s.hypothesis}" for s in r.code_strategies]
    lines += ["", "## Search strategies", "", ", ".join(r.strategies)]
    if r.plots:
        lines += ["", "## Plots shown to the analysis step (most important first)", "", ", ".join(r.plots)]
    prep = cls.prepare is not Regime.prepare
    lines += ["", "## One-time preparation", "", _doc(cls.prepare) if prep else "none"]
    return "\n".join(lines) + "\n"


def default_config_yaml(regime: Regime | str, variant: str | None = None, profile: Profile = "quick",
                        regime_path=None) -> str:
    """The default config as YAML text, with a header naming regime, variant and profile."""
    import yaml

    r = _resolve(regime, regime_path)
    v = r.resolve_variant(variant)
    cfg = r.default_config(v, profile)
    header = f"# regime {r.name}, variant {v}, profile {profile}\n"
    return header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)

