"""The GPU check's runner (pipeline.bench.gpu_check) on the CPU: install, skips, limits, the JSON after every part."""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from pipeline.bench import gpu_check
from pipeline.bench.gpu_check import Check, Part, install, run_part


def make_check(tmp_path: Path, budget: float = 60) -> Check:
    env = {**os.environ, "PYTHONPATH": str(gpu_check.REPO)}
    return Check(tmp_path, sys.executable, env, time.monotonic() + budget, tmp_path / "gpu_check.log")


def make_wheel(folder: Path, name: str = "carried_demo", version: str = "1.2") -> Path:
    """A pure-Python wheel built by hand, in the format pip installs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", f"__version__ = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_install_puts_the_carried_wheels_into_a_fresh_target(tmp_path):
    check = make_check(tmp_path)
    site = tmp_path / "site"
    (site / "stale").mkdir(parents=True)
    res = install(check, make_wheel(tmp_path / "wheels").parent, site)
    assert res["status"] == "ok", res
    assert not (site / "stale").exists()
    probe = "import carried_demo; print(carried_demo.__version__, carried_demo.__file__)"
    out = subprocess.run([sys.executable, "-c", probe],
                         env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    version, where = out.stdout.split()
    assert version == "1.2" and Path(where).is_relative_to(site)
    assert install(check, tmp_path / "none", site)["status"] == "skipped"


def test_parts_are_skipped_with_their_reason(tmp_path):
    check = make_check(tmp_path, budget=30)
    part = Part("train_base", ["-c", "print(1)"], 10, needs=("deepspeed",), bench_out=False)
    res = run_part(check, part, {"deepspeed": "ModuleNotFoundError: No module named 'deepspeed'"})
    assert res["status"] == "skipped" and "deepspeed does not import" in res["reason"]
    res = run_part(check, Part("sample", ["-c", "print(1)"], 10, min_seconds=60, bench_out=False), {})
    assert res["status"] == "skipped" and "this part needs at least 60" in res["reason"]


def test_a_part_cut_off_by_its_limit_keeps_what_it_logged(tmp_path):
    check = make_check(tmp_path)
    script = ("import sys, time\nprint('[bench train] {\"micro_batch\": 8}', file=sys.stderr, flush=True)\n"
              "time.sleep(60)\n")
    t0 = time.monotonic()
    res = run_part(check, Part("train_large", ["-c", script], 3, min_seconds=1), {})
    assert time.monotonic() - t0 < 30
    assert res["status"] == "timeout" and res["logged"] == [{"micro_batch": 8}]
    assert "[bench train]" in res["log_tail"] and "train_large" in check.log_path.read_text()
    assert not list(tmp_path.glob(".train_large*"))


def test_a_bench_part_returns_its_json_and_a_failed_bench_is_partial(tmp_path):
    check = make_check(tmp_path)
    script = ("import json, sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
              "open(out, 'w').write(json.dumps({'runs': [], 'failed': sys.argv[1:2]}))\n"
              "raise SystemExit(1 if sys.argv[1] == 'bad' else 0)\n")
    res = run_part(check, Part("vqgan", ["-c", script, "good"], 60, min_seconds=1), {})
    assert res["status"] == "ok" and res["result"] == {"runs": [], "failed": ["good"]}
    res = run_part(check, Part("vqgan", ["-c", script, "bad"], 60, min_seconds=1), {})
    assert res["status"] == "partial" and res["result"]["failed"] == ["bad"]


def test_main_writes_the_json_with_install_and_env(tmp_path):
    res = gpu_check.main(["--dir", str(tmp_path), "--wheels", str(tmp_path / "no-wheels"), "--site",
                          str(tmp_path / "site"), "--only", "none", "--dry-run"])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == res and set(saved["parts"]) == {"install", "env"}
    assert saved["parts"]["install"]["status"] == "skipped" and saved["parts"]["env"]["status"] == "ok"
    assert saved["parts"]["env"]["cuda_available"] is False  # the dry run hides any GPU
    assert "torch" in saved["parts"]["env"] and saved["failed"] == []
    assert "install: skipped" in (tmp_path / "gpu_check.log").read_text()
