"""What a `pip install rlbench` gets: the CLI's version, the license, and the shipped configs, usable by name."""

import subprocess
import sys
import zipfile
from pathlib import Path

import rlbench
from rlbench.core.configure import load_yaml, shipped_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_license_and_every_config(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("rlbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ROOT.joinpath("configs").rglob("*.yaml"):
        assert f"rlbench/configs/{config.relative_to(ROOT / 'configs').as_posix()}" in names, config
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert f"rlbench-{rlbench.__version__}.dist-info/METADATA" in names


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped_config("tiny-arith") == shipped_config("tiny-arith.yaml") is not None
    assert load_yaml("tiny-arith") == load_yaml(ROOT / "configs" / "tiny-arith.yaml")
    assert shipped_config("no-such-config") is None
    (tmp_path / "tiny-arith.yaml").write_text("seed: 7\n")  # a file of that name here wins over the shipped one
    assert load_yaml("tiny-arith.yaml") == {"seed": 7}


def test_version_flag_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "rlbench", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"rlbench, version {rlbench.__version__}"
