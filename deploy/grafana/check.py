"""Checks a Grafana dashboard JSON file against the Grafana Foundation SDK's dashboard model:
python deploy/grafana/check.py FILE...

Reports `FILE:LINE: PATH: problem` for a JSON syntax error, a field the model does not have, or
a value of the wrong type (the SDK's own `from_json` accepts anything, so the check walks the
model's type hints). Panels are checked as their panel type's options and field config, queries
as their data source's query model. Exits 1 if any file has a problem."""

import bisect
import enum
import inspect
import json
import re
import sys
import types
import typing
from functools import cache
from pathlib import Path

from grafana_foundation_sdk.cog import runtime, variants
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard

register_default_plugins()

SDK_MODELS = "grafana_foundation_sdk.models."


class Problem(Exception):
    def __init__(self, path, message):
        super().__init__(message)
        self.path = path


def value_lines(text):
    """The line on which each value of a well-formed JSON document starts, by path."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    space = re.compile(r"[ \t\r\n]*")
    decoder = json.JSONDecoder()
    lines = {}

    def skip(i):
        return space.match(text, i).end()

    def walk(i, path):
        i = skip(i)
        lines[path] = bisect.bisect_left(newlines, i) + 1
        if text[i] not in "{[":
            return decoder.raw_decode(text, i)[1]
        closing = "}" if text[i] == "{" else "]"
        i, index = skip(i + 1), 0
        while text[i] != closing:
            if closing == "}":
                key, i = json.decoder.scanstring(text, i + 1)
                i = walk(skip(i) + 1, path + (key,))  # past the colon
            else:
                i = walk(i, path + (index,))
                index += 1
            i = skip(i)
            if text[i] == ",":
                i = skip(i + 1)
        return i + 1

    walk(0, ())
    return lines


@cache
def json_fields(model):
    """JSON key -> attribute of an SDK model class, read from its generated to_json."""
    source = inspect.getsource(model.to_json)
    return dict(re.findall(r'"(\w+)"\]? ?[:=] self\.(\w+)', source))


def is_model(hint):
    return inspect.isclass(hint) and hint.__module__.startswith(SDK_MODELS) and hasattr(
        hint, "from_json"
    ) and not issubclass(hint, enum.Enum)


def hook_class(hook):
    return getattr(hook, "__self__", None)


def describe(value):
    return f"{type(value).__name__} {json.dumps(value)[:40]}"


def check_model(model, data, path, context):
    if not isinstance(data, dict):
        raise Problem(path, f"expected an object ({model.__name__}), got {describe(data)}")
    fields = json_fields(model)
    hints = typing.get_type_hints(model)
    for key, value in data.items():
        if key not in fields:
            raise Problem(path + (key,), f"not a field of {model.__name__}")
        hint = hints[fields[key]]
        if model is dashboard.Panel:
            # What a panel's options and custom field config are depends on its type; what a
            # query is, on its data source.
            config = runtime.panelcfg_config(data.get("type", ""))
            context = {**context, "panel": config,
                       "datasource": (data.get("datasource") or {}).get("type", "")}
            if key == "options" and config and config.options_from_json_hook:
                hint = hook_class(config.options_from_json_hook) or hint
        if model is dashboard.FieldConfig and key == "custom":
            config = context.get("panel")
            if config and config.field_config_from_json_hook:
                hint = hook_class(config.field_config_from_json_hook) or hint
        check(hint, value, path + (key,), context)


def check(hint, value, path, context):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        if {dashboard.Panel, dashboard.RowPanel} <= set(args) and isinstance(value, dict):
            model = dashboard.RowPanel if value.get("type") == "row" else dashboard.Panel
            return check_model(model, value, path, context)
        failures = []
        for alternative in args:
            try:
                return check(alternative, value, path, context)
            except Problem as problem:
                failures.append(problem)
        raise max(failures, key=lambda p: len(p.path))
    if origin is list:
        if not isinstance(value, list):
            raise Problem(path, f"expected a list, got {describe(value)}")
        for i, item in enumerate(value):
            check(args[0], item, path + (i,), context)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise Problem(path, f"expected an object, got {describe(value)}")
        for key, item in value.items():
            check(args[1], item, path + (key,), context)
        return
    if origin is typing.Literal:
        if value not in args:
            raise Problem(path, f"expected one of {list(args)}, got {describe(value)}")
        return
    if hint is variants.Dataquery and isinstance(value, dict):
        datasource = (value.get("datasource") or {}).get("type") or context.get("datasource")
        config = runtime.Runtime().dataquery_variants.get(datasource)
        if config is not None:
            return check_model(hook_class(config.from_json_hook), value, path, context)
        return
    if is_model(hint):
        return check_model(hint, value, path, context)
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        if value not in {member.value for member in hint}:
            raise Problem(path, f"expected one of {[m.value for m in hint]}, got {describe(value)}")
        return
    expected = {
        str: (str,), bool: (bool,), int: (int,), float: (int, float), type(None): (type(None),),
    }.get(hint)
    if expected is None:
        return  # object, Any: the model takes anything
    # bool is an int to isinstance, but not to JSON.
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise Problem(path, f"expected {hint.__name__}, got {describe(value)}")


def problems(path):
    """The problems of one dashboard file, as `FILE:LINE: message` strings."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return [f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})"]
    try:
        check_model(dashboard.Dashboard, data, (), {})
    except Problem as problem:
        lines = value_lines(text)
        where = next(lines[p] for p in (problem.path[:n] for n in range(len(problem.path), -1, -1))
                     if p in lines)
        shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.path)
        return [f"{path}:{where}: {shown.lstrip('.') or '(top)'}: {problem}"]
    return []


def main(files):
    found = [line for path in files for line in problems(path)]
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
