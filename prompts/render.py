"""A tiny prompt-template renderer (no Jinja).

Templates are Markdown files with `$name` / `${name}` placeholders
(`string.Template`); `$$` is a literal dollar. Braces need no escaping, so
JSON and YAML examples can appear verbatim. A placeholder without a value is
an error naming the template and the placeholder, never a silent blank.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Mapping

PROMPTS_DIR = Path(__file__).resolve().parent


class PromptError(ValueError):
    """A template is missing, or names a placeholder that has no value."""


def render(template: str, values: Mapping[str, Any], name: str = "<template>") -> str:
    """Substitute `values` into `template`; raise PromptError on an unknown placeholder."""
    try:
        return string.Template(template).substitute({k: "" if v is None else str(v) for k, v in values.items()})
    except KeyError as e:
        raise PromptError(f"prompt template {name}: placeholder ${e.args[0]} has no value "
                          f"(known: {', '.join(sorted(values))})") from None
    except ValueError as e:  # e.g. a lone '$' followed by a non-identifier
        raise PromptError(f"prompt template {name}: {e} (write $$ for a literal dollar)") from None


def placeholders(template: str) -> set[str]:
    """The placeholder names a template uses."""
    out = set()
    for m in string.Template.pattern.finditer(template):
        n = m.group("named") or m.group("braced")
        if n:
            out.add(n)
    return out


def load(name: str, prompts_dir: Path | None = None) -> str:
    """The text of `prompts_dir/name` (e.g. "system.md", "steps/analyse.md")."""
    path = (prompts_dir or PROMPTS_DIR) / name
    if not path.is_file():
        raise PromptError(f"prompt template {name} not found in {prompts_dir or PROMPTS_DIR}")
    return path.read_text()


def render_file(name: str, values: Mapping[str, Any], prompts_dir: Path | None = None) -> str:
    """Load and render one template file."""
    return render(load(name, prompts_dir), values, name)
