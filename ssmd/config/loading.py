"""Loading an environment: name or path lookup, strict YAML (no duplicate keys), validation,
and turning every pydantic error into one ConfigError naming the file, the dotted field
(`subscription.channels.2`) and what to do about it."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ssmd.config.fields import RULE_TYPE
from ssmd.config.models import INLINE_SECRET_FIX, Settings
from ssmd.config.nats import NATS_SECRET_KEYS, NatsTransportSettings, nats_inline_secret_fix
from ssmd.errors import ConfigError

ENVIRONMENTS_DIRNAME = "environments"
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_INLINE_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|private_key|pem|api_secret|signature", re.IGNORECASE
)
_NO_ECHO_KEY = re.compile(r"key|secret|password|token", re.IGNORECASE)
# The repo checkout's environments/: ssmd/config/loading.py -> the checkout root.
_REPO_ENVIRONMENTS = Path(__file__).resolve().parents[2] / ENVIRONMENTS_DIRNAME


# libyaml's parser when PyYAML has it: on a 10,000-market environment 7x less CPU (0.21 ->
# 0.03 s) and 2-3 MB less RSS at start-up (measured); the same documents either way.
_SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # one of two bases
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(
    loader: yaml.constructor.SafeConstructor, node: yaml.MappingNode
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def environment_dirs(environments_dir: Path | None = None) -> list[Path]:
    """Where names are looked up: the given directory, else `./environments` then the
    `environments/` directory next to the package in a repo checkout."""
    if environments_dir is not None:
        return [environments_dir]
    return list(dict.fromkeys([Path.cwd() / ENVIRONMENTS_DIRNAME, _REPO_ENVIRONMENTS]))


def available_environments(environments_dir: Path | None = None) -> list[str]:
    dirs = environment_dirs(environments_dir)
    return sorted({path.stem for directory in dirs for path in directory.glob("*.yaml")})


def _environment_path(name_or_path: str, environments_dir: Path | None) -> Path:
    # A name has no path separator and no .yaml suffix; anything else is a path.
    if name_or_path.endswith((".yaml", ".yml")) or not _ENVIRONMENT_NAME.fullmatch(name_or_path):
        return Path(name_or_path)
    candidates = [
        directory / f"{name_or_path}.yaml" for directory in environment_dirs(environments_dir)
    ]
    return next((path for path in candidates if path.is_file()), candidates[0])


def load_environment(name_or_path: str, *, environments_dir: Path | None = None) -> Settings:
    """Load and validate an environment by name (`local`) or by path (`conf/x.yaml`).

    A name resolves to `<environments_dir>/<name>.yaml`; without environments_dir, to
    `./environments/<name>.yaml` if it exists, else to the repo checkout's `environments/`.
    Relative paths inside the YAML (credentials.private_key_file, transport.dir) resolve
    against the current working directory at load time, and are stored absolute.
    Raises ConfigError(message, source=file, field=dotted.path, fix=...) on any problem.
    """
    path = _environment_path(name_or_path, environments_dir)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        names = ", ".join(available_environments(environments_dir)) or "(none)"
        raise ConfigError(
            "configuration file not found",
            source=source,
            fix=f"use an environment name ({names}) or a path to a YAML file",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read the configuration file ({reason})",
            source=source,
            fix="check the path and its permissions",
        ) from exc
    data = _parse_yaml(text, source)
    data.setdefault("name", path.stem)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from exc
    settings._source = source
    if isinstance(settings.transport, NatsTransportSettings):
        settings.transport._source = source
    return settings


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"YAML syntax error at {where}{problem}",
            source=source,
            fix=f"fix the YAML near {where.rstrip(': ') or 'the reported place'}",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("YAML syntax error", source=source, fix="fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            "the file must hold a mapping of top-level keys",
            source=source,
            fix=f"allowed top-level keys: {', '.join(Settings.model_fields)}",
        )
    return data


def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation can hold (through Optional, unions and tuples)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap_models(get_args(annotation)[0])
    if origin in (Union, types.UnionType, tuple, list):
        return [model for arg in get_args(annotation) for model in _unwrap_models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _tagged_member(models: list[type[BaseModel]], tag: object) -> type[BaseModel] | None:
    for model in models:
        kind = model.model_fields.get("kind")
        if kind is not None and tag in get_args(kind.annotation):
            return model
    return None


def _locate(
    loc: tuple[int | str, ...],
) -> tuple[list[str], type[BaseModel] | None, list[type[BaseModel]]]:
    """Dotted path parts for `loc` (union tags dropped), the model holding the last part, and
    the models the last part itself can be (for "expected a mapping" and "missing kind")."""
    parts: list[str] = []
    models: list[type[BaseModel]] = [Settings]
    holder: type[BaseModel] | None = None
    for item in loc:
        found = next((m for m in models if isinstance(item, str) and item in m.model_fields), None)
        if found is not None:
            holder = found
            parts.append(str(item))
            models = _unwrap_models(found.model_fields[str(item)].annotation)
            continue
        member = _tagged_member(models, item)
        if member is not None:  # a discriminated-union tag: not part of the YAML path
            models = [member]
            continue
        holder = models[0] if models else None
        parts.append(str(item))
        models = []
    return parts, holder, models


def _tags(models: list[type[BaseModel]]) -> str:
    kinds = [model.model_fields.get("kind") for model in models]
    return ", ".join(str(tag) for kind in kinds if kind for tag in get_args(kind.annotation))


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    parts, holder, targets = _locate(tuple(first["loc"]))
    ctx: dict[str, Any] = dict(first.get("ctx") or {})
    kind = first["type"]
    if kind == RULE_TYPE:
        extra = str(ctx.get("field", ""))
        field = ".".join([*parts, extra] if extra else parts)
        message, fix = first["msg"], str(ctx.get("fix", ""))
    else:
        field = ".".join(parts)
        message, fix = _describe_problem(kind, first, parts, holder, targets, ctx)
    if len(errors) > 1:
        message += f" (+{len(errors) - 1} more)"
    return ConfigError(message, source=source, field=field, fix=fix)


_CMP = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
# What a wrong-type error should have been, by the first word of pydantic's error type.
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a non-empty string",
    "tuple": "a YAML list, e.g. [a, b]",
    "list": "a YAML list, e.g. [a, b]",
    "path": "a file system path",
    "too": "a non-empty value",
}


def _describe_problem(
    kind: str,
    error: Any,
    parts: list[str],
    holder: type[BaseModel] | None,
    targets: list[type[BaseModel]],
    ctx: dict[str, Any],
) -> tuple[str, str]:
    key = parts[-1] if parts else ""
    allowed_keys = ", ".join(holder.model_fields) if holder is not None else ""
    own_keys = ", ".join(key for model in targets for key in model.model_fields)
    if kind == "extra_forbidden":
        if holder is NatsTransportSettings and (
            key in NATS_SECRET_KEYS or _INLINE_SECRET_KEY.search(key)
        ):
            return f"inline secret {key!r} is not allowed", nats_inline_secret_fix(key)
        if _INLINE_SECRET_KEY.search(key):
            return f"inline secret {key!r} is not allowed", INLINE_SECRET_FIX
        return f"unknown key {key!r}", f"allowed keys here: {allowed_keys}"
    if kind == "missing":
        return "required key is missing", f"add {key!r}"
    if kind == "union_tag_not_found":
        return "missing 'kind'", f"add kind: one of {_tags(targets)}"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}", f"use one of {_tags(targets)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping of keys", f"allowed keys here: {own_keys}"
    if kind in ("enum", "literal_error"):
        return f"{_echo(error, key)}is not allowed", f"use one of {ctx.get('expected', '')}"
    if kind in _CMP:
        bound = next(iter(ctx.values()), "")  # ctx is {"ge": 0} and the like
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{_echo(error, key)}is out of range", f"use a number {_CMP[kind]} {bound}"
    expected = _EXPECTED.get(kind.split("_")[0])
    if expected is not None:
        return f"{_echo(error, key)}has the wrong type or value", f"use {expected}"
    return str(error["msg"]), "see environments/local.yaml for a valid example"


def _echo(error: Any, key: str) -> str:
    """`'value' ` for short scalar inputs of harmless keys, else "" (never echo secrets)."""
    value = error.get("input")
    text = repr(value) if isinstance(value, str | int | float) else ""
    if not text or len(text) > 60 or "\n" in text or _NO_ECHO_KEY.search(key):
        return "value "
    return f"{text} "
