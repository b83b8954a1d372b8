"""The search space: which TrainConfig fields a sweep varies, and how each is drawn.

A space maps a field name to a spec in the form W&B sweep files use::

    parameters:
      gamma:     {distribution: log_uniform_values, min: 0.001, max: 0.05}
      min_bits:  {values: [0, 2, 3, 4]}
      init_bits: {distribution: uniform, min: 4, max: 8}
      epochs:    {distribution: int_uniform, min: 3, max: 8}
      size_term: {value: bops}

``--space FILE`` reads that (YAML, or JSON); ``--param NAME=SPEC`` gives one field, SPEC
being the same mapping in YAML's flow form, a list (``values``) or a plain value. The space
is checked against TrainConfig before any Ray process starts (``check_space``), and stored
normalised (``{"distribution", "min", "max"}``, ``{"values"}`` or ``{"value"}``) in
sweep.json. γ is always a dimension: a space without it gets ``--gamma-min``..``--gamma-max``
log-uniform (``full_space``).

``draw`` is the random search's sampler: γ comes from the same generator, seeded by
``--seed``, as before spaces existed (so a γ-only sweep draws the γs it always drew), every
other field from its own generator seeded by ``--seed`` and the field's name, so adding a
field never moves the draws of the others. ``optuna_space`` is the same space as Optuna
distributions, for ``--search optuna``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np

from trainer.config import ConfigError, TrainConfig, resolve

# TrainConfig fields a sweep may not vary: which network is trained and where (the sweep's
# own flags set them: kind by the reference trials, seed by --seed/--seeds), the data, and
# how the final test measures it.
NOT_SWEPT = ("kind", "preset", "seed", "device", "threads", "data_dir", "dataset",
             "synthetic_size", "test_subset", "fixed_bits", "full_width", "cuda_graphs",
             "init_from")  # init_from: a file, set by --start baseline / --init-from
SWEEPABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_SWEPT)
RANGES = ("log_uniform_values", "uniform", "int_uniform")  # distributions with min and max
DISTRIBUTIONS = (*RANGES, "values", "value")  # values: a choice; value: one fixed value
SPACE_KEYS = ("parameters",)  # top-level keys of a --space file


def field_type(name: str) -> type:
    """The Python type of a TrainConfig field (bool, int, float or str)."""
    annotation = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    for kind in (bool, int, float, str):
        if kind.__name__ in annotation:
            return kind
    raise AssertionError(f"TrainConfig.{name} has an unexpected type {annotation}")


def load_space_file(path: str | Path) -> dict:
    """The ``parameters`` of a --space file (YAML or JSON), not yet checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path}: no such file: give a YAML or JSON file with "
                          "'parameters:' (see --help)")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--space {path}: not readable as YAML or JSON ({first})") from None
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ConfigError(f"--space {path}: expected a mapping with 'parameters:', each field "
                          "a {distribution, min, max}, {values} or {value} mapping")
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"--space {path}: unknown top-level key {unknown[0]!r}: only "
                          "'parameters' (--search and --objective are flags)")
    return dict(data["parameters"])


def parse_param(text: str) -> tuple[str, object]:
    """``NAME=SPEC`` of --param: SPEC is YAML (a mapping, a list of values, or one value)."""
    import yaml

    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"--param {text!r}: expected NAME=SPEC, e.g. "
                          "--param 'min_bits=[0, 3]' or --param "
                          "'gamma={distribution: log_uniform_values, min: 0.001, max: 0.05}'")
    try:
        return name.strip(), yaml.safe_load(spec)
    except yaml.YAMLError as err:
        raise ConfigError(f"--param {text!r}: SPEC is not YAML "
                          f"({str(err).splitlines()[0]})") from None


def _number(value: object, where: str) -> float:
    """A spec's number (YAML reads 1e-3 as a string: accept it)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return number


def _typed(name: str, value: object, where: str) -> object:
    """``value`` as the field's type, or ConfigError."""
    kind = field_type(name)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name} is true or false, got {value!r}")
    if kind is str:
        return str(value)
    number = _number(value, where)
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{where}: {name} takes whole numbers, got {value!r}")
        return int(number)
    return number


def normalise(name: str, spec: object) -> dict:
    """One field's spec in its stored form; ConfigError on an unknown field or a bad spec."""
    if name not in SWEEPABLE:
        raise ConfigError(f"unknown field {name!r} in the search space: sweepable fields are "
                          f"{', '.join(SWEEPABLE)}")
    where = f"search space field {name}"
    if isinstance(spec, list):
        spec = {"values": spec}
    elif not isinstance(spec, dict):
        spec = {"value": spec}
    keys = set(spec)
    if keys == {"value"}:
        return {"value": _typed(name, spec["value"], where)}
    if keys == {"values"}:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list, got {values!r}")
        typed = [_typed(name, v, where) for v in values]
        if len(set(map(repr, typed))) < len(typed):
            raise ConfigError(f"{where}: values repeat: {values!r}")
        return {"values": typed}
    distribution = spec.get("distribution")
    if distribution not in RANGES or keys != {"distribution", "min", "max"}:
        raise ConfigError(f"{where}: expected {{distribution: D, min: A, max: B}} with D one of "
                          f"{', '.join(RANGES)}, or {{values: [...]}}, or {{value: V}}; "
                          f"got {spec!r}")
    low, high = (_number(spec[k], f"{where} {k}") for k in ("min", "max"))
    kind = field_type(name)
    if kind in (bool, str):
        raise ConfigError(f"{where}: {name} is a {kind.__name__}: give {{values: [...]}}")
    if kind is int and distribution != "int_uniform":
        raise ConfigError(f"{where}: {name} takes whole numbers: use int_uniform or values")
    if kind is float and distribution == "int_uniform":
        low, high = float(low), float(high)  # a float field drawn at whole numbers is fine
    if not low < high:
        raise ConfigError(f"{where}: the range [{low:g}, {high:g}] is empty or inverted: "
                          "min must be below max")
    if distribution == "log_uniform_values" and low <= 0:
        raise ConfigError(f"{where}: log_uniform_values needs min > 0, got {low:g}")
    if distribution == "int_uniform":
        low, high = _typed(name, low, where), _typed(name, high, where)
        if kind is float:
            low, high = float(low), float(high)
    return {"distribution": distribution, "min": low, "max": high}


def normalise_space(parameters: dict) -> dict:
    """Every field's spec in stored form, in the order given."""
    return {name: normalise(name, spec) for name, spec in parameters.items()}


def full_space(space: dict | None, gamma_min: float, gamma_max: float) -> dict:
    """The space a sweep draws from: ``space`` with γ log-uniform in [gamma_min, gamma_max]
    first when it does not set γ itself."""
    gamma = {"gamma": {"distribution": "log_uniform_values", "min": gamma_min,
                       "max": gamma_max}}
    return {**gamma, **(space or {})} if "gamma" not in (space or {}) else dict(space)


def extremes(spec: dict) -> list:
    """The values that bound a spec: its min and max, its choices, or its one value."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def check_space(space: dict, base: TrainConfig, has_gpu: bool = False) -> None:
    """ConfigError, naming the field, when some corner of ``space`` is a TrainConfig the
    trainer would refuse (each field alone first, then every combination of the bounds)."""
    fields = [name for name in space if name != "gamma"] + ["gamma"]
    for name in fields:
        for value in extremes(space[name]):
            _check(base, {name: value}, has_gpu)
    corners = [extremes(space[name]) for name in fields]
    if math.prod(len(c) for c in corners) <= 4096:
        for values in itertools.product(*corners):
            _check(base, dict(zip(fields, values, strict=True)), has_gpu)


def _check(base: TrainConfig, values: dict, has_gpu: bool) -> None:
    try:
        resolve(base.replace(**values), has_gpu=has_gpu)
    except ConfigError as err:
        said = ", ".join(f"{k} {v!r}" for k, v in values.items())
        raise ConfigError(f"search space: at {said} the trainer refuses: {err}") from None


def _generator(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def draw_field(name: str, spec: dict, n: int, seed: int) -> list:
    """``n`` values of one field, a function of ``seed`` and the field's name alone
    (γ log-uniform: the sweep's historic draws, numpy's generator seeded by ``seed``)."""
    if "value" in spec:
        return [spec["value"]] * n
    rng = np.random.default_rng(seed) if name == "gamma" else _generator(seed, name)
    if "values" in spec:
        return [spec["values"][int(i)] for i in rng.integers(0, len(spec["values"]), n)]
    low, high = spec["min"], spec["max"]
    if spec["distribution"] == "log_uniform_values":
        drawn = np.exp(rng.uniform(math.log(low), math.log(high), n))
    elif spec["distribution"] == "uniform":
        drawn = rng.uniform(low, high, n)
    else:
        drawn = rng.integers(int(low), int(high) + 1, n)
    kind = field_type(name)
    return [kind(v) for v in drawn]


def draw(space: dict, n: int, seed: int) -> list[dict]:
    """``n`` points of ``space`` (field -> value), the random search's draws."""
    columns = {name: draw_field(name, spec, n, seed) for name, spec in space.items()}
    return [{name: columns[name][i] for name in space} for i in range(n)]


def optuna_space(space: dict) -> tuple[dict, dict]:
    """``(distributions, fixed)``: the varying fields as Optuna distributions, and the
    fields with one value, which the study never sees."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    varying, fixed = {}, {}
    for name, spec in space.items():
        if "value" in spec:
            fixed[name] = spec["value"]
        elif "values" in spec:
            varying[name] = CategoricalDistribution(spec["values"])
        elif spec["distribution"] == "int_uniform":
            if field_type(name) is int:
                varying[name] = IntDistribution(int(spec["min"]), int(spec["max"]))
            else:
                varying[name] = FloatDistribution(spec["min"], spec["max"], step=1.0)
        else:
            varying[name] = FloatDistribution(
                spec["min"], spec["max"], log=spec["distribution"] == "log_uniform_values")
    return varying, fixed


def describe(space: dict) -> str:
    """E.g. ``gamma log-uniform [0.001, 0.05], min_bits in {0, 3}``."""
    def one(name: str, spec: dict) -> str:
        if "value" in spec:
            return f"{name} = {spec['value']}"
        if "values" in spec:
            return f"{name} in {{{', '.join(map(str, spec['values']))}}}"
        how = {"log_uniform_values": "log-uniform", "uniform": "uniform",
               "int_uniform": "integers"}[spec["distribution"]]
        return f"{name} {how} [{spec['min']:g}, {spec['max']:g}]"
    return ", ".join(one(n, s) for n, s in space.items())


def swept(space: dict | None) -> list[str]:
    """The fields a space varies, γ first (γ-only sweeps: ``["gamma"]``)."""
    names = [n for n, s in (space or {}).items() if "value" not in s and n != "gamma"]
    gamma = (space or {}).get("gamma")
    return (["gamma"] if gamma is None or "value" not in gamma else []) + names
