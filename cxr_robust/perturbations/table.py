"""The parameter table of the registered perturbations, as docs/perturbations.md shows it (a test keeps the
two equal, so the documentation cannot drift from the code)."""

from __future__ import annotations

from cxr_robust.perturbations.registry import available, get_perturbation

START, END = "<!-- parameter-table:start -->", "<!-- parameter-table:end -->"


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parameter_table() -> str:
    """A Markdown table: perturbation, test-id token, group, parameter, its value at levels 1-5, source."""
    lines = ["| perturbation | id | group | parameter | 1 | 2 | 3 | 4 | 5 | source |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in available():
        p = get_perturbation(name)
        if name == "occlusion":
            values = ["0.25-81 % (the paper's 7 ratios)", "", "", "", ""]
        else:
            values = [_value(p.levels[level]) if level in p.levels else "" for level in (1, 2, 3, 4, 5)]
        token = p.id_token(p.default_severities[-1])
        lines.append(f"| `{name}` | `{token}` | {p.group} | {p.parameter_name} | {' | '.join(values)} | "
                     f"{p.source} |")
    return "\n".join(lines)


def replace_table(markdown: str) -> str:
    """``markdown`` with the text between the table markers replaced by the current :func:`parameter_table`."""
    head, _, rest = markdown.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{parameter_table()}\n{END}{tail}"
