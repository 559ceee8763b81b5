"""`scrapsort bench`: batch-1 latency and accuracy of every backend x precision on this
machine, plus the daemon's per-stage latency on the simulated conveyor.

Each model runs in a process of its own (its peak memory its own); the models take turns in
rounds, the line's run in the middle, so every ratio compares runs of the same minutes. Results go to
<run_dir>/bench/bench.json (with a description of the machine), bench.md and bench.png.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge.config import Config
from edge.service.wiring import model_path
from edge.stats import percentiles

# The CPU features that decide inference speed here (and which INT8 form is fast): printed
# with every result, since machines differ between runs.
SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd",
               "asimddp", "sve"}
CANDIDATES = [  # (label, backend, precision, file in the run dir)
    ("PyTorch eager", "torch", "fp32", "best.pt"),
    ("ONNX Runtime", "onnxruntime", "fp32", "model.onnx"),
    ("ONNX Runtime", "onnxruntime", "fp16", "model_fp16.onnx"),
    ("ONNX Runtime", "onnxruntime", "int8", "model_int8.onnx"),
    ("ONNX Runtime", "onnxruntime", "int8-cpu", "model_int8_cpu.onnx"),
    ("TensorRT", "tensorrt", "fp32", "model_fp32.engine"),
    ("TensorRT", "tensorrt", "fp16", "model_fp16.engine"),
    ("TensorRT", "tensorrt", "int8", "model_int8.engine"),
]


ROUNDS = 10          # the timed runs of every model are spread over this many rounds, taking turns
ROUND_WARMUP = 3     # untimed runs at the start of a model's turn: its caches and threads, as in a loop
ANSWER = "bench> "   # marks the child's answers on its stdout (a library may print there too)

# ONNX Runtime providers measured, each as its own row where this onnxruntime has it.
PROVIDERS = {"TensorrtExecutionProvider": "TensorRT EP", "CUDAExecutionProvider": "CUDA", "CPUExecutionProvider": "CPU"}


def onnx_providers(available: List[str]) -> List[str]:
    return [name for name in PROVIDERS if name in available]


def serve_model(path: str, warmup: int, accuracy_split: Optional[str], run_dir: str,
                provider: Optional[str] = None, flip_average: bool = False) -> None:
    """Runs inside a child process: load and warm up once, then answer the parent line by line.
    "<n>" times n runs of `infer()` (after ROUND_WARMUP untimed ones: the other models ran in
    between); "finish" scores the split and reports the process's peak memory."""
    import cv2

    from edge.vision.backends import open_backend
    from edge.vision.preprocess import Preprocessor

    started = time.perf_counter()
    backend = open_backend(path, flip_average=flip_average, **({"providers": [provider]} if provider else {}))
    _answer({"load_s": time.perf_counter() - started, "runs_on": backend.runs_on})
    pre = Preprocessor(backend.info.preprocess)
    image = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)
    pre(cv2.GaussianBlur(image, (9, 9), 3), backend.input)
    for _ in range(warmup):
        backend.infer()
    for line in sys.stdin:
        if line.strip() == "finish":
            break
        for _ in range(ROUND_WARMUP):
            backend.infer()
        began, times = time.monotonic(), []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            backend.infer()
            times.append(time.perf_counter() - t0)
        _answer({"times": times, "window": [began, time.monotonic()]})
    backend.close()
    result = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if accuracy_split:
        result.update(_accuracy(path, run_dir, accuracy_split, provider, flip_average))
    _answer(result)


def _answer(message: Dict) -> None:
    print(ANSWER + json.dumps(message), flush=True)


def measure_spinning(path: str, cycles: int, idle_s: float) -> Dict:
    """Runs inside a child process: ONNX Runtime's spinning modes (runtime.spinning) on the CPU,
    one session each, taking turns cycle by cycle (so a shared machine's drift hits all alike).
    A cycle is one run after `idle_s` of idleness, as on the line between frames, then one run
    straight after it, as in a benchmark loop; the process's CPU time over the cycle counts
    what the threads burn, spinning included, that the camera thread could have had."""
    from edge.vision.backends.onnxruntime import SPINNING, OnnxRuntimeBackend

    backends = {mode: OnnxRuntimeBackend(Path(path), spinning=mode) for mode in SPINNING}
    after_idle, back_to_back, cpu = ({mode: [] for mode in SPINNING} for _ in range(3))
    for backend in backends.values():
        for _ in range(5):
            backend.infer()
    for _ in range(cycles):
        for mode, backend in backends.items():
            started_cpu = time.process_time()
            time.sleep(idle_s)
            t0 = time.perf_counter()
            backend.infer()
            t1 = time.perf_counter()
            backend.infer()
            after_idle[mode].append(t1 - t0)
            back_to_back[mode].append(time.perf_counter() - t1)
            time.sleep(idle_s)  # what it burns after the run shows here
            cpu[mode].append(time.process_time() - started_cpu)
    for backend in backends.values():
        backend.close()
    return {"idle_ms": idle_s * 1000, "cycles": cycles, "modes": {
        mode: {"after_idle_p50_ms": 1000 * float(np.median(after_idle[mode])),
               "back_to_back_p50_ms": 1000 * float(np.median(back_to_back[mode])),
               "cpu_ms_per_cycle": 1000 * float(np.median(cpu[mode]))} for mode in SPINNING}}


def _accuracy(path: str, run_dir: str, split: str, provider: Optional[str] = None,
              flip_average: bool = False) -> Dict:
    from edge.vision.dataset import MANIFEST_NAME, Manifest, predict_split

    manifest_path = Path(run_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}
    options = {"flip_average": flip_average, **({"providers": [provider]} if provider else {})}
    logits, labels, _ = predict_split(Path(path), Manifest.load(manifest_path), split, **options)
    return {"accuracy": float(np.mean(logits.argmax(1) == np.asarray(labels))), "accuracy_n": len(labels)}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine() -> Dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_name(),
            "cores": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith(("flags", "Features"))),
                     set())
        info["cpu_flags"] = sorted(flags & SPEED_FLAGS)
    for module in ("onnxruntime", "torch", "tensorrt", "cv2", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    info["gpu"] = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    info["power_mode"] = _run(["nvpmodel", "-q"])
    model_file = Path("/proc/device-tree/model")
    if model_file.is_file():
        info["board"] = model_file.read_text().strip("\x00\n")
    return info


def cpu_description(m: Dict) -> str:
    """'AMD EPYC (2 cores; avx2 fma speed-relevant CPU flags)': what every speed ratio ran on."""
    return f"{m.get('cpu')} ({m.get('cores')} cores; {' '.join(m.get('cpu_flags') or []) or 'no'} speed-relevant CPU flags)"


def _run(command: List[str]) -> Optional[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def bench(config: Config, iterations: int = 200, warmup: int = 20, accuracy: bool = True,
          daemon_items: int = 40) -> Dict:
    """Every model loaded once in its own process; their timed runs taken in turns, ROUNDS of
    them, half before the line's run and half after, so that a shared machine's drift reaches
    every row and the line alike and the ratios of one run hold."""
    run_dir = config.run_path
    out_dir = run_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    children = _load_models(run_dir, warmup, "test" if accuracy else None)
    try:
        per_round = max(1, iterations // ROUNDS)
        _take_turns(children, ROUNDS // 2, per_round)
        result = {"machine": machine(), "iterations": per_round * ROUNDS, "warmup": warmup, "rounds": ROUNDS,
                  "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        if daemon_items:
            began = time.monotonic()
            result["daemon"] = {**_daemon_latency(config, daemon_items), "window": [began, time.monotonic()]}
        _take_turns(children, ROUNDS - ROUNDS // 2, per_round)
        print("scoring ..." if accuracy else "finishing ...", flush=True)
        result["models"] = [child.finish() for child in children]
    finally:
        for child in children:
            child.close()
    if daemon_items:
        _line_cost(result, config.runtime.flip_average)
        if model_path(config).suffix == ".onnx":
            print("measuring ONNX Runtime's spinning modes ...", flush=True)
            result["spinning"] = _in_child("measure_spinning", [str(model_path(config)), iterations // 2,
                                                                 1 / config.source.fps])
    _speedups(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    (out_dir / "bench.md").write_text(markdown(result))
    _plot(result, out_dir / "bench.png")
    return result


def _load_models(run_dir: Path, warmup: int, split: Optional[str]) -> List["ModelChild"]:
    children = []
    for label, backend, precision, name in CANDIDATES:
        path = run_dir / name
        if not path.is_file():
            continue
        for provider in _available_providers() if backend == "onnxruntime" else [None]:
            row_label = f"{label} ({PROVIDERS[provider]})" if provider else label
            print(f"loading {row_label} {precision} ({path}) ...", flush=True)
            children.append(ModelChild(row_label, precision, path, warmup, split, run_dir, provider))
    if (run_dir / "model.onnx").is_file():  # runtime.flip_average's cost and gain, on the CPU
        print("loading ONNX Runtime (CPU) fp32 flip-averaged ...", flush=True)
        children.append(ModelChild(f"ONNX Runtime ({PROVIDERS['CPUExecutionProvider']}), flip-averaged", "fp32",
                                   run_dir / "model.onnx", warmup, split, run_dir, "CPUExecutionProvider",
                                   flip_average=True))
    return children


def _take_turns(children: List["ModelChild"], rounds: int, runs: int) -> None:
    """Each round every model's turn, starting one further along each time (no model always
    first after the pause between rounds)."""
    for n in range(rounds):
        print(f"round {n + 1} of {rounds}: {runs} runs of each model ...", flush=True)
        first = n % max(len(children), 1)
        for child in children[first:] + children[:first]:
            child.time(runs)


class ModelChild:
    """One model in its own process (its peak memory its own, no thread pool shared), timed
    when its turn comes."""

    def __init__(self, label: str, precision: str, path: Path, warmup: int, split: Optional[str], run_dir: Path,
                 provider: Optional[str] = None, flip_average: bool = False):
        self.row = {"backend": label, "precision": precision, "model": str(path)}
        self.times: List[float] = []
        self.windows: List[List[float]] = []
        self.error: Optional[str] = None
        self.stderr = tempfile.TemporaryFile(mode="w+")
        code = "import json, sys; from edge.service.bench import serve_model; serve_model(*json.loads(sys.argv[1]))"
        args = [str(path), warmup, split, str(run_dir), provider, flip_average]
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        loaded = self._ask(None)
        if loaded:
            self.row.update(loaded)

    def time(self, runs: int) -> None:
        answer = self._ask(str(runs))
        if answer:
            self.times += answer["times"]
            self.windows.append(answer["window"])

    def finish(self) -> Dict:
        answer = self._ask("finish")
        self.proc.wait()
        if self.error:
            return {**self.row, "error": self.error}
        return {**self.row, **answer, "latency_ms": percentiles(self.times),
                "throughput_fps": 1.0 / float(np.mean(self.times)), "windows": self.windows}

    def close(self) -> None:
        """Ends the child however the bench ended (a failed line run leaves no process behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.stderr.closed:
            self.stderr.close()

    def _ask(self, line: Optional[str]) -> Optional[Dict]:
        """Send a line (None: just read) and wait for the answer; a child that died is an error row."""
        if self.error:
            return None
        try:
            if line is not None:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            for text in self.proc.stdout:
                if text.startswith(ANSWER):
                    return json.loads(text[len(ANSWER):])
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait()
        self.stderr.seek(0)
        self.error = (self.stderr.read().strip().splitlines() or [f"exited with {self.proc.returncode}"])[-1]
        return None


def _available_providers() -> List[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnx_providers(onnxruntime.get_available_providers())


def _in_child(function: str, arguments: List) -> Dict:
    """A measurement in a fresh process: no thread pool or cache left over from another."""
    code = (f"import json, sys; from edge.service.bench import {function}; "
            f"print(json.dumps({function}(*json.loads(sys.argv[1]))))")
    args = json.dumps(arguments)
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _daemon_latency(config: Config, items: int) -> Dict:
    """The whole loop on the simulated conveyor: per-stage latency and ejection timing."""
    from edge.service.sorter import Sorter
    from edge.service.report import summarize
    from edge.line.simulator import SimulatedConveyor

    # Single file: the line's own cost per item (several items in one frame wait for each other;
    # `scrapsort bench --belt` reports that per frame).
    sim_cfg = config.simulator.replace(items=items, processing_jitter_ms=(), abreast=1)
    # Only the audit log and captures go elsewhere (never into the line's own); the run dir
    # stays, so the run's model and its test split are what the belt uses, as on the demo line.
    scratch = config.run_path / "bench" / "line"
    audit = config.audit.replace(db=str(scratch / "audit.db"), captures_dir=str(scratch / "captures"))
    line = config.replace(source=config.source.replace(uri="sim://"), simulator=sim_cfg,
                          observability=config.observability.replace(port=0), audit=audit)
    simulator = SimulatedConveyor(line)
    sorter = Sorter.from_config(line, simulator=simulator).run_to_end()
    summary = summarize(sorter, simulator)
    stages = summary["latency_ms"]
    return {"model": summary["model"], "items": summary["items_on_belt"], "accuracy": summary["accuracy"],
            "latency_ms": stages, "ejection_error_ms": summary["ejection_error_ms"],
            "overhead_ms_p50": stages["capture_to_decision"]["p50"] - stages["inference"]["p50"]}


def _line_cost(result: Dict, flip_average: bool = False) -> None:
    """The line's own cost: its capture-to-decision p50 over the bare inference p50 of the same
    model file run the same way (flip-averaged or not), measured in this run (the first such row)."""
    daemon = result["daemon"]
    bare = next((r for r in result["models"] if "latency_ms" in r and
                 Path(r["model"]).resolve() == Path(daemon["model"]).resolve() and
                 r["backend"].endswith("flip-averaged") == flip_average), None)
    if bare is not None:
        daemon["bare_inference_p50_ms"] = bare["latency_ms"]["p50"]
        daemon["line_cost_ratio"] = daemon["latency_ms"]["capture_to_decision"]["p50"] / bare["latency_ms"]["p50"]


def _speedups(result: Dict) -> None:
    p50 = {(r["backend"], r["precision"]): r["latency_ms"]["p50"] for r in result["models"] if "latency_ms" in r}
    for row in result["models"]:
        if "latency_ms" not in row:
            continue
        for base, key in ((("PyTorch eager", "fp32"), "speedup_vs_torch"), (("ONNX Runtime (CPU)", "fp32"), "speedup_vs_ort_fp32")):
            if base in p50:
                row[key] = p50[base] / row["latency_ms"]["p50"]


def markdown(result: Dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {cpu_description(m)}, GPU {m.get('gpu') or 'none'}, "
             f"ONNX Runtime {m.get('onnxruntime')}, TensorRT {m.get('tensorrt') or 'not installed'}, "
             f"torch {m.get('torch') or 'not installed'}, power mode {m.get('power_mode') or 'n/a'}.",
             f"Batch 1, {result['warmup']} warm-up + {result['iterations']} timed runs per model, taken in "
             f"{result['rounds']} rounds in which the models take turns"
             + (f" (the line's run between rounds {result['rounds'] // 2} and {result['rounds'] // 2 + 1})"
                if "daemon" in result else "") + f", {result['when']}.", "",
             "| backend | precision | runs on | p50 ms | p90 ms | p99 ms | max ms | throughput /s | peak RSS MiB | "
             "x vs PyTorch | x vs ORT FP32 | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | failed: {r['error']} ||||||||||")
            continue
        lat = r["latency_ms"]
        acc = f"{r['accuracy'] * 100:.2f}% (n={r['accuracy_n']})" if "accuracy" in r else "-"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['runs_on']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                     f"{lat['max']:.2f} | {r['throughput_fps']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r.get('speedup_vs_torch', float('nan')):.2f} | {r.get('speedup_vs_ort_fp32', float('nan')):.2f} | {acc} |")
    if "daemon" in result:
        d = result["daemon"]
        lines += ["", f"Daemon on the simulated conveyor ({d['items']} items, {Path(d['model']).name}): "
                      f"accuracy vs known labels {d['accuracy'] * 100:.1f}%, overhead over bare inference "
                      f"(p50 capture->decision minus p50 inference) {d['overhead_ms_p50']:.2f} ms, ejection "
                      f"timing error |p99| {d['ejection_error_ms']['p99_abs']:.2f} ms, |max| "
                      f"{d['ejection_error_ms']['max_abs']:.2f} ms." +
                      (f" Line cost: capture->decision p50 {d['latency_ms']['capture_to_decision']['p50']:.2f} ms "
                       f"= {d['line_cost_ratio']:.2f}x the bare inference p50 of the same model "
                       f"({d['bare_inference_p50_ms']:.2f} ms)." if "line_cost_ratio" in d else ""), "",
                  "| stage | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for stage, p in d["latency_ms"].items():
            if p:
                lines.append(f"| {stage} | {p['p50']:.2f} | {p['p90']:.2f} | {p['p99']:.2f} | {p['max']:.2f} |")
    if "spinning" in result and "modes" in result["spinning"]:
        sp = result["spinning"]
        lines += ["", f"ONNX Runtime's threads between runs (`runtime.spinning`), {sp['cycles']} cycles each, "
                      f"taking turns: one run after {sp['idle_ms']:.0f} ms idle (a frame), one straight after it, "
                      f"and the process's CPU time per cycle (two runs and two idle gaps).", "",
                  "| runtime.spinning | after idle p50 ms | back to back p50 ms | CPU ms per cycle |", "|---|---|---|---|"]
        for mode, m in sp["modes"].items():
            lines.append(f"| {mode} | {m['after_idle_p50_ms']:.2f} | {m['back_to_back_p50_ms']:.2f} | "
                         f"{m['cpu_ms_per_cycle']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(result: Dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # a Jetson without matplotlib still gets JSON and markdown
    rows = [r for r in result["models"] if "latency_ms" in r]
    if not rows:
        return
    names = [f"{textwrap.fill(r['backend'], 14)}\n{r['precision']}" for r in rows]  # long names side by side
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4.5))
    ax.bar(x - 0.2, [r["latency_ms"]["p50"] for r in rows], 0.4, label="p50")
    ax.bar(x + 0.2, [r["latency_ms"]["p99"] for r in rows], 0.4, label="p99")
    ax.set_xticks(x, names)
    ax.set_ylabel("batch-1 latency (ms)")
    ax.set_title(f"Inference latency on {result['machine'].get('cpu')}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
