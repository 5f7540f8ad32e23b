"""A non-editable `pip install .` trains from another directory: launch/train.py and ds_configs/
come from the installed package, not from this checkout. The new venv borrows the dependencies of
the current one (a path in a .pth file, so the checkout's editable finder is not installed)."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from qr_ds.testing import builders as trainkit

pytestmark = pytest.mark.slow


def test_non_editable_install_trains_outside_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(trainkit.ROOT)], check=True, cwd=tmp_path, capture_output=True, text=True)
    where = subprocess.check_output([str(py), "-c", "import qr_ds, qr_ds.train.launch as l; "
                                     "print(qr_ds.__file__); print(l.script())"], text=True, cwd=tmp_path).split()
    assert all(str(site) in w for w in where), where  # the installed copy, launch script included

    pool = trainkit.make_pool(tmp_path / "pool", n_questions=4)
    studs = trainkit.make_students(tmp_path / "students", pool)
    cfg = trainkit.write_config(tmp_path / "c.yaml", studs, pool, tmp_path / "run", max_steps=1)
    data = yaml.safe_load(cfg.read_text())
    for s in data["students"]:
        s["deepspeed"] = "ds_configs/zero2.json"  # resolved from the package: there is none in tmp_path
    cfg.write_text(yaml.safe_dump(data))
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home())}
    res = subprocess.run([str(venv / "bin" / "qr-ds"), "train", "--config", str(cfg)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
