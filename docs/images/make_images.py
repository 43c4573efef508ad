"""Regenerate the README pictures: the live view (PNG + SVG) and one report plot (PNG).

    .venv/bin/python docs/images/make_images.py [--live-from RUN_DIR] [--report-from RUN_DIR]

By default the live view is rendered from the recorded two-batch run of the
tests (tests/fixtures/make_recorded_run.py) at a fixed time, so the picture is
stable; `--live-from` renders a real run directory as it is now (e.g. while a
batch trains). The report plot (score per iteration) comes from
`--report-from` (a real run) or else from the recorded run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from rich.console import Console  # noqa: E402

from agent.live import render  # noqa: E402
from agent.report import write_report  # noqa: E402
from fixtures.make_recorded_run import make_recorded_run  # noqa: E402


def console_png(renderable, path: Path, width: int = 120, font_size: int = 14) -> None:
    """Draw a rich renderable as a terminal screenshot (PIL + DejaVu Sans Mono from matplotlib)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont
    from rich.terminal_theme import MONOKAI

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    regular = ImageFont.truetype(str(fonts / "DejaVuSansMono.ttf"), font_size)
    bold = ImageFont.truetype(str(fonts / "DejaVuSansMono-Bold.ttf"), font_size)
    console = Console(width=width, force_terminal=True, color_system="truecolor", file=open("/dev/null", "w"))
    lines = console.render_lines(renderable, console.options.update(width=width), pad=True)
    cw, lh, pad = regular.getlength("M"), int(font_size * 1.3), 12
    bg = MONOKAI.background_color
    img = Image.new("RGB", (int(cw * width + 2 * pad), lh * len(lines) + 2 * pad), tuple(bg))
    draw = ImageDraw.Draw(img)
    for row, segments in enumerate(lines):
        col = 0
        for seg in segments:
            if not seg.text:
                continue
            style = seg.style
            fg = tuple(style.color.get_truecolor(MONOKAI)) if style and style.color else tuple(MONOKAI.foreground_color)
            if style and style.dim:
                fg = tuple(int(0.6 * c + 0.4 * b) for c, b in zip(fg, bg))
            x, y = pad + col * cw, pad + row * lh
            if style and style.bgcolor:
                draw.rectangle([x, y, x + cw * len(seg.text), y + lh], fill=tuple(style.bgcolor.get_truecolor(MONOKAI, False)))
            draw.text((x, y), seg.text, font=bold if style and style.bold else regular, fill=fg)
            col += len(seg.text)
    img.save(path, optimize=True)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live-from", type=Path, help="render the live view of this run directory (now)")
    ap.add_argument("--report-from", type=Path, help="take the report plot from this run directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rec = make_recorded_run(Path(tmp) / "homeostasis-20261122-010000")
        console = Console(width=120, record=True, force_terminal=True, color_system="truecolor",
                          file=open("/dev/null", "w"))
        if args.live_from:
            view = render(args.live_from, 120)
        else:
            view = render(rec, 120, now=datetime(2026, 11, 22, 1, 6, 40, tzinfo=timezone.utc))
        console.print(view)
        console.save_svg(str(HERE / "live_view.svg"), title="agent run")
        console_png(view, HERE / "live_view.png")
        report = write_report(args.report_from or rec, out_dir=Path(tmp) / "report")
        for name in ("scores.png",):
            shutil.copy(report.parent / name, HERE / f"report_{name}")
    for p in sorted(HERE.glob("*.svg")) + sorted(HERE.glob("*.png")):
        print(p.relative_to(ROOT), p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
