"""Building blocks of the settings sections: the strict frozen section base, our own rule errors
(loading.py turns them into ConfigError with file, field and fix), and the field types that
parse text: paths, env var names, and the simulator's fault schedule and kinds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from ssmd.errors import ConfigError
from ssmd.exchange.schedule import (
    ALL_KINDS,
    FaultKind,
    RandomFaults,
    parse_fault_kinds,
    parse_fault_spec,
)

RULE_TYPE = "ssmd_rule"  # pydantic error type of our own rules; ctx carries fix and field
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def rule(message: str, *, fix: str, field: str = "") -> PydanticCustomError:
    """A validation error of our own: `field` (relative to where it is raised) and `fix` end up
    in the ConfigError loading.py builds from it."""
    return PydanticCustomError(RULE_TYPE, message, {"fix": fix, "field": field})


def absolute_path(value: Path) -> Path:
    """Relative paths resolve against the current working directory, at load time."""
    path = value.expanduser()
    return path if path.is_absolute() else Path.cwd() / path


CwdPath = Annotated[Path, AfterValidator(absolute_path)]


def null_to_empty(value: object) -> object:
    """`key: null` in YAML means "the default" for fields whose default is resolved later."""
    return "" if value is None else value


def drop_null_sections(data: object, names: tuple[str, ...]) -> object:
    """A section whose children are all commented out is YAML null: it means the defaults."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if not (k in names and v is None)}
    return data


class Section(BaseModel):
    """One block of the YAML: unknown keys are errors, and settings never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# The syntax of ssmd.exchange.schedule.parse_fault_spec (`ssmd exchange --faults`).
_FAULTS_SYNTAX = "none, or random:rate=FAULTS_PER_S[,seed=N], e.g. random:rate=0.5,seed=7"
_FAULT_KINDS_SYNTAX = "all, or a comma-separated list from: " + ", ".join(
    kind.value for kind in FaultKind
)


def _receive_fault_kinds(value: object) -> tuple[FaultKind, ...]:
    """`all` (or null), a comma list `close,abort` or a YAML list, parsed by the schedule's
    own parse_fault_kinds (order kept, repeats dropped)."""
    if value is None or (isinstance(value, str) and value.strip() == "all"):
        return ALL_KINDS
    if isinstance(value, list | tuple):
        value = ",".join(item.value if isinstance(item, FaultKind) else str(item) for item in value)
    if not isinstance(value, str):
        raise rule("expected all or a list of fault kinds", fix=f"use {_FAULT_KINDS_SYNTAX}")
    if not value.strip():
        raise rule("no fault kind listed", fix=f"use {_FAULT_KINDS_SYNTAX}")
    try:
        return parse_fault_kinds(value)
    except ConfigError as exc:
        raise rule(exc.message, fix=f"use {_FAULT_KINDS_SYNTAX}") from exc


def _fault_kinds_to_text(kinds: tuple[FaultKind, ...]) -> str:
    return "all" if kinds == ALL_KINDS else ",".join(kind.value for kind in kinds)


def _receive_faults(value: object, info: ValidationInfo) -> RandomFaults | None:
    """`none` (or null) or `random:rate=R[,seed=N]`, parsed by the schedule's own
    parse_fault_spec and drawing from `fault_kinds` (validated first: it is declared first).
    A RandomFaults built in code is taken as it is."""
    if value is None or isinstance(value, RandomFaults):
        return value
    if not isinstance(value, str):
        raise rule("expected a fault schedule", fix=f"use {_FAULTS_SYNTAX}")
    kinds = info.data.get("fault_kinds", ALL_KINDS)
    try:
        return parse_fault_spec(value, kinds)
    except ConfigError as exc:
        raise rule(exc.message, fix=f"use {_FAULTS_SYNTAX}") from exc


def _faults_to_text(faults: RandomFaults | None) -> str:
    return "none" if faults is None else f"random:rate={faults.rate_hz},seed={faults.seed}"


FaultKinds = Annotated[
    tuple[FaultKind, ...],
    PlainValidator(_receive_fault_kinds),
    PlainSerializer(_fault_kinds_to_text, return_type=str),
]
FaultSpec = Annotated[
    RandomFaults | None,
    PlainValidator(_receive_faults),
    PlainSerializer(_faults_to_text, return_type=str),
]


def no_duplicates(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A list validator: the first entry listed twice is an error naming its index."""
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise rule("listed twice", field=str(index), fix="remove the duplicate list entry")
        seen.add(value)
    return values
