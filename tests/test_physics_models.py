"""Device-effect models (xbar.physics): registry and errors, the constant models against the
crossbar's earlier expressions (bit for bit), the PCM model's statistics against its closed form,
CrossSim's fits, measured tables, and a toy model registered here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from xbar.config import Field, load_toml
from xbar.errors import ConfigError
from xbar.physics import KINDS, REGISTRY, ReadNoise, get_model, model_names, register
from xbar.physics.constant import ConstantDrift, ConstantProgramNoise, ConstantReadNoise, from_device_fields
from xbar.physics.crosssim import SONOS_DRIFT_POLY, SONOS_SPREAD_A, SONOS_SPREAD_B, sonos_fit_at

DEVICES = Path(__file__).resolve().parent.parent / "devices"
NEW_PRESETS = ("pcm-aihwkit", "pcm-joshi", "rram-milo", "rram-wan", "sonos-agrawal", "pcm-table-example")
N = 10_000           # devices per statistics point
TIMES = (1.0, 3600.0, 86400.0, 365 * 86400.0)


def models(kind: str, name: str, **params):
    return get_model(kind, {"model": name, **params})


# ---- registry and errors ------------------------------------------------------------------------

def test_registry_lists_the_shipped_models():
    assert {"constant", "pcm-aihwkit", "table", "crosssim-pcm-joshi", "crosssim-rram-milo",
            "crosssim-rram-wan", "crosssim-sonos", "polynomial"} <= set(model_names("program_noise"))
    assert {"constant", "pcm-aihwkit", "crosssim-sonos"} <= set(model_names("read_noise"))
    assert {"constant", "pcm-aihwkit", "crosssim-sonos", "table"} <= set(model_names("drift"))
    for kind in KINDS:
        for cls in REGISTRY[kind].values():
            assert cls.kind == kind and cls.source.strip(), cls
            assert len({f.name for f in cls.FIELDS}) == len(cls.FIELDS)


def test_unknown_model_name_names_file_path_and_suggests():
    with pytest.raises(ConfigError) as e:
        get_model("drift", {"model": "pcm-aihwkt"}, file="dev.toml")
    msg = str(e.value)
    assert msg.startswith("dev.toml: drift.model = 'pcm-aihwkt'")
    assert "did you mean 'pcm-aihwkit'" in msg and "constant" in msg and "\n" not in msg


def test_missing_model_key_and_bad_kind():
    with pytest.raises(ConfigError, match=r"dev.toml: read_noise.model is required: expected one of"):
        get_model("read_noise", {"rel": 0.1}, file="dev.toml")
    with pytest.raises(ConfigError, match=r"did you mean 'drift'"):
        get_model("drfit", {"model": "constant"})
    with pytest.raises(ConfigError, match=r"dev.toml: drift = 3: expected a table"):
        get_model("drift", 3, file="dev.toml")


def test_bad_parameters_name_dotted_path_and_range():
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise.coefs_us: unknown key \(did you mean "
                                          r"'coeffs_us'\?\)"):
        get_model("program_noise", {"model": "pcm-aihwkit", "coefs_us": [1.0]}, file="dev.toml")
    with pytest.raises(ConfigError, match=r"dev.toml: read_noise.rel = 2.0 is out of range: expected a number "
                                          r"in \[0, 1\]"):
        get_model("read_noise", {"model": "constant", "rel": 2.0}, file="dev.toml")
    with pytest.raises(ConfigError, match=r"drift.nu_mean_min = 0.2 must be at most nu_mean_max = 0.1"):
        get_model("drift", {"model": "pcm-aihwkit", "nu_mean_min": 0.2})
    with pytest.raises(ConfigError, match=r"program_noise.clip = 'windw'.*did you mean 'window'"):
        get_model("program_noise", {"model": "pcm-aihwkit", "clip": "windw"})


def test_none_spec_is_the_constant_model_that_does_nothing():
    rng = np.random.default_rng(0)
    g = np.linspace(0, 25, 7)
    assert get_model("program_noise", None).write(g, 0.0, 25.0, 25.0, rng) is g
    assert np.all(get_model("read_noise", None).variance(g, None, 25.0) == 0)
    assert get_model("drift", None).draw_nu(g, rng) is None
    assert rng.standard_normal() == np.random.default_rng(0).standard_normal()   # nothing was drawn


def test_as_dict_round_trips_for_every_model():
    table = {"levels_us": [1.0, 5.0], "sigma_us": [0.1, 0.2], "nu_mean": [0.05, 0.04], "nu_std": [0.01, 0.01]}
    for kind in KINDS:
        for name, cls in REGISTRY[kind].items():
            names = {f.name for f in cls.FIELDS}
            params = {k: v for k, v in table.items() if k in names} if name == "table" else {}
            m = get_model(kind, {"model": name, **params})
            d = m.as_dict()
            assert d["model"] == name and get_model(kind, d) == m
            assert get_model(kind, m) is m
    with pytest.raises(ConfigError, match="this table is for model 'constant'"):
        ConstantDrift.from_params({"model": "pcm-aihwkit"})


# ---- constant models: bit for bit the crossbar's earlier expressions -----------------------------

def test_constant_write_is_the_old_expression():
    g = np.random.default_rng(1).uniform(0.0, 25.0, (2, 33, 17))
    lo = np.full(g.shape, 0.5)
    hi = np.full(g.shape, 24.0)
    rel, window = 0.036, 25.0
    old_rng, new_rng = np.random.default_rng(7), np.random.default_rng(7)
    old = g + rel * window * old_rng.standard_normal(g.shape)
    old = np.clip(old, lo, hi)
    new = ConstantProgramNoise(rel=rel).write(g, lo, hi, window, new_rng)
    assert new.dtype == np.float64 and np.array_equal(old, new)
    assert old_rng.standard_normal() == new_rng.standard_normal()   # same stream position after
    # rel = 0 draws nothing and does not clip
    rng = np.random.default_rng(7)
    assert ConstantProgramNoise(rel=0.0).write(g, lo, hi, window, rng) is g
    assert rng.standard_normal() == np.random.default_rng(7).standard_normal()


@pytest.mark.parametrize("differential", [True, False])
def test_constant_read_variance_is_the_old_expression(differential):
    rng = np.random.default_rng(2)
    gp, gn = rng.uniform(0, 25, (2, 3, 40, 9))
    s, window = 0.047, 25.0
    mult = ConstantReadNoise(rel=s, kind="multiplicative")
    add = ConstantReadNoise(rel=s, kind="additive")
    if differential:
        old_mult = (s * gp) ** 2 + (s * gn) ** 2
        new_mult = mult.variance(gp, None, window) + mult.variance(gn, None, window)
        old_add = np.full_like(gp, 2 * (s * window) ** 2)
        new_add = add.variance(gp, None, window) + add.variance(gn, None, window)
    else:
        old_mult = (s * gp) ** 2 + 0.0
        new_mult = mult.variance(gp, None, window)
        old_add = np.full_like(gp, 1 * (s * window) ** 2)
        new_add = add.variance(gp, None, window)
    assert np.array_equal(old_mult, new_mult) and np.array_equal(old_add, new_add)
    assert new_add.shape == gp.shape and new_add.dtype == np.float64


def test_constant_drift_is_the_old_expression():
    full = (2, 1, 30, 11)
    m, sd, t0 = 0.052, 0.017, 20.0
    old_rng, new_rng = np.random.default_rng(3), np.random.default_rng(3)
    old_nu = np.maximum(m + sd * old_rng.standard_normal(full), 0.0)
    model = ConstantDrift(nu_mean=m, nu_std=sd, t0_s=t0)
    nu = model.draw_nu(np.zeros(full), new_rng)
    assert np.array_equal(old_nu, nu)
    gp = np.random.default_rng(4).uniform(0, 25, full[1:])
    for t in (86400.0, 3.2e7):
        f = (t / t0) ** (-old_nu)
        assert np.array_equal(gp * f[0], model.apply(gp, nu[0], t))
        assert np.array_equal(gp * f[1], model.apply(gp, nu[1], t))
    assert model.apply(gp, nu[0], t0) is gp and model.apply(gp, nu[0], 5.0) is gp
    rng = np.random.default_rng(3)
    assert ConstantDrift().draw_nu(np.zeros(full), rng) is None
    assert rng.standard_normal() == np.random.default_rng(3).standard_normal()


def test_from_device_fields_matches_a_flat_preset():
    flat = load_toml(DEVICES / "pcm-inference.toml")
    ms = from_device_fields(flat)
    assert ms["program_noise"] == ConstantProgramNoise(rel=0.036)
    assert ms["read_noise"] == ConstantReadNoise(rel=0.047, kind="multiplicative")
    assert ms["drift"] == ConstantDrift(nu_mean=0.052, nu_std=0.017, t0_s=20.0)
    assert from_device_fields({})["drift"].draw_nu(np.zeros(3), None) is None


# ---- pcm-aihwkit: statistics against the closed form ----------------------------------------------

def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def sigma_prog(g):          # Nandakumar 2019 / aihwkit defaults, g in µS
    x = g / 25.0
    return 0.26348 + 1.9650 * x - 1.1731 * x * x


def nu_gauss(g):
    x = max(g / 25.0, 1e-7)
    mu = min(max(-0.0155 * math.log(x) + 0.0244, 0.049), 0.1)
    s = min(max(-0.0125 * math.log(x) - 0.0059, 0.008), 0.045)
    return mu, s


def read_rel(g_prog, t):
    q = min(0.0088 / max((g_prog / 25.0) ** 0.65, 1e-3), 0.2)
    return q * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))


TARGETS = np.linspace(0.0, 25.0, 20)


def test_pcm_programming_std_matches_closed_form():
    model = models("program_noise", "pcm-aihwkit")
    rng = np.random.default_rng(10)
    for g in TARGETS:
        out = model.write(np.full(N, g), 0.0, 25.0, 25.0, rng)
        assert out.min() >= 0.0
        s = sigma_prog(g)
        # std of max(g + s Z, 0): the clip at 0 matters near G = 0
        a = g / s
        m1 = g * _cdf(a) + s * _phi(a)
        m2 = (g * g + s * s) * _cdf(a) + g * s * _phi(a)
        assert out.std() == pytest.approx(math.sqrt(m2 - m1 * m1), rel=0.03), g
    assert model.sigma(np.array([0.0, 25.0])) == pytest.approx([0.26348, 1.05538])
    # prog_noise_scale and a g_max other than the fit's: sigma scales with g_max / 25
    big = models("program_noise", "pcm-aihwkit", g_max_us=50.0, scale=2.0)
    assert big.sigma(np.array([50.0]))[0] == pytest.approx(2 * 2 * 1.05538)


def test_pcm_drift_exponent_mean_and_std():
    model = models("drift", "pcm-aihwkit")
    assert model.state_dependent
    rng = np.random.default_rng(11)
    for g in TARGETS:
        nu = model.draw_nu(np.full(N, g), rng)
        mu, s = nu_gauss(g)
        # nu = |N(mu, s)|: the folded normal
        mean = s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * _cdf(-mu / s))
        std = math.sqrt(mu * mu + s * s - mean * mean)
        assert nu.min() >= 0
        assert nu.mean() == pytest.approx(mean, rel=0.03), g
        assert nu.std() == pytest.approx(std, rel=0.03), g
    mu, s = model.nu_stats(np.array([25.0, 0.0]))
    assert mu == pytest.approx([0.049, 0.1]) and s == pytest.approx([0.008, 0.045])


def test_pcm_drift_counts_time_from_t0():
    model = models("drift", "pcm-aihwkit")
    g = np.array([5.0, 20.0])
    nu = np.array([0.05, 0.1])
    assert model.apply(g, nu, None) is g and model.apply(g, nu, 0.0) is g
    for t in TIMES:
        assert model.apply(g, nu, t) == pytest.approx(g * ((t + 20.0) / 20.0) ** -nu, rel=1e-12)


def test_pcm_read_noise_at_times():
    model = models("read_noise", "pcm-aihwkit")
    assert model.needs_g_prog
    rng = np.random.default_rng(12)
    for t in TIMES:
        for g in TARGETS[1:]:
            rel = read_rel(g, t)
            var = model.variance(np.array([g]), t, 25.0)
            assert math.sqrt(var[0]) / g == pytest.approx(rel, rel=1e-12)
            reads = g + np.sqrt(model.variance(np.full(N, g), t, 25.0)) * rng.standard_normal(N)
            assert reads.std() / g == pytest.approx(rel, rel=0.03), (g, t)
    # right after programming the model's clock reads t0: 0.0088 sqrt(ln(20 s / 500 ns)) at g_max
    fresh = math.sqrt(model.variance(np.array([25.0]), None, 25.0)[0]) / 25.0
    assert fresh == pytest.approx(0.036818, rel=1e-4)
    # the 1/f factor follows G as programmed, the size the drifted G: pass g_prog after drift
    g_prog, g_now = np.array([10.0]), np.array([8.0])
    var = model.variance(g_now, 3600.0, 25.0, g_prog=g_prog)
    assert math.sqrt(var[0]) == pytest.approx(8.0 * read_rel(10.0, 3600.0), rel=1e-12)
    assert model.variance(np.array([0.0]), 1.0, 25.0)[0] == 0.0   # Q is clamped, G = 0 has no noise


# ---- CrossSim fits -------------------------------------------------------------------------------

def test_crosssim_polynomial_fits():
    g = np.array([0.25, 5.0, 12.5, 25.0])
    joshi = models("program_noise", "crosssim-pcm-joshi").sigma(g)
    assert joshi == pytest.approx(-0.00178767 * g**2 + 0.07585724 * g + 0.28638599)
    g = np.array([50.0, 100.0, 225.0])
    milo = models("program_noise", "crosssim-rram-milo").sigma(g)
    assert milo == pytest.approx(-0.009107 * g + 4.782321)
    g = np.array([0.0, 10.0, 39.26])
    wan = models("program_noise", "crosssim-rram-wan").sigma(g)
    assert wan == pytest.approx(1.536e-4 * g**3 - 1.167e-2 * g**2 + 2.374e-1 * g + 1.053)
    # RRAM fits are not clipped (as in CrossSim); PCM is clipped at 0
    rng = np.random.default_rng(13)
    assert models("program_noise", "crosssim-rram-wan").write(np.zeros(N), 0.0, 39.26, 39.26, rng).min() < 0
    assert models("program_noise", "crosssim-pcm-joshi").write(np.zeros(N), 0.25, 25, 24.75, rng).min() == 0
    out = models("program_noise", "crosssim-rram-milo").write(np.full(N, 100.0), 50.0, 225.0, 175.0, rng)
    assert out.std() == pytest.approx(-0.009107 * 100 + 4.782321, rel=0.03)


def test_sonos_program_and_read_noise_in_current_units():
    g = np.array([1.0, 8.0, 16.0])      # µS; at 0.1 V: 100, 800, 1600 nA
    i = g * 100.0
    prog = models("program_noise", "crosssim-sonos").sigma(g)
    assert prog * 100.0 == pytest.approx(19.88665 * (1 - np.exp(-i / 176.3115)))
    var = models("read_noise", "crosssim-sonos").variance(g, 86400.0, 16.0)
    assert np.sqrt(var) * 100.0 == pytest.approx(12.58037 * (1 - np.exp(-i / 215.36557)))


def test_sonos_drift_mean_and_growing_spread():
    model = models("drift", "crosssim-sonos")
    rng = np.random.default_rng(14)
    g = np.full(N, 8.0)                  # 800 nA
    z = model.draw_nu(g, rng)
    assert model.apply(g, z, None) is g
    out = model.apply(g, z, 86400.0) * 100.0
    d_i = np.polyval(SONOS_DRIFT_POLY[1][::-1], 800.0)
    assert out.mean() == pytest.approx(800.0 + d_i, rel=0.005)
    i_mean = 800.0 + d_i
    extra = (SONOS_SPREAD_A[1] * (1 - math.exp(-i_mean / SONOS_SPREAD_B[1]))) ** 2 \
        - (SONOS_SPREAD_A[0] * (1 - math.exp(-i_mean / SONOS_SPREAD_B[0]))) ** 2
    assert out.std() == pytest.approx(math.sqrt(extra), rel=0.03)
    # halfway between measured days the fit is interpolated; past day 5 it is held
    _, a, _ = sonos_fit_at(2.5)
    assert a == pytest.approx((SONOS_SPREAD_A[2] + SONOS_SPREAD_A[3]) / 2)
    assert np.array_equal(model.apply(g, z, 30 * 86400.0), model.apply(g, z, 5 * 86400.0))
    far = models("drift", "crosssim-sonos", beyond_fit="extrapolate")
    assert not np.array_equal(far.apply(g, z, 30 * 86400.0), model.apply(g, z, 30 * 86400.0))


# ---- measured tables ----------------------------------------------------------------------------

def write_csv(folder: Path, text: str, name: str = "t.csv") -> Path:
    p = folder / name
    p.write_text(text)
    return p


def test_table_nearest_level_and_path_relative_to_the_toml(tmp_path):
    sub = tmp_path / "dev"
    sub.mkdir()
    write_csv(sub, "# measured\nlevel_us,sigma_us,nu_mean,nu_std\n"
                   "1,0.1,0.06,0.01\n5,0.5,0.05,0.01\n10,1.0,0.04,0\n")
    toml = str(sub / "my.toml")
    pn = get_model("program_noise", {"model": "table", "file": "t.csv"}, file=toml)
    assert pn.sigma(np.array([0.0, 2.9, 3.0, 3.1, 7.5, 100.0])) == pytest.approx([0.1, 0.1, 0.1, 0.5, 0.5, 1.0])
    rng = np.random.default_rng(15)
    out = pn.write(np.full(N, 5.0), 0.0, 10.0, 10.0, rng)
    assert out.std() == pytest.approx(0.5, rel=0.03)
    dr = get_model("drift", {"model": "table", "file": "t.csv", "t0_s": 10.0}, file=toml)
    nu = dr.draw_nu(np.full(N, 9.0), rng)
    assert nu.mean() == pytest.approx(0.04) and nu.std() == 0.0
    assert dr.apply(np.array([2.0]), np.array([0.04]), 1000.0) == pytest.approx(2.0 * 100.0 ** -0.04)
    # as_dict embeds the columns: it rebuilds without the CSV
    (sub / "t.csv").unlink()
    assert get_model("drift", dr.as_dict()) == dr


def test_shipped_example_table():
    path = DEVICES / "pcm-table-example.toml"
    data = load_toml(path)
    pn = get_model("program_noise", data["program_noise"], file=str(path))
    assert len(pn.levels_us) == 8 and pn.levels_us[-1] == 25.0


@pytest.mark.parametrize("text, pattern", [
    ("level_us,sigma\n1,0.1\n",
     r"t.csv \(.*dev.toml: program_noise.file\): column 'sigma_us' is missing \(did you mean 'sigma'\?\)"),
    ("level_us,sigma_us\n1,0.1\n2,nan\n", r"column 'sigma_us', row 2 = nan: expected a finite number in \[0, "),
    ("level_us,sigma_us\n1,0.1\n2,-0.2\n", r"column 'sigma_us', row 2 = -0.2: expected a finite number"),
    ("level_us,sigma_us\n1,0.1\n3,0.2\n2,0.3\n",
     r"column 'level_us' must be strictly increasing: row 3 = 2.0 after 3.0"),
    ("level_us,sigma_us\n1,0.1\n1,0.2\n", r"column 'level_us' must be strictly increasing"),
    ("level_us,sigma_us\n1,0.1,7\n", r"row 1 has 3 values, expected 2"),
    ("level_us,sigma_us\n1,abc\n", r"column 'sigma_us', row 1 = 'abc': expected a finite number"),
    ("level_us,sigma_us\n", r"no levels; expected at least one row"),
    ("", r"empty table"),
    ("level_us,sigma_us,nu_meen\n1,0.1,0.05\n", r"unknown column 'nu_meen' \(did you mean 'nu_mean'\?\)"),
])
def test_bad_tables_fail_in_one_line(tmp_path, text, pattern):
    write_csv(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as e:
        get_model("program_noise", {"model": "table", "file": "t.csv"}, file=str(tmp_path / "dev.toml"))
    assert "\n" not in str(e.value) and "dev.toml" in str(e.value)


def test_table_missing_file_columns_and_inline_errors(tmp_path):
    toml = str(tmp_path / "dev.toml")
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise.file = 'nope.csv': no such file"):
        get_model("program_noise", {"model": "table", "file": "nope.csv"}, file=toml)
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise.file is required"):
        get_model("program_noise", {"model": "table"}, file=toml)
    write_csv(tmp_path, "level_us,sigma_us\n1,0.1\n")
    with pytest.raises(ConfigError, match=r"column 'nu_mean' is missing"):
        get_model("drift", {"model": "table", "file": "t.csv"}, file=toml)
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise.sigma_us is required with levels_us"):
        get_model("program_noise", {"model": "table", "levels_us": [1.0, 2.0]}, file=toml)
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise: 'levels_us' must be strictly increasing"):
        get_model("program_noise", {"model": "table", "levels_us": [2.0, 1.0], "sigma_us": [0.1, 0.1]},
                  file=toml)
    with pytest.raises(ConfigError, match=r"'sigma_us' has 1 values but 'levels_us' has 2"):
        get_model("program_noise", {"model": "table", "levels_us": [1.0, 2.0], "sigma_us": [0.1]}, file=toml)
    with pytest.raises(ConfigError, match=r"dev.toml: program_noise.levels_us\[1\] = inf"):
        get_model("program_noise", {"model": "table", "levels_us": [1.0, math.inf], "sigma_us": [0.1, 0.1]},
                  file=toml)


# ---- a toy model, added here and used through the registry ---------------------------------------

@register
class ToySqrtReadNoise(ReadNoise):
    """std = sigma_us sqrt(G / 1 µS): a made-up shot-noise-like read noise."""

    name: ClassVar[str] = "toy-sqrt"
    source: ClassVar[str] = "tests/test_physics_models.py (illustrative)"
    FIELDS = (Field("sigma_us", "float", 0.1, "Std at 1 µS.", lo=0.0, hi=10.0, unit="µS"),)

    def variance(self, g, t_s, window_us, *, g_prog=None):
        return self.sigma_us**2 * np.asarray(g, dtype=np.float64)


def test_toy_model_through_the_registry():
    assert "toy-sqrt" in model_names("read_noise")
    m = get_model("read_noise", {"model": "toy-sqrt", "sigma_us": 0.5}, file="toy.toml")
    assert m.variance(np.array([4.0]), None, 25.0) == pytest.approx([1.0])
    assert m.as_dict() == {"model": "toy-sqrt", "sigma_us": 0.5}
    with pytest.raises(ConfigError, match=r"toy.toml: read_noise.sigma_us = 20.0 is out of range: expected "
                                          r"a number in \[0, 10\]"):
        get_model("read_noise", {"model": "toy-sqrt", "sigma_us": 20.0}, file="toy.toml")
    with pytest.raises(ConfigError, match=r"did you mean 'toy-sqrt'"):
        get_model("read_noise", {"model": "toy-sqr"}, file="toy.toml")
    with pytest.raises(TypeError, match="already registered"):
        register(type("Other", (ToySqrtReadNoise,), {}))


# ---- presets and hygiene -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW_PRESETS)
def test_new_presets_build_their_models(name):
    path = DEVICES / f"{name}.toml"
    data = load_toml(path)
    assert data["name"] == name and data["source"].strip() and data["g_min_us"] < data["g_max_us"]
    built = {kind: get_model(kind, data.get(kind), file=str(path)) for kind in KINDS}
    assert built["program_noise"].name != "constant"


def test_models_do_not_change_their_inputs():
    rng = np.random.default_rng(16)
    g = rng.uniform(0.5, 15.0, (3, 5))
    keep = g.copy()
    for kind in KINDS:
        for name in model_names(kind):
            if name == "table":
                cols = {"levels_us": [1.0, 9.0], "sigma_us": [0.1, 0.3], "nu_mean": [0.05, 0.04],
                        "nu_std": [0.01, 0.01]}
                names = {f.name for f in REGISTRY[kind][name].FIELDS}
                m = get_model(kind, {"model": name, **{k: v for k, v in cols.items() if k in names}})
            else:
                m = get_model(kind, {"model": name})
            if kind == "program_noise":
                out = m.write(g, 0.0, 16.0, 16.0, rng)
            elif kind == "read_noise":
                out = m.variance(g, 3600.0, 16.0, g_prog=g)
            elif kind == "read_iv":
                out = m.coefficients(g)[1]
            else:
                nu = m.draw_nu(g, rng)
                out = g if nu is None else m.apply(g, nu, 3600.0)
            assert np.array_equal(g, keep), (kind, name)
            assert np.shape(out) == g.shape or np.broadcast_shapes(np.shape(out), g.shape) == g.shape
