"""Issue 14, the command line, configs, data and the training loop: nothing silent, no tracebacks.

One test per defect the fuzzing campaign found; each failed before its fix.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xbar import ConfigError, DataError, Device
from xbar.cli import build_parser, main
from xbar.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--train-limit", "200", "--test-limit", "100"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user presets, data folders or home cache leak in."""
    monkeypatch.delenv("XBAR_PATH", raising=False)
    monkeypatch.delenv("XBAR_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("xbar: error: ") and "\n" not in err and "Traceback" not in err, err
    assert "usage:" not in err
    return err


# ---- 1. --bits / --device without --update -----------------------------------------------------

def test_device_or_bits_without_update_trains_on_the_device(capsys):
    assert TrainConfig(device="rram-4bit", bits=1).resolve().update == "qat"
    assert TrainConfig(bits=2).resolve().update == "qat"
    assert TrainConfig(device_set="read_noise_rel=0.01").resolve().update == "qat"
    assert TrainConfig().resolve().update == "float"
    assert TrainConfig(device="agsi", update="float").resolve().update == "float"   # asked for
    assert main(["train", "--bits", "1", "--device", "rram-4bit", *FAST]) == 0
    out, err = capsys.readouterr()
    assert "update qat, device rram-4bit (1-bit)" in out
    assert "without --update" in err and "'qat'" in err
    assert main(["train", *FAST, "--quiet"]) == 0
    assert "update float (no device)" in capsys.readouterr().out


# ---- 2. --out is checked before any work -------------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    import xbar.train
    monkeypatch.setattr(xbar.train, "train", lambda *a, **k: pytest.fail("trained before checking --out"))


@pytest.mark.parametrize("case,expect", [("folder", "is a folder"), ("missing", "does not exist"),
                                         ("under-file", "is a file, not a folder"), ("empty", "empty path")])
def test_train_out_is_checked_before_training(tmp_path, capsys, no_training, case, expect):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path / "folder", "missing": tmp_path / "missing" / "run.h5",
           "under-file": tmp_path / "file" / "run.h5", "empty": ""}[case]
    assert main(["train", *FAST, "--out", str(out)]) == 2
    assert expect in one_line_error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_out_read_only_folder(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["train", *FAST, "--out", str(ro / "run.h5")]) == 2
        assert "cannot write" in one_line_error(capsys)
    finally:
        ro.chmod(0o755)


def test_check_output_path_kinds(tmp_path):
    from xbar.paths import check_output_path
    assert check_output_path(tmp_path / "run.h5") == tmp_path / "run.h5"
    assert check_output_path(tmp_path / "a" / "b" / "run.h5", create_parents=True)
    assert not (tmp_path / "a").exists(), "a check creates nothing"
    assert check_output_path(tmp_path / "report", kind="folder")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        check_output_path(tmp_path / "f", kind="folder")
    with pytest.raises(ConfigError, match="cannot write in /proc"):
        check_output_path("/proc/xbar-run.h5")


def test_report_and_sweep_out_are_checked_first(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["report", str(tmp_path / "absent.h5"), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in one_line_error(capsys)
    assert main(["sweep", "quickstart", "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a folder" in one_line_error(capsys)


# ---- 3. a loss that explodes while staying finite ------------------------------------------------

def test_exploding_finite_loss_is_diverged_with_its_epoch():
    r = train(TrainConfig(optimizer="sgd", lr=1000.0, epochs=3, eval_train=False))
    assert r["status"] == "diverged" and r["test_accuracy"] is None
    assert "loss exploded to" in r["message"] and "at epoch 1, step" in r["message"]
    assert r["history"] == []
    assert train(TrainConfig(epochs=1, train_limit=200, test_limit=100))["status"] == "ok"


def test_loss_limit():
    from xbar.train.loop import loss_limit
    assert loss_limit(2.3) == pytest.approx(2.3e6)
    assert loss_limit(1e-9) == 1e6          # a tiny first loss does not make every loss an explosion
    assert loss_limit(1e5) == 1e8           # and a huge one does not hide one


# ---- 4. --data-dir / XBAR_DATA that do not exist -----------------------------------------------

def write_idx_gz(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + arr.astype(">u1").tobytes(), mtime=0))


def make_mnist(folder: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


def test_missing_data_dir_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from xbar import data
    make_mnist(tmp_path / "home" / ".cache" / "xbar" / "mnist")
    assert len(data.load("mnist", "test")[1]) == 3               # the home cache works
    with pytest.raises(DataError, match=r"--data-dir .*nope: no such folder"):
        data.load("mnist", "test", tmp_path / "nope")            # not silently the home cache
    with pytest.raises(DataError, match="no such folder"):
        data.load("digits", "test", tmp_path / "nope")
    monkeypatch.setenv("XBAR_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError, match=r"XBAR_DATA=.*typo: no such folder; the files in .* were not used"):
        data.load("mnist", "test")
    assert main(["train", *FAST, "--data-dir", str(tmp_path / "nope")]) == 2
    assert "no such folder" in one_line_error(capsys)


# ---- 5. a device file must give its window and source --------------------------------------------

def test_device_file_needs_window_and_source(tmp_path):
    f = tmp_path / "mine.toml"
    for text, missing in [("bits = 3\n", "g_min_us, g_max_us, source"),
                          ('source = "lab"\ng_max_us = 5.0\n', "g_min_us"),
                          ('g_min_us = 1.0\ng_max_us = 5.0\n', "source"),
                          ('source = "  "\ng_min_us = 1.0\ng_max_us = 5.0\n', "source")]:
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            Device.from_toml(f)
        msg = str(info.value)
        assert str(f) in msg and "is required" in msg and f"(missing: {missing})" in msg
    # what stays as it was: a complete file (its name from the file name), and every shipped preset
    f.write_text('source = "lab notebook 3"\ng_min_us = 1.0\ng_max_us = 20.0\nbits = 3\n')
    dev = Device.from_toml(f)
    assert dev.name == "mine" and dev.n_levels == 8
    for name in Device.presets():
        dev = Device.preset(name)
        assert dev.name == name and dev.source.strip()


# ---- 6. --workers 0; pulse defaults that learn ---------------------------------------------------

@pytest.mark.parametrize("value", ["0", "two"])
def test_workers_below_one_refused(capsys, value):
    assert main(["sweep", "quickstart", "--dry-run", "--workers", value]) == 2
    assert "expected an integer >= 1" in one_line_error(capsys)


def test_pulse_defaults_learn_on_digits():
    cfg = TrainConfig(update="pulse", device="agsi").resolve()
    assert (cfg.optimizer, cfg.lr, cfg.lr_gamma) == ("sgd", 0.1, 1.0)
    assert TrainConfig(update="pulse", device="agsi", optimizer="adam").resolve().lr == 1e-3
    r = train(cfg.with_(epochs=6, eval_train=False))
    assert r["status"] == "ok" and r["test_accuracy"] > 50   # Adam's default stayed at 10 %


# ---- tracebacks that became messages -------------------------------------------------------------

def test_non_utf8_toml_is_a_config_error(tmp_path):
    from xbar.nn import NetworkSpec
    from xbar.sweep import Experiment
    f = tmp_path / "latin1.toml"
    f.write_bytes('name = "café"\n'.encode("latin-1"))
    for load in (Device.from_toml, NetworkSpec.from_toml, Experiment.load):
        with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 11, line 1\)"):
            load(f)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10 ** 400])
def test_non_finite_or_huge_in_integer_and_float_fields(value):
    with pytest.raises(ConfigError, match="bits"):
        Device.preset("ideal").with_(bits=value)
    with pytest.raises(ConfigError, match="g_max_us"):
        Device.preset("ideal").with_(g_max_us=value)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=value)


def test_non_finite_integers_in_files_and_device_set(tmp_path, capsys):
    from xbar.nn import NetworkSpec
    f = tmp_path / "dev.toml"
    f.write_text('source = "x"\ng_min_us = 0.0\ng_max_us = 1.0\nbits = inf\n')
    with pytest.raises(ConfigError, match=r"dev\.toml: bits = inf: expected an integer in \[1, 8\]"):
        Device.from_toml(f)
    with pytest.raises(ConfigError, match=r"layers\[0\]\.units = inf"):
        NetworkSpec.from_dict({"layers": [{"units": float("inf")}]})
    assert main(["train", "--device", "agsi", "--update", "pulse", "--device-set", "pulse_levels=nan"]) == 2
    assert "pulse_levels = nan: expected an integer" in one_line_error(capsys)


def test_device_set_values_hold_commas():
    from xbar.train.loop import parse_device_set
    assert parse_device_set("levels_us=[0.0,0.5,1.0],read_noise_rel=0.01,read_noise_kind=additive") == {
        "levels_us": [0.0, 0.5, 1.0], "read_noise_rel": 0.01, "read_noise_kind": "additive"}
    assert parse_device_set('description="a, b",bits=2') == {"description": "a, b", "bits": 2}
    dev = TrainConfig(device_set="levels_us=[0.0,0.5,1.0]").device_obj()
    assert dev.levels_us == (0.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"levels_us = '\[0.0' is not a value"):
        parse_device_set("levels_us=[0.0")


def test_sizes_that_cannot_be_allocated_are_refused(tmp_path, capsys):
    from xbar.nn import NetworkSpec
    with pytest.raises(ConfigError, match=r"hidden\[0\] = 1000000000000: expected an integer in \[1, 1000000\]"):
        NetworkSpec.from_dict({"hidden": [10 ** 12]})
    f = tmp_path / "wide.toml"
    f.write_text("hidden = [1000000, 1000000]\n")
    with pytest.raises(ConfigError, match=r"network 'wide' on digits .*needs about .* GB of memory, more than"):
        TrainConfig(network=str(f)).resolve()
    with pytest.raises(ConfigError, match="with tile 1000000000x1000000000 .*GB of memory"):
        TrainConfig(bits=2, tile="1000000000x1000000000").resolve()
    assert main(["mvm-demo", "--tile", "1000000000x1000000000"]) == 2
    assert "GB of memory" in one_line_error(capsys)


def test_conductance_window_has_an_upper_bound():
    with pytest.raises(ConfigError, match=r"g_max_us = 1e\+308 is out of range: expected a number in \(0, 1000000\]"):
        Device.preset("ideal").with_(g_max_us=1e308, read_noise_kind="additive", read_noise_rel=0.1)


def test_bit_flipped_gzip_dataset_is_a_data_error(tmp_path):
    import zlib

    from xbar import data
    folder = tmp_path / "d"
    make_mnist(folder, n=50)
    f = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[10] ^= 0b10   # the first byte of the deflate stream (10-byte header): an invalid block type
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(raw))   # what the flip does (a flip elsewhere can be a gzip CRC error)
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: cannot read IDX file"):
        data.load("mnist", "test", folder)


@pytest.mark.parametrize("argv,expect", [
    (["train", "--bits", "abc"], "bits = 'abc': expected an integer in [1, 8]"),
    (["train", "--tile", "-64x64"], "tile = '-64x64': expected ROWSxCOLS with integers >= 1"),
    (["train", "--lr", "-1e-3"], "lr = -0.001 is out of range"),
    (["train", "--epochs"], "argument --epochs: expected one argument"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ([], "the following arguments are required: command"),
])
def test_bad_command_lines_are_one_line(capsys, argv, expect):
    assert main(argv) == 2
    assert expect in one_line_error(capsys)


# ---- security --------------------------------------------------------------------------------

class _Plant:
    """Unpickling this creates a folder: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_cifar_batches_cannot_run_code(tmp_path):
    from xbar import data
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "planted"
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Plant(str(marker)), b"labels": [0]}, fh)
    with pytest.raises(DataError, match=r"test_batch: refused to unpickle global posix\.mkdir|"
                                         r"test_batch: refused to unpickle global os\.mkdir"):
        data.load("cifar10", "test", tmp_path)
    assert not marker.exists()
    # real batches (arrays, lists, bytes) load under every protocol numpy pickles with
    x = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    for protocol in (2, 4, 5):
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({b"data": x, b"labels": [3, 7], b"batch_label": b"test", b"filenames": [b"a", b"b"]},
                        fh, protocol=protocol)
        X, y = data.load("cifar10", "test", tmp_path, preprocess="none")
        np.testing.assert_array_equal(y, [3, 7])
        np.testing.assert_allclose(X * 255, x, atol=1e-3)


def test_downloads_are_https():
    from xbar import data
    for name, (base, _) in data._SOURCES.items():
        assert base.startswith("https://"), name


# ---- small things a new user hits ----------------------------------------------------------------

def test_documented_submodules_reachable_from_import_xbar():
    code = ("import sys, xbar; assert 'numba' not in sys.modules; "
            "assert callable(xbar.store.load) and xbar.checkpoint.load and xbar.sweep.Experiment; "
            "assert xbar.data.load and xbar.report and xbar.nn.NetworkSpec and xbar.train.train; "
            "assert 'Crossbar' in dir(xbar) and 'store' in dir(xbar)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_help_shows_defaults_and_every_option_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: digits-mlp)" in text and "(default: 30)" in text and "pulse 0.1" in text
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("demo", "mvm-demo", "devices", "data", "eval", "train", "sweep", "report"):
        for action in subs[name]._actions:
            assert action.help, f"xbar {name} {action.dest}: no help text"


def test_spec_path_from_another_folder_hints_the_name(tmp_path, monkeypatch):
    from xbar.sweep import Experiment
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="seed-study"):
        Experiment.load("experiments/seed-study.toml")
    assert Experiment.load("seed-study").name == "seed-study"
    with pytest.raises(ConfigError, match="the preset name 'agsi' works from any folder"):
        Device.preset("devices/agsi.toml")


def test_repository_hygiene():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "report/" in ignored and "results/" in ignored
    for path in [*ROOT.glob("experiments/*.toml"), *ROOT.glob("devices/*.toml")]:
        assert "DOMAIN.md" not in path.read_text(), f"{path.name} cites a file not in the repository"

