"""Help and option checks of the ``fanet`` commands, generic over their signatures and bundle configs.

Everything is derived from a command method's signature and its :func:`~fanet_monai.cli.configs.bundle_command`
configs, so a command added as a method gets ``--help`` and the checks too:

- :func:`check_command_line` refuses an unknown option (suggesting the closest), a missing or extra argument, and a
  value of the wrong type or out of range (:func:`check_value`: the type from the option's default — the method's
  parameter or the config id's value —, the range from :data:`RANGES`), before anything runs or is written.
"""

from __future__ import annotations

import difflib
import inspect
import json
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fire.parser import DefaultParseValue

from fanet_monai.cli.configs import DATA_LAYERS, config_ids, raw_config
from fanet_monai.errors import InputError
from fanet_monai.networks.onnx_runtime import check_runtime
from fanet_monai.where_to_look import check_where_to_look

__all__ = ["RANGES", "UsageError", "check_command_line", "check_value", "command_help", "overview", "parameters"]


class UsageError(ValueError):
    """A command line that does not match the command (unknown option, missing argument, bad value)."""


@dataclass(frozen=True)
class Range:
    """What an option accepts beyond its default's type: ``kind`` ("int", "number", "ints": a list of ints), the
    bounds (``low_open``: strictly above ``low``) and whether ``None`` is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: bool = False

    def describe(self) -> str:
        what = {"int": "a whole number", "number": "a number", "ints": "a list of whole numbers"}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        each = " each" if self.kind == "ints" else ""
        return what + (f"{each} " + " and ".join(bounds) if bounds else "") + (" or None" if self.none else "")


#: ranges of the options whose default does not say it all (a computed ``$...`` default, or a bound that matters)
RANGES: dict[str, Range] = {
    "max_epochs": Range("int", 1),
    "batch_size": Range("int", 1),
    "num_workers": Range("int", 0),
    "val_interval": Range("int", 1),
    "num_passes": Range("int", 1),
    "unroll_passes": Range("int", 1),
    "unroll_corrections": Range("number", 0, 1),
    "seed": Range("int", 0),
    "split_seed": Range("int", 0),
    "num_qualitative": Range("int", 0),
    "retries": Range("int", 0),
    "num_images": Range("int", 1),
    "size": Range("int", 8),
    "learning_rate": Range("number", 0, low_open=True),
    "val_fraction": Range("number", 0, 1, high_open=True),
    "refine_tolerance": Range("number", 0),
    "augmentation_prob": Range("number", 0, 1, none=True),
    "max_train_seconds": Range("number", 0, low_open=True, none=True),
    "progress_interval": Range("number", 0, low_open=True),
    "interval": Range("number", 0, low_open=True),
    "backoff": Range("number", 0),
    "image_size": Range("ints", 1),
    "patch_size": Range("ints", 1),
    "patches_per_image": Range("int", 1),
    "min_object_size": Range("int", 0),
    "series_stable_for": Range("number", 0),
}


def parameters(method: Callable) -> tuple[list[inspect.Parameter], bool]:
    """The named parameters of a command (without ``self``) and whether it takes ``**overrides``."""
    params = list(inspect.signature(method).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def _default_text(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def usage(name: str, method: Callable) -> str:
    """``fanet NAME ARG [--option default] ...``."""
    named, extra = parameters(method)
    parts = [p.name.upper() if p.default is p.empty else f"[--{p.name} {_default_text(p.default, 20)}]"
             for p in named]
    return f"fanet {name} " + " ".join(parts) + (" [--CONFIG_ID VALUE ...]" if extra else "")


def command_help(name: str, method: Callable) -> str:
    """``fanet NAME --help``: usage, description, arguments with defaults, and the bundle config ids with theirs."""
    named, extra = parameters(method)
    lines = [f"usage: {usage(name, method)}", "", inspect.cleandoc(method.__doc__ or ""), "", "arguments:"]
    for p in named:
        default = "required" if p.default is p.empty else f"default {_default_text(p.default)}"
        lines.append(f"  --{p.name:<24} {default}")
    lines.append("  --debug True                print the traceback of an error")
    configs = getattr(method, "bundle_configs", None)
    if configs:
        own = tuple(c for c in configs if c not in DATA_LAYERS)
        shown = {p.name for p in named} | {"network", "run", "own_bundle_root"}  # internal wiring
        lines += ["", f"bundle options (ids of {', '.join(c + '.json' for c in own)}; any id or sub-id such as "
                      "--network_def#variant B3 can be set; '$...' defaults are computed):"]
        lines += _config_lines(raw_config(own), shown)
        base = raw_config(own)
        for layer in (c for c in configs if c in DATA_LAYERS):
            changed = {k: v for k, v in raw_config((*own, layer)).items() if base.get(k) != v}
            if isinstance(changed.get("network_def"), dict) and isinstance(base.get("network_def"), dict):
                # the layer sets some of the network's arguments (network_def#spatial_dims ...): list those
                network, before = changed.pop("network_def"), base["network_def"]
                changed.update({f"network_def#{k}": v for k, v in network.items() if before.get(k) != v})
            lines += ["", f"{layer} options ({layer}.json, laid over the above when the data holds volumes; "
                          "their values there):"]
            lines += _config_lines(changed, shown)
    elif extra:
        lines += ["", "more options are passed through (see the description)."]
    return "\n".join(lines)


def _config_lines(raw: dict, shown: set[str]) -> list[str]:
    lines = []
    for key, value in raw.items():
        if key in shown or key.startswith("_") or key in ("imports", "+imports"):
            continue
        if isinstance(value, dict) and "_target_" in value and key == "network_def":
            for sub, sub_value in value.items():
                lines.append(f"  --{key}#{sub:<{max(1, 23 - len(key))}} {_default_text(sub_value)}")
        elif not isinstance(value, (dict, list)) or (isinstance(value, list) and len(json.dumps(value)) < 60):
            lines.append(f"  --{key:<24} {_default_text(value)}")
    return lines


def overview(description: str, commands: dict[str, Callable]) -> str:
    """``fanet --help``: the commands with their first docstring line."""
    lines = ["usage: fanet COMMAND [ARGS] [--OPTION VALUE ...]", "", inspect.cleandoc(description), "", "commands:"]
    for name, method in commands.items():
        first = inspect.cleandoc(method.__doc__ or "").split("\n")[0]
        lines.append(f"  {name:<12} {first}")
    lines += ["", "`fanet COMMAND --help` lists a command's options and their defaults; add --debug True to see the "
                  "traceback of an error.", "exit codes: 0 done, 1 internal error, 2 bad input or option (nothing "
                  "done), 3 done except for the inputs it names (skipped or failed), 130 interrupted."]
    return "\n".join(lines)


def split_args(args: Sequence[str]) -> tuple[list[str], dict[str, str | None]]:
    """Positional tokens and options with their raw values (``--a b``, ``--a=b``; a flag followed by another flag,
    or last, has the value ``None``: boolean ``True`` for fire)."""
    positional: list[str] = []
    options: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            name = name.replace("-", "_")
            if eq:
                options[name] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                options[name] = args[i + 1]
                i += 1
            else:
                options[name] = None
        elif token.startswith("-") and len(token) == 2 and token[1].isalpha():
            options[token[1:]] = None
        else:
            positional.append(token)
        i += 1
    return positional, options


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_value(option: str, value: Any, default: Any) -> None:
    """Refuse ``value`` for ``--option`` when it is not of ``default``'s type (bool, int, number, text, list) or is
    outside :data:`RANGES`; ``None`` and computed ``$...`` defaults leave the type to the range, if any.

    Raises:
        UsageError: naming the option, the value, what it accepts and the default.
    """
    rule = RANGES.get(option)
    hint = f" (default {_default_text(default, 40)})"
    if option == "where_to_look":  # True/False or the map's name
        try:
            check_where_to_look(value)
        except ValueError as error:
            raise UsageError(f"--where_to_look {value!r}: {error}") from None
        return
    if option == "runtime":  # the engine, and whether its packages are installed
        try:
            check_runtime(value)
        except InputError as error:
            raise UsageError(f"--runtime {value!r}: {error}") from None
        return
    if value is None and (rule is None or rule.none or default is None):
        return
    computed = default is None or (isinstance(default, str) and default.startswith(("$", "@")))
    expected = None
    if isinstance(default, bool):
        expected = ("True or False", lambda v: isinstance(v, bool))
    elif rule is None and not computed:
        if _is_int(default):
            expected = ("a whole number", _is_int)
        elif _is_number(default):
            expected = ("a number", _is_number)
        elif isinstance(default, list):
            expected = ("a list such as [64,64]", lambda v: isinstance(v, list))
    if expected is not None and not expected[1](value):
        raise UsageError(f"--{option} {value!r}: expected {expected[0]}{hint}.")
    if rule is None:
        return
    items = value if rule.kind == "ints" and isinstance(value, list) else [value]
    ok = (rule.kind != "ints" or isinstance(value, list)) and all(
        (_is_int(v) if rule.kind in ("int", "ints") else _is_number(v))
        and (rule.low is None or (v > rule.low if rule.low_open else v >= rule.low))
        and (rule.high is None or (v < rule.high if rule.high_open else v <= rule.high))
        for v in items)
    if not ok or not items:
        raise UsageError(f"--{option} {value!r}: expected {rule.describe()}{hint}.")


def check_command_line(name: str, method: Callable, args: Sequence[str]) -> None:
    """Refuse unknown options (suggesting the closest), missing or extra arguments, and bad option values
    (:func:`check_value`), before anything runs.

    Raises:
        UsageError: the first problem, in one line.
    """
    named, extra = parameters(method)
    positional, options = split_args(args)
    defaults = {p.name: p.default for p in named}
    configs = getattr(method, "bundle_configs", None)
    raw = raw_config(tuple(configs)) if configs else {}
    ids = config_ids(configs) if configs else set()
    for option, text in options.items():
        top, _, sub = option.partition("#")
        if option not in defaults and top not in ids and not (extra and not configs):
            candidates = sorted(set(defaults) | ids)
            close = difflib.get_close_matches(option, candidates, n=1, cutoff=0.6)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise UsageError(f"unknown option --{option}{hint}; `fanet {name} --help` lists the options.")
        value = True if text is None else DefaultParseValue(text)
        if option in defaults:
            default = defaults[option]
            check_value(option, value, None if default is inspect.Parameter.empty else default)
        elif not sub:
            check_value(option, value, raw.get(option))
        elif isinstance(raw.get(top), dict) and "#" not in sub:
            check_value(sub, value, raw[top].get(sub))
    required = [p.name for p in named if p.default is p.empty and p.name not in options]
    if len(positional) < len(required):
        missing = " ".join(r.upper() for r in required[len(positional):])
        raise UsageError(f"missing {missing}; usage: {usage(name, method)}")
    if len(positional) > len([p for p in named if p.name not in options]):
        raise UsageError(f"too many arguments {positional}; usage: {usage(name, method)}")
