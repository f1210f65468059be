"""Property-based fuzz of the loaders and the `xbar train` command line (issue 14's acceptance).

Device, network and experiment specs (as dicts and as TOML files, valid ones with a few fields
fuzzed, and bit-flipped preset files) and `xbar train` argument lists up to the resolved config:
whatever goes in, the only exceptions out are xbar's own (XbarError and its subclasses), and a
ConfigError is one line. Nothing here trains or allocates a network. Fixed seed (derandomize), a
few thousand cases in all.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbar import ConfigError, Device, XbarError
from xbar.device import FIELD_NAMES as DEVICE_FIELDS
from xbar.device import FIELDS as DEVICE_FIELD_SPECS
from xbar.nn import LAYER_FIELDS, LAYER_KINDS, OUTPUT_LAYER_FIELDS, SPEC_FIELDS, NetworkSpec
from xbar.train.loop import FIELDS as TRAIN_FIELDS

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"derandomize": True, "database": None, "deadline": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.filter_too_much, HealthCheck.data_too_large]}


def only_xbar_errors(fn, *args, one_line: bool = True, **kw):
    """Call fn; an XbarError is an answer (a ConfigError is one line), anything else a defect."""
    try:
        return fn(*args, **kw)
    except ConfigError as exc:
        assert str(exc) and (not one_line or "\n" not in str(exc)), f"a ConfigError of more than one line: {exc}"
    except XbarError as exc:
        assert str(exc)
    return None


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("XBAR_PATH", raising=False)
    monkeypatch.delenv("XBAR_DATA", raising=False)
    monkeypatch.chdir(tmp_path)   # paths the fuzz invents (--out, --network) land here


# ---- values: what a TOML file, a grid or a keyword can hold, and then some ------------------------

NASTY_FLOATS = [0.0, -0.0, 0.5, 1.0, 2.0, 1e-320, 1e-38, 1.2e-38, 1e6, 1e30, 1e308, -1e308,
                math.inf, -math.inf, math.nan]
NASTY_INTS = [0, 1, 2, 3, 8, 9, 16, 64, -1, 100001, 10 ** 6, 10 ** 12, 2 ** 63, 10 ** 400]
WORDS = ["agsi", "ideal", "gst-pcm", "rram-4bit", "digits", "mnist", "fmnist", "cifar10", "qat", "float",
         "pulse", "mixed", "nearest", "stochastic", "bp", "fa", "hsic", "sg", "seed", "global", "local",
         "init", "device", "asymm", "symm", "layer", "column", "additive", "multiplicative", "digits-mlp",
         "mlp-4", "lenet5", "64x64", "16x8", "-64x64", "0x64", "1000000000x1000000000", "64", "x",
         "read_noise_rel=0.02", "levels_us=[0.0,1.0]", "pulse_levels=nan", "g_max_us=1e308",
         "bits=3,read_noise_kind=additive", "levels_us=[0.0", "=", ",", "", " ", "nope.toml",
         "networks/mlp-4.toml", "../devices/agsi.toml", "café", "\x00"]

scalars = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from(NASTY_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_FLOATS),
    st.booleans(),
    st.text(max_size=10),
    st.sampled_from(WORDS),
    st.dates(), st.times(), st.datetimes(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


STR_POOLS = {
    "network": NetworkSpec.presets() + ["nope", "networks/nope.toml"],
    "device": Device.presets() + ["agsii", "devices/agsi.toml"],
    "tile": ["64x64", "16x8", "1x1", "128x32", "64X64", "0x64", "64"],
    "device_set": ["read_noise_rel=0.02", "levels_us=[0.0,0.5,1.0]", "bits=3", "pulse_levels=20",
                   "stuck_off_rate=0.01,read_noise_kind=additive", "g_max_us=2.0", "drift_nu_mean=0.05"],
    "data_dir": [],
}


def plausible(f):
    """Values a user would write for Field f: mostly valid, at the edges of its range."""
    if f.choices:
        s = st.sampled_from(f.choices)
    elif f.kind == "bool":
        s = st.booleans()
    elif f.kind == "int":
        lo = -3 if f.lo is None else int(f.lo)
        hi = lo + 64 if f.hi is None else int(min(f.hi, lo + 64))
        s = st.integers(lo, hi) | st.sampled_from([lo, hi, hi + 1, lo - 1])
    elif f.kind in ("float", "str_or_float"):
        lo = -2.0 if f.lo is None else float(f.lo)
        hi = lo + 10.0 if f.hi is None else float(min(f.hi, lo + 1e3))
        s = st.floats(lo, hi) | st.sampled_from([lo, hi])
    elif f.kind == "floats":
        s = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).map(sorted)
    elif STR_POOLS.get(f.name):
        s = st.sampled_from(STR_POOLS[f.name])
    else:
        s = st.text(max_size=12)
    return s | st.none() if f.optional else s


def mostly(good, bad, odds: int = 7):
    """`good` odds times in odds + 1, else `bad` (one_of would not keep the proportion)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: good if ok else bad)


def field_values(f):
    """Mostly plausible values, now and then anything at all."""
    return mostly(plausible(f), values)


def toml_value(v) -> str:
    """A minimal TOML writer (inline tables and arrays), enough for the fuzzed values."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_text(data: dict) -> str:
    """Top-level keys of `data` as TOML lines (None, which TOML cannot say, left out)."""
    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in data.items()
                   if v is not None and not _holds_none(v))


def _holds_none(v) -> bool:
    if isinstance(v, list):
        return any(x is None or _holds_none(x) for x in v)
    if isinstance(v, dict):
        return any(x is None or _holds_none(x) for x in v.values())
    return False


# ---- devices ----------------------------------------------------------------------------------

PRESET_DICTS = [{k: v for k, v in Device.preset(n).as_dict().items() if v is not None}
                for n in ("ideal", "agsi", "rram-4bit", "pcm-inference")]
device_keys = st.one_of(st.sampled_from(DEVICE_FIELDS), st.text(max_size=8))
device_dicts = st.one_of(
    st.dictionaries(device_keys, values, max_size=6),
    st.tuples(st.sampled_from(PRESET_DICTS), st.dictionaries(device_keys, values, max_size=3))
      .map(lambda t: {**t[0], **t[1]}),
    st.tuples(st.sampled_from(PRESET_DICTS),
              st.fixed_dictionaries({}, optional={f.name: field_values(f) for f in DEVICE_FIELD_SPECS}))
      .map(lambda t: {**t[0], **t[1]}),
    st.fixed_dictionaries({"source": st.text(min_size=1, max_size=8), "g_min_us": st.floats(0.0, 10.0),
                           "g_max_us": st.floats(10.0, 1e6)},
                          optional={f.name: plausible(f) for f in DEVICE_FIELD_SPECS
                                    if f.name not in ("g_min_us", "g_max_us", "source")}),
)


@settings(max_examples=700, **SETTINGS)
@given(device_dicts)
def test_fuzz_device_dicts(data):
    dev = only_xbar_errors(Device.from_dict, data, file="fuzz.toml")
    if dev is not None:
        dev.levels(), dev.summary(), dev.window_us
        only_xbar_errors(dev.with_, **{k: v for k, v in data.items() if k in DEVICE_FIELDS})


@settings(max_examples=300, **SETTINGS)
@given(device_dicts)
def test_fuzz_device_files(tmp_path, data):
    f = tmp_path / "fuzzed-device.toml"
    try:
        f.write_text(toml_text(data), encoding="utf-8")
    except UnicodeEncodeError:   # lone surrogates: not writable as UTF-8, not a TOML file
        return
    only_xbar_errors(Device.from_toml, f)
    only_xbar_errors(Device.preset, str(f))


PRESET_BYTES = [p.read_bytes() for p in sorted((ROOT / "devices").glob("*.toml"))]


@settings(max_examples=300, **SETTINGS)
@given(st.sampled_from(PRESET_BYTES), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 7)),
                                                min_size=1, max_size=4), st.booleans())
def test_fuzz_bit_flipped_device_files(tmp_path, raw, flips, truncate):
    raw = bytearray(raw)
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    if truncate:
        raw = raw[:flips[0][0] % len(raw)]
    f = tmp_path / "flipped.toml"
    f.write_bytes(bytes(raw))
    only_xbar_errors(Device.from_toml, f)


# ---- networks -------------------------------------------------------------------------------------

sizes = mostly(st.integers(1, 40), st.one_of(st.integers(-2, 0), st.sampled_from(NASTY_INTS),
                                             st.sampled_from(NASTY_FLOATS), scalars))


def layer_table(kind):
    """A [[layers]] table of `kind`: its own keys with sizes a spec would hold, now and then a stray key."""
    specs = {f.name: f for f in LAYER_FIELDS[kind] if f.name != "kind"}
    optional = {n: (sizes if f.kind == "int" else field_values(f)) for n, f in specs.items()}
    needed = {"dense": ("units",), "conv": ("filters", "kernel")}.get(kind, ())
    required = {"kind": st.just(kind)} | {n: optional.pop(n) for n in needed}
    return mostly(st.fixed_dictionaries(required, optional=optional),
                  st.fixed_dictionaries({"kind": st.just(kind)}, optional=optional | {"bogus": scalars}))


layer_tables = mostly(st.sampled_from(LAYER_KINDS).flatmap(layer_table),
                      st.dictionaries(st.text(max_size=6), values, max_size=3))
network_tops = {f.name: field_values(f) for f in SPEC_FIELDS} | {
    "output_layer": st.one_of(st.fixed_dictionaries({}, optional={f.name: field_values(f)
                                                                  for f in OUTPUT_LAYER_FIELDS}), values)}
INPUTS = st.sampled_from([[1, 8, 8], [1, 28, 28], [3, 32, 32], [3, 5, 5], [1, 1, 1]])
network_dicts = st.sampled_from(["hidden", "layers", "layers", "other"]).flatmap(lambda shape: {
    "hidden": st.fixed_dictionaries({"hidden": mostly(st.lists(sizes, max_size=4), values)},
                                    optional=network_tops),
    "layers": st.fixed_dictionaries({"layers": mostly(st.lists(layer_tables, max_size=6), values)},
                                    optional={**network_tops, "input": mostly(INPUTS, st.lists(sizes, max_size=4)
                                                                              | values)}),
    "other": st.dictionaries(st.one_of(st.sampled_from(["hidden", "layers", "input", "output_layer",
                                                        "activation"]), st.text(max_size=6)), values, max_size=4),
}[shape])


@settings(max_examples=500, **SETTINGS)
@given(network_dicts, st.sampled_from([(64, 10), (784, 10), (3072, 10)]),
       st.sampled_from([(64, 64), (1, 1), (10 ** 9, 10 ** 9)]))
def test_fuzz_network_specs(data, dims, tile):
    spec = only_xbar_errors(NetworkSpec.from_dict, data, file="fuzz.toml")
    if spec is None:
        return
    n_in = math.prod(spec.input) if spec.input else dims[0]
    only_xbar_errors(spec.widths, n_in, dims[1])
    only_xbar_errors(spec.check_memory, n_in, dims[1], tile, 64)


# ---- experiment specs --------------------------------------------------------------------------

# sweep._check_option_keys still echoes a key holding a newline as is (two-line message); set True
# once it shows such keys with repr, as config.check_keys does.
SWEEP_ONE_LINE = True
TRAIN_NAMES = [f.name for f in TRAIN_FIELDS]
# Options a spec or a command line sets, each with its own plausible values (the slow or
# data-loading ones left out: nothing here trains).
OPTION_SPECS = {f.name: f for f in TRAIN_FIELDS if f.name not in ("data_dir", "train_limit", "test_limit")}
OPTION_SPECS |= {f"device.{f.name}": f for f in DEVICE_FIELD_SPECS}
option_keys = mostly(st.sampled_from(sorted(OPTION_SPECS)), st.text(max_size=8))
option_values = st.one_of(st.sampled_from(WORDS), st.sampled_from(NASTY_INTS), st.sampled_from(NASTY_FLOATS),
                          scalars)


def option_pair(key_strategy=option_keys):
    """(key, a value for it): plausible for a known key, anything for an unknown one."""
    return key_strategy.flatmap(lambda k: st.tuples(st.just(k), field_values(OPTION_SPECS[k])
                                                    if k in OPTION_SPECS else values))


def option_grid_entry():
    return option_keys.flatmap(lambda k: st.tuples(
        st.just(k), mostly(st.lists(field_values(OPTION_SPECS[k]) if k in OPTION_SPECS else option_values,
                                    min_size=1, max_size=3, unique_by=repr), values)))


small_grids = st.lists(option_grid_entry(), min_size=1, max_size=2).map(dict)
small_bases = st.lists(option_pair(), max_size=4).map(dict)
experiment_dicts = st.fixed_dictionaries(
    {"grid": mostly(small_grids, values)},
    optional={"name": mostly(st.text(min_size=1, max_size=8), scalars),
              "description": mostly(st.text(max_size=8), scalars),
              "command": mostly(st.sampled_from(["train", "train", "prune"]), scalars),
              "seeds": mostly(st.lists(st.integers(0, 5), max_size=3), st.lists(st.integers(-1, 5)) | values),
              "missing_data": mostly(st.sampled_from(["error", "skip"]), scalars),
              "base": mostly(small_bases, values),
              "exclude": mostly(st.lists(st.lists(option_pair(), min_size=1, max_size=2).map(dict), max_size=2),
                                values)})


@settings(max_examples=250, **SETTINGS)
@given(experiment_dicts)
def test_fuzz_experiment_specs(data):
    from xbar.sweep import Experiment
    exp = only_xbar_errors(Experiment.from_dict, data, file="fuzz.toml", one_line=SWEEP_ONE_LINE)
    if exp is not None:
        only_xbar_errors(exp.expand, check_data=False, one_line=SWEEP_ONE_LINE)


@settings(max_examples=100, **SETTINGS)
@given(experiment_dicts)
def test_fuzz_experiment_files(tmp_path, data):
    from xbar.sweep import Experiment
    f = tmp_path / "fuzzed-spec.toml"
    try:
        text = toml_text({k: v for k, v in data.items() if not isinstance(v, dict)})
        text += "".join(f"[{k}]\n{toml_text(v)}" for k, v in data.items() if isinstance(v, dict))
        f.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        return
    only_xbar_errors(Experiment.load, str(f), one_line=SWEEP_ONE_LINE)


# ---- the `xbar train` command line, up to the resolved config -----------------------------------

OPTIONS = ["--" + n.replace("_", "-") for n in TRAIN_NAMES] + ["--out", "--json", "--quiet", "--bogus", "-x"]
arg_values = st.one_of(st.sampled_from(WORDS), st.sampled_from([str(v) for v in NASTY_INTS + NASTY_FLOATS]),
                       st.integers(-100, 10 ** 7).map(str), st.floats().map(str),
                       st.text(st.characters(blacklist_categories=["Cs"]), max_size=8)
                       .filter(lambda t: not t.startswith("-h") and not t.startswith("--h")))


def as_arg(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if not isinstance(v, (list, dict)) else toml_value(v)


TRAIN_SPECS = {n: f for n, f in OPTION_SPECS.items() if not n.startswith("device.")}
plausible_pairs = st.sampled_from(sorted(TRAIN_SPECS)).flatmap(
    lambda n: st.tuples(st.just("--" + n.replace("_", "-")),
                        mostly(plausible(TRAIN_SPECS[n]), arg_values, odds=5)
                        .filter(lambda v: v is not None).map(as_arg)))
argvs = st.sampled_from(["plausible"] * 3 + ["pairs", "tokens"]).flatmap(lambda how: {
    "plausible": st.lists(plausible_pairs, max_size=5).map(lambda pairs: [x for p in pairs for x in p]),
    "pairs": st.lists(st.tuples(st.sampled_from(OPTIONS), arg_values), max_size=5)
               .map(lambda pairs: [x for p in pairs for x in p]),
    "tokens": st.lists(st.one_of(st.sampled_from(OPTIONS), arg_values), max_size=6),
}[how])


@settings(max_examples=1000, **SETTINGS)
@given(argvs)
def test_fuzz_train_command_line(capsys, argv):
    from xbar.cli import parse_train_config
    try:
        cfg = only_xbar_errors(parse_train_config, argv)
    except SystemExit as exc:   # --help / --version print and exit 0; anything else is a defect
        assert exc.code == 0, argv
        return
    finally:
        capsys.readouterr()
    if cfg is not None:
        assert cfg.update is not None and cfg.epochs >= 1 and cfg.optimizer is not None
