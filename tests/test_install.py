"""What gets installed where: the edge runtime alone in a fresh virtualenv (no torch, no
train/), and the Makefile's choice of extras on a Jetson."""
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_runtime_extras_alone_run_the_line_and_predict(tmp_path, trained_run):
    """pip install '.[ort,plant]' into a new virtualenv, then the daemon on the demo-style line
    and `scrapsort predict`, with neither torch nor the workstation packages present."""
    _, run = trained_run
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{REPO}[ort,plant]"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    python, scrapsort = venv / "bin" / "python", venv / "bin" / "scrapsort"
    for package in ("torch", "torchvision", "tqdm", "matplotlib"):
        probe = subprocess.run([str(python), "-c", f"import {package}"], capture_output=True, cwd=tmp_path)
        assert probe.returncode != 0, f"{package} came with the runtime extras"

    # The shipped demo line, on a copy of the tiny run: its model, and its test split on the belt.
    run_copy = shutil.copytree(run, tmp_path / "run")
    result = subprocess.run([str(scrapsort), "run", "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir",
                             str(run_copy)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    test_images = sum(1 for line in (run / "manifest.json").read_text().splitlines() if '"split": "test"' in line)
    assert f"items on belt {test_images}, decided {test_images} (more than once: 0)" in result.stdout

    images = sorted((run.parent / "data" / "glass").glob("*.jpg"))[:2]
    result = subprocess.run([str(scrapsort), "predict", str(run / "model.onnx"), *map(str, images)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("top-3:") == 2

    # A workstation command says which extra to install instead of failing with a traceback.
    result = subprocess.run([str(scrapsort), "train", "--config", str(REPO / "configs" / "demo.yaml")], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 69 and "pip install '.[train]'" in result.stderr and "Traceback" not in result.stderr


def test_makefile_installs_the_plant_drivers_on_a_jetson(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0\n")
    jetson = subprocess.run(["make", "-n", "setup", f"JETSON_RELEASE={release}", f"VENV={tmp_path / 'v'}"], cwd=REPO, capture_output=True,
                            text=True).stdout
    workstation = subprocess.run(["make", "-n", "setup", f"JETSON_RELEASE={tmp_path / 'absent'}"], cwd=REPO,
                                 capture_output=True, text=True).stdout
    assert "pip install -q -e '.[ort,plant]'" in jetson and "--system-site-packages" in jetson
    assert "pip install -q -e '.[train,ort,plant,test]'" in workstation
