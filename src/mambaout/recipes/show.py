"""What `mambaout recipes` prints: a table of every model's recipe, one recipe whole with its sources, as YAML that
`train --config` reads back, or as JSON."""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..registry import list_models, recipe_for
from . import TABLE_COLUMNS, Recipe, get_recipe, list_recipes

_HEADERS = {"epochs": "epochs", "global_batch_size": "batch", "lr": "lr", "weight_decay": "wd",
            "drop_path": "drop path", "model_ema_decay": "EMA", "clip_grad": "clip", "aug_repeats": "rep. aug",
            "amp": "AMP"}


def table_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered model matching `pattern`: its default recipe's headline values and source."""
    rows = []
    for name in list_models(pattern):
        chosen, fallback = recipe_for(name)
        row = {"model": name, "recipe": chosen.name, "own": fallback is None}
        row.update({key: chosen.values[key] for key in TABLE_COLUMNS})
        row["source"] = source_line(chosen)
        rows.append(row)
    return rows


def source_line(item: Recipe) -> str:
    """The repository a recipe is read from and what it calls the configuration."""
    repo = item.source_of("lr").split(":")[0]
    return f"{repo} {item.title}".strip()


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        value = row[key]
        if key == "recipe":
            return value if row["own"] else f"{value}*"
        if value is None:
            return "-"
        if key == "aug_repeats":
            return str(value) if value else "-"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    keys = ["model", "recipe", *TABLE_COLUMNS, "source"]
    headers = {"model": "model", "recipe": "recipe", **_HEADERS, "source": "source"}
    cells = [[cell(row, key) for key in keys] for row in rows]
    widths = [max(len(headers[key]), *(len(line[i]) for line in cells)) for i, key in enumerate(keys)]
    lines = ["  ".join(headers[key].ljust(widths[i]) for i, key in enumerate(keys)).rstrip()]
    lines += ["  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in cells]
    if any(not row["own"] for row in rows):
        lines.append("* not the model's own: it has no official recipe (`mambaout recipes MODEL` says why)")
    return "\n".join(lines)


def resolve(name: str) -> tuple[Recipe, str]:
    """A recipe by model name (its default recipe, and a note when that is not its own) or by recipe name."""
    if name in list_recipes() and name not in list_models():
        return get_recipe(name), ""
    chosen, fallback = recipe_for(name)  # an unknown name: the unknown-model error, with the closest names
    return chosen, f"{name} trains with {chosen.name}'s recipe: {fallback.why}" if fallback else ""


def as_json(item: Recipe) -> str:
    """One JSON object: `train` option names, `global_batch_size`, `recipe`, `sources` (and `differences`)."""
    return json.dumps({**item.to_options(), "sources": dict(item.sources), "differences": list(item.differences)},
                      indent=2)


def as_yaml(item: Recipe, note: str = "") -> str:
    """The recipe as a `--config` file: one option a line, its source as the line's comment."""
    lines = [f"# recipe {item.name}: {item.title}" if item.title else f"# recipe {item.name}"]
    if note:
        lines.append(f"# {note}")
    lines.append("# values at the official global batch; train scales lr (and, where the recipe says so, warmup_lr "
                 "and min_lr) to yours")
    for difference in item.differences:
        lines.append(f"# differs from the official code: {difference}")
    lines.append(f"recipe: {item.name}")
    for key, value in item.to_options().items():
        if key == "recipe":
            continue
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{text}  # {item.source_of(key)}")
    return "\n".join(lines) + "\n"


def as_text(item: Recipe, note: str = "") -> str:
    """Every value with its source, aligned, for reading."""
    lines = [f"recipe {item.name}" + (f" ({item.title})" if item.title else "")]
    if note:
        lines.append(note)
    options = item.to_options()
    width = max(len(key) for key in options)
    for key, value in options.items():
        if key != "recipe":
            lines.append(f"  {key:<{width}}  {json.dumps(value):<24}  {item.source_of(key)}")
    for difference in item.differences:
        lines.append(f"differs from the official code: {difference}")
    return "\n".join(lines)
