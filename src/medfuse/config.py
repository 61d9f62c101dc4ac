"""One YAML-config base for every typed config (model, synthetic cohort, training stages).

A config is a dataclass deriving from `YamlConfig` whose fields are declared with
`option(default, help)`: every field is a YAML key with help text (and, for the training
stages, a CLI flag). The base gives each config the same behaviour:

- `from_dict(data, origin)`: an unknown key is a `ConfigError` naming the key, a value of the
  wrong type is one naming the key and the expected type (ints are fine for floats), and
  any error is prefixed with `origin` (the file, or "flags");
- `from_yaml(path, overrides)`: the file's keys, then `overrides` (CLI flags) on top; a
  missing or unreadable file or bad YAML is one `InputError` line naming the file;
- `as_dict()` / `to_yaml()`: every field, YAML/JSON ready;
- `validate()` runs on construction; `require_ints` holds the integer checks they share.

    @dataclass
    class CohortConfig(YamlConfig):
        n: int = option(100, "Number of cases.")

        def validate(self) -> None:
            self.require_ints("n")
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from medfuse.errors import ConfigError, InputError

_NO_DEFAULT: Any = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field: its default (or `factory` for a mutable one) and the help text of its YAML key and flag."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check_int(key: str, value: Any, *, minimum: int = 1, nullable: bool = False, note: str = "") -> None:
    """ConfigError unless `value` is an integer >= `minimum` (None too when `nullable`); bools are not integers."""
    if value is None and nullable:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return
    what = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    raise ConfigError(f"{key}: must be {what}{' or null' if nullable else ''}{note}, got {value!r}")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file is {}); any problem is one InputError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read ({e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        raise InputError(path, f"invalid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:  # a hostile file nesting deeper than the parser's recursion limit
        raise InputError(path, "invalid YAML (nested too deeply)") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise InputError(path, "a config file must be a mapping of key: value")
    return loaded or {}


class YamlConfig:
    """Base of the typed dataclass configs: YAML in and out, unknown-key and type errors naming the key."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key (each config adds its own checks)."""

    def require_ints(self, *names: str, minimum: int = 1, nullable: bool = False) -> None:
        """`check_int` on each named field."""
        for name in names:
            check_int(name, getattr(self, name), minimum=minimum, nullable=nullable)

    # ----------------------------------------------------------- serialisation
    @classmethod
    def unknown_key_scope(cls) -> str:
        """Words after "unknown key 'k'" saying what the keys belong to ('' by default)."""
        return ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> Self:
        """Build from a mapping; unknown keys and wrong types are ConfigErrors naming the key and `origin`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: a config must be a mapping of key: value")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                raise ConfigError(f"{origin}: unknown key '{key}'{cls.unknown_key_scope()} "
                                  f"(known: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        try:
            return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> Self:
        """The YAML file's keys (none without a file), then the non-None `overrides` (CLI flags) on top."""
        data = read_yaml_mapping(path) if path is not None else {}
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, origin=str(path) if path is not None else "flags")

    def as_dict(self) -> dict[str, Any]:
        """A plain mapping (YAML/JSON ready) of every field; a copy, safe to change."""
        return copy.deepcopy(dataclasses.asdict(self))  # type: ignore[call-overload]

    def to_yaml(self) -> str:
        """`as_dict` as YAML, in field order (what `from_yaml` reads back)."""
        import yaml

        return yaml.safe_dump(self.as_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for CLI flags and documentation)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against the field's annotation (ints are fine for floats, paths for strings)."""
    allowed = _types_of(annotation)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key}: must not be null")
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is str and isinstance(value, str | Path):
            return str(value)
        if t in (dict, list) and isinstance(value, t):
            return value
        if t is Any:
            return value
    names = "/".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def _types_of(annotation: Any) -> tuple[Any, ...]:
    """The plain types a field annotation allows (`dict[str, int] | None` -> (dict, NoneType))."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _types_of(a))
    return (typing.get_origin(annotation) or annotation,)
