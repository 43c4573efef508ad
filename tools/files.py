"""File tools: view_plot, read_file (confined to the run directory)."""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.base import ToolRejected, register

MAX_CHARS = 20000
MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}


def confine(run_dir: Path, path: str, tool: str) -> Path:
    """The file `path` (relative to the run dir) if it stays inside it; else ToolRejected."""
    if not path or path.startswith(("/", "~")) or "\\" in path:
        raise ToolRejected(f"{tool}: path {path!r} must be relative to the run directory")
    if ".." in Path(path).parts:
        raise ToolRejected(f"{tool}: path {path!r} may not contain '..'")
    root = Path(run_dir).resolve()
    p = Path(run_dir) / path
    try:
        real = p.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise ToolRejected(f"{tool}: no file {path!r} in the run directory") from None
    if real != root and root not in real.parents:
        raise ToolRejected(f"{tool}: {path!r} leads outside the run directory")
    return real


class ReadFileInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Path relative to the run directory, e.g. '$log_path' or 'workspace/$code_path'.")


@register("read_file",
          f"Read a text file of the run directory (including workspace/). At most {MAX_CHARS} characters.",
          ReadFileInput)
def read_file(env, step, args: ReadFileInput) -> str:
    p = confine(env.run_dir, args.path, "read_file")
    if p.is_dir():
        return "\n".join(sorted(c.name + ("/" if c.is_dir() else "") for c in p.iterdir()))
    data = p.read_bytes()[: MAX_CHARS * 4]
    if b"\0" in data[:1024]:
        raise ToolRejected(f"read_file: {args.path} is a binary file (use view_plot for images)")
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f"\n… [truncated at {MAX_CHARS} characters]"


class ViewPlotInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int | None = Field(default=None, description="Slot of the batch under analysis (or give node).")
    node: int | None = Field(default=None, description="Node id of any finished training (or give slot).")
    name: str = Field(default="", description="Plot file name or glob under the training's plots/ directory, "
                                              "e.g. 'loss.png' or a glob like 'loss*'. Empty: list the plots.")

    @model_validator(mode="after")
    def _one(self):
        if (self.slot is None) == (self.node is None):
            raise ValueError("give exactly one of slot or node")
        return self


@register("view_plot",
          "Look at a plot written by a training (returned as an image). Give a slot of the current batch or a "
          "node id, and the plot name; with no name, the available plots are listed.",
          ViewPlotInput)
def view_plot(env, step, args: ViewPlotInput) -> str | list:
    if args.slot is not None:
        if (err := env.check_slot(args.slot)):
            raise ToolRejected(f"view_plot: {err}")
        res = step.batch.get(args.slot)
        if res is None:
            raise ToolRejected(f"view_plot: slot {args.slot} has no finished training in this batch")
        out_dir = res.out_dir
    else:
        node = env.node(args.node, step.batch)
        if node is None:
            raise ToolRejected(f"view_plot: node {args.node} does not exist")
        out_dir = node.out_dir
    if ".." in Path(args.name).parts or args.name.startswith("/"):
        raise ToolRejected(f"view_plot: plot name {args.name!r} may not leave the plots directory")
    plots_dir = Path(out_dir or "") / "plots"
    if not Path(out_dir or "").is_absolute():
        plots_dir = env.run_dir / plots_dir
    plots = sorted(p for p in plots_dir.glob("**/*") if p.suffix.lower() in MEDIA) if plots_dir.is_dir() else []
    if not args.name:
        if not plots:
            return "no plots"
        return "\n".join(str(p.relative_to(plots_dir)) for p in plots)
    # an exact name or glob under plots/, else any plot whose file name starts with it
    matches = sorted(p for p in plots_dir.glob(args.name) if p.suffix.lower() in MEDIA) if plots_dir.is_dir() else []
    if not matches:
        matches = sorted(p for p in plots if p.name.startswith(args.name))
    if not matches:
        raise ToolRejected(f"view_plot: no plot {args.name!r}; available: "
                           f"{', '.join(p.name for p in plots) or 'none'}")
    p = matches[-1]  # newest by file name (plots sort by iteration)
    real = confine(env.run_dir, str(p.resolve().relative_to(env.run_dir.resolve())), "view_plot")
    data = base64.standard_b64encode(real.read_bytes()).decode()
    rel = str(real.relative_to(env.run_dir.resolve()))
    return [{"type": "text", "text": f"{rel} (the policy sees the image)"},
            {"type": "image", "media_type": MEDIA[real.suffix.lower()], "path": rel, "data": data}]
