"""The command line and the wheel: presets ship as package data and load after a normal install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from xbar.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_devices_lists_every_preset(capsys):
    from xbar import Device
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in Device.presets():
        assert name in out


def test_devices_show_prints_fields(capsys):
    assert main(["devices", "show", "agsi"]) == 0
    out = capsys.readouterr().out
    assert "nonlinearity_ltp" in out and "2.4" in out and "source" in out


def test_unknown_device_is_one_clear_line(capsys):
    assert main(["devices", "show", "agsii"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'agsii'" in err and "did you mean 'agsi'" in err
    assert "Traceback" not in err


def test_mvm_demo_bad_bits(capsys):
    assert main(["mvm-demo", "--bits", "9"]) == 2
    assert "bits = 9" in capsys.readouterr().err


def test_mvm_demo_runs(capsys):
    assert main(["mvm-demo", "--tile", "32x32"]) == 0
    out = capsys.readouterr().out
    assert "pcm-inference" in out and "err %" in out


def test_wheel_ships_presets_and_they_load(tmp_path):
    pytest.importorskip("hatchling")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True)
    (wheel,) = wheel_dir.glob("xbar_sim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "xbar/_presets/devices/agsi.toml" in names
    assert "xbar/_presets/devices/costs/default-45nm.toml" in names
    assert "xbar/_presets/experiments/seed-study.toml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True)
    code = ("import xbar, pathlib; d = xbar.Device.preset('gst-pcm'); "
            "print(pathlib.Path(d.file).parent.parent.name, len(xbar.Device.presets()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True).stdout
    folder, n = out.split()
    assert folder == "_presets" and int(n) >= 9
