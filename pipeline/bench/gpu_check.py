"""Everything a lent GPU should measure, in one command (JSON): `./run.sh gpu-check --dir DIR`.

Meant for a bare GPU machine whose python3 has torch but not DeepSpeed or its pydantic/hjson: those come as
wheels in `.whl/` (made here by `./run.sh gpu-wheels`, carried along) and are installed first into a fresh
target folder that every part gets on its PYTHONPATH. Then the parts run one after another, each in its own
process with its own time limit, inside an overall budget (default 480 s):

    install      the carried wheels into --site (pip --no-index --no-deps --target)
    env          python, torch, CUDA, the GPU, and which of DeepSpeed / pydantic / hjson import
    cuda_tests   the tests that only run on CUDA (pytest -k cuda)
    attention    the masked vs fused context attention, base, one patch step (pipeline.bench attention)
    train_base   base, bf16, ZeRO-2, micro-batches 8/16/32: MFU, per-patch ratio, memory, breakdown, host syncs
    train_large  the same for large
    sample       AR cache vs sliding window at batch 1 and 8, decode modes eager and CUDA graph
    vqgan        f16/16384 encode and decode
    train_overlap     base at micro-batch 16 with ZeRO-2's overlap_comm on (a device sync after every backward)
    sample_compiled   the same with the compiled CUDA-graph step (last: compiling may take a minute)

Each part is logged to stderr when it ends, and DIR/gpu_check.json is rewritten after every part, so a run cut
off by a time limit keeps what it measured (a part's own `[bench ...] {...}` progress lines are kept too). A part
that cannot run (a module missing, too little of the budget left) is skipped with its reason. `--dry-run` runs
the same parts at tiny sizes on the CPU: what a test and a developer without a GPU can check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUDGET_S = 480  # the 8 minutes; the device tool allows 10 per command


@dataclass
class Part:
    name: str
    argv: list[str]  # after the python executable
    timeout: float  # seconds, cut to what is left of the budget
    min_seconds: float = 20.0  # skipped when less than this is left
    needs: tuple[str, ...] = ()  # modules that must import (checked in the env part)
    bench_out: bool = True  # the command takes `--out FILE` (pipeline.bench) and writes its JSON there
    note: str = ""


@dataclass
class Check:
    out_dir: Path
    python: str
    env: dict
    deadline: float
    log_path: Path
    result: dict = field(default_factory=dict)

    def save(self) -> None:
        from pipeline import atomic

        atomic.write_text(self.out_dir / "gpu_check.json", json.dumps(self.result, indent=2, sort_keys=True) + "\n")

    def log(self, text: str) -> None:
        line = f"[gpu-check] {text}"
        print(line, file=sys.stderr, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")


def plan(dry_run: bool) -> list[Part]:
    """The parts, with the sizes of a real GPU run or of the CPU dry run (same commands, tiny sizes)."""
    bench = ["-m", "pipeline.bench"]
    tests = ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", "tests/test_decoding.py",
             "tests/test_attention.py"]
    if dry_run:
        train = bench + ["train", "--device", "cpu", "--preset", "tiny", "--micro-batch", "2", "4", "--grid", "2", "2",
                         "--batches", "2", "--skip", "memory", "--threads", "1"]
        # Limits for a shared 2-core machine; the first DeepSpeed start on a CPU also JIT-builds its shm comm op.
        return [
            Part("cuda_tests", tests, 300, bench_out=False, needs=("pytest",), note="skips itself without CUDA"),
            Part("attention", bench + ["attention", "--device", "cpu", "--preset", "tiny", "--rounds", "1",
                                       "--threads", "1"], 400),
            Part("train_base", train, 900, needs=("deepspeed",)),
            Part("train_large", train + ["--zero-stage", "3"], 600, needs=("deepspeed",)),
            Part("sample", bench + ["sample", "--device", "cpu", "--batches", "1", "--repeats", "1", "--skip",
                                    "parallel", "memory", "--threads", "1"], 400),
            Part("vqgan", bench + ["vqgan", "--device", "cpu", "--preset", "tiny_f16", "--size", "64",
                                   "--iters", "1"], 300),
        ]
    train = ["--device", "cuda", "--bf16", "on", "--zero-stage", "2", "--micro-batch", "8", "16", "32",
             "--warmup", "1", "--skip", "memory", "--ds", "bf16.check_grad_overflow=false"]
    sample = bench + ["sample", "--device", "cuda", "--batches", "1", "8", "--repeats", "2", "--skip", "parallel",
                      "memory", "images", "--decode"]
    return [
        Part("cuda_tests", tests, 60, bench_out=False, needs=("pytest",)),
        Part("attention", bench + ["attention", "--device", "cuda", "--preset", "base", "--batch", "8", "--rounds",
                                   "3"], 90, min_seconds=30),
        Part("train_base", bench + ["train", "--preset", "base", "--batches", "2"] + train, 120, min_seconds=60,
             needs=("deepspeed",)),
        Part("train_large", bench + ["train", "--preset", "large", "--batches", "1"] + train, 150, min_seconds=60,
             needs=("deepspeed",)),
        Part("sample", sample + ["eager", "graph"], 80, min_seconds=40),
        Part("vqgan", bench + ["vqgan", "--device", "cuda", "--preset", "f16_16384", "--size", "256", "--batch", "8",
                               "--iters", "3", "--dtype", "bfloat16"], 40, min_seconds=15),
        Part("train_overlap", bench + ["train", "--preset", "base", "--device", "cuda", "--bf16", "on", "--zero-stage",
                                       "2", "--micro-batch", "16", "--batches", "2", "--skip", "memory", "breakdown",
                                       "syncs", "--ds", "bf16.check_grad_overflow=false",
                                       "zero_optimization.overlap_comm=true"], 60, min_seconds=40, needs=("deepspeed",),
             note="DeepSpeed synchronises the device after every backward with overlap_comm: what that costs"),
        Part("sample_compiled", sample + ["eager", "compiled_graph"], 90, min_seconds=40,
             note="last: torch.compile of the decode step may take a minute"),
    ]


def install(check: Check, wheels: Path, site: Path) -> dict:
    """The carried wheels into a fresh target folder, with this python's pip, offline."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {"status": "skipped", "reason": f"no wheels in {wheels} (make them with ./run.sh gpu-wheels)"}
    if site.exists():
        shutil.rmtree(site)
    cmd = [check.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--target", str(site), *map(str, found)]
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        return {"status": "timeout", "seconds": time.monotonic() - t0, "log_tail": str(e)[-3000:]}
    out = {"status": "ok" if done.returncode == 0 else "failed", "seconds": time.monotonic() - t0,
           "wheels": [p.name for p in found], "site": str(site)}
    if done.returncode:
        out["log_tail"] = (done.stdout + done.stderr)[-3000:]
    return out


ENV_PROBE = r"""
import importlib, json, os, platform, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "cpus": os.cpu_count(), "modules": {}}
import torch
out["torch"] = torch.__version__
out["cuda"] = torch.version.cuda
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                  "multiprocessors": p.multi_processor_count}
for name in ("deepspeed", "pydantic", "hjson", "pytest", "yaml", "pyarrow", "tokenizers", "safetensors"):
    try:
        m = importlib.import_module(name)
        out["modules"][name] = {"version": getattr(m, "__version__", "?"), "file": getattr(m, "__file__", None)}
    except Exception as e:
        out["modules"][name] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def probe_env(check: Check) -> dict:
    try:
        done = subprocess.run([check.python, "-c", ENV_PROBE], capture_output=True, text=True, env=check.env,
                              timeout=180)
    except subprocess.TimeoutExpired as e:
        return {"status": "timeout", "log_tail": str(e)[-3000:]}
    if done.returncode:
        return {"status": "failed", "log_tail": done.stderr[-3000:]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def _logged_lines(text: str) -> list:
    """The `[bench NAME] {...}` progress lines a bench writes to stderr as each of its parts ends."""
    out = []
    for line in text.splitlines():
        if line.startswith("[bench ") and "] {" in line:
            try:
                out.append(json.loads(line[line.index("] {") + 2:]))
            except json.JSONDecodeError:
                pass
    return out


def run_part(check: Check, part: Part, missing: dict[str, str]) -> dict:
    left = check.deadline - time.monotonic()
    if left < part.min_seconds:
        return {"status": "skipped", "reason": f"{left:.0f} s of the budget left; this part needs at least "
                                               f"{part.min_seconds:.0f}"}
    absent = {m: missing[m] for m in part.needs if m in missing}
    if absent:
        return {"status": "skipped", "reason": "; ".join(f"{m} does not import: {e}" for m, e in absent.items())}
    out_file = check.out_dir / f".{part.name}.json"
    out_file.unlink(missing_ok=True)
    cmd = [check.python, *part.argv] + (["--out", str(out_file)] if part.bench_out else [])
    log_file = check.out_dir / f".{part.name}.log"
    timeout = min(part.timeout, left)
    t0 = time.monotonic()
    with open(log_file, "w") as log:
        # Its own process group (to stop the part and its children at its limit), in this session: whoever stops
        # the check (the device tool at its time limit) stops the running part with it.
        proc = subprocess.Popen(cmd, cwd=REPO, env=check.env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else ("partial" if rc == 1 and out_file.is_file() else "failed")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    text = log_file.read_text(errors="replace")
    with open(check.log_path, "a") as f:
        f.write(f"===== {part.name}: {' '.join(cmd)}\n{text}\n")
    res: dict = {"status": status, "seconds": time.monotonic() - t0, "returncode": rc, "command": cmd[1:],
                 "timeout_s": timeout}
    if part.note:
        res["note"] = part.note
    if out_file.is_file():
        res["result"] = json.loads(out_file.read_text())
        out_file.unlink()
    elif part.bench_out:
        res["logged"] = _logged_lines(text)
    if not part.bench_out:
        res["summary"] = text.strip().splitlines()[-1] if text.strip() else ""
    if status != "ok":
        res["log_tail"] = text[-3000:]
    log_file.unlink()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="./run.sh gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", dest="out_dir", default="outputs/gpu_check", help="folder for gpu_check.json and .log")
    ap.add_argument("--wheels", default=str(REPO / ".whl"), help="folder of wheels to install first")
    ap.add_argument("--site", default="/tmp/nuwa-gpu-site", help="target folder for them (emptied first)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for everything")
    ap.add_argument("--dry-run", action="store_true", help="the same parts at tiny sizes on the CPU")
    ap.add_argument("--only", nargs="*", default=None, help="run only these parts (names as in the plan)")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    site = Path(args.site)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if args.dry_run:
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    check = Check(out_dir, sys.executable, env, time.monotonic() + args.budget, out_dir / "gpu_check.log")
    check.log_path.write_text("")
    check.result = {"mode": "dry-run (CPU, tiny sizes)" if args.dry_run else "gpu", "budget_s": args.budget,
                    "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "parts": {}}
    parts = check.result["parts"]

    parts["install"] = install(check, Path(args.wheels), site)
    check.log(f"install: {parts['install']['status']}")
    check.save()
    parts["env"] = probe_env(check)
    modules = parts["env"].get("modules", {})
    missing = {m: v["error"] for m, v in modules.items() if "error" in v}
    check.log(f"env: torch {parts['env'].get('torch')}, gpu {parts['env'].get('gpu', {}).get('name')}, "
              f"missing {sorted(missing) or 'nothing'}")
    check.save()
    for part in plan(args.dry_run):
        if args.only is not None and part.name not in args.only:
            continue
        parts[part.name] = run_part(check, part, missing)
        p = parts[part.name]
        check.log(f"{part.name}: {p['status']}" + (f" in {p['seconds']:.0f} s" if "seconds" in p else "")
                  + (f" ({p['reason']})" if "reason" in p else "") + _headline(part.name, p))
        check.save()
    check.result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    check.result["failed"] = [n for n, p in parts.items() if p["status"] in ("failed", "timeout", "partial")]
    check.save()
    return check.result


def _headline(name: str, p: dict) -> str:
    """The figures worth a glance in the log line of a finished part."""
    r = p.get("result") or {}
    if name.startswith("train"):
        return "".join(f"; micro {x['micro_batch']}: MFU {x['patch']['mfu'] or 0:.1%}, per-patch/full "
                       f"{x['patch_vs_full_time_ratio']:.3f}, peak {x['patch']['peak_memory_bytes'] / 2**30:.1f} GiB"
                       for x in r.get("runs", []))
    if name == "cuda_tests":
        return f"; {p.get('summary', '')}"
    if name == "attention":
        return "".join(f"; {rpe}: fused/masked time {r[rpe].get('fused_over_masked_time', float('nan')):.3f}, "
                       f"memory saved {r[rpe].get('memory_saved_bytes', 0) / 2**20:.0f} MiB"
                       for rpe in ("pre", "post") if rpe in r)
    return ""


def summary(result: dict) -> str:
    """A short table of the parts, printed last (a device run's reply carries the end of the output)."""
    lines = [f"gpu-check ({result['mode']}): {len(result['parts'])} parts, failed: {result.get('failed') or 'none'}"]
    for name, p in result["parts"].items():
        lines.append(f"  {name:12s} {p['status']:8s} " + (f"{p['seconds']:6.0f} s" if "seconds" in p else " " * 8)
                     + (f"  {p['reason']}" if "reason" in p else "") + _headline(name, p))
    return "\n".join(lines)


if __name__ == "__main__":
    res = main()
    print(summary(res))
    raise SystemExit(1 if res["failed"] else 0)
