"""`scrapsort` command line: one entry point, one subcommand per job.

Subcommands import their module only when run, so the edge commands work on a Jetson
without torch, and a missing workstation package is a clear message, not a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from edge.config import Config, load_config
from edge.deps import require
from edge.errors import ConfigError, ScrapsortError

DEFAULT_CONFIG = "configs/default.yaml"
log = logging.getLogger("scrapsort")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if getattr(args, "run_dir", None):
        config = config.replace(run_dir=args.run_dir)
    return config


def cmd_prepare(args: argparse.Namespace) -> int:
    from edge.vision.dataset import Manifest

    prepare = require("train.prepare", "train")
    config = _config(args)
    data_root = Path(args.data or config.data.root)
    report = prepare.prepare(config, data_root, config.run_path, progress=not args.quiet,
                             review_roots=[Path(r) for r in args.review], hold_out_reviewed=args.hold_out_reviewed)
    print(prepare.format_report(report))
    manifest_path = config.run_path / "manifest.json"
    print(f"manifest: {manifest_path}")
    if args.freeze_test:
        frozen = prepare.frozen_test_path(config)
        count = prepare.freeze_test(Manifest.load(manifest_path), frozen)
        print(f"test split frozen: {count} images in {frozen}; later prepares keep exactly these as test"
              + ("" if config.data.frozen_test else
                 f" (other run dirs find it with data.frozen_test: {frozen})"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    train = require("train.train", "train")
    config = _config(args)
    if args.benchmark:
        measure = require("train.benchmark", "train")
        print(measure.table(measure.benchmark(config, progress=not args.quiet)))
        print(f"written: {config.run_path / 'train_benchmark.json'}")
        return 0
    if args.epochs:
        config = config.replace(train=config.train.replace(epochs=args.epochs))
    result = train.train(config, resume=args.resume, progress=not args.quiet,
                         init_from=Path(args.init_from) if args.init_from else None, final=args.final)
    if result["main_process"] and args.final:
        print(f"trained on all non-test images for {result['epochs']} epochs; checkpoint {result['checkpoint']}")
    elif result["main_process"]:  # under torchrun, one line, not one per process
        print(f"best validation accuracy {result['best_val_acc']:.4f} after {result['epochs']} epochs; "
              f"checkpoint {result['checkpoint']}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    cv = require("train.cv", "train")
    config = _config(args)
    if args.epochs:
        config = config.replace(train=config.train.replace(epochs=args.epochs))
    if args.table:
        print(cv.recipes_table(config.run_path))
        return 0
    if args.grouping:
        rows = cv.grouping_rule(config, args.grouping, progress=not args.quiet)
        print("| distance (bits of 64) | groups | images sharing a group | largest group | test images with a "
              "near-duplicate in train/val |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['distance_bits']} | {r['groups']} | {r['images_in_shared_groups']} | {r['largest_group']} | "
                  f"{r['test_images_with_a_near_duplicate_in_the_pool']} |")
        return 0
    name = args.name or Path(args.config).stem
    result = cv.cross_validate(config, name, args.folds, progress=not args.quiet, distance=args.distance,
                               only=args.fold, jobs=args.jobs)
    print(cv.table(result))
    print(f"written: {config.run_path / 'cv' / name / 'cv.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.folder:
        return _evaluate_folder(config, args)
    evaluate = require("train.evaluate", "train")
    if args.precisions:
        report = evaluate.compare_precisions(config, split=args.split, progress=not args.quiet)
        print(evaluate.precision_table(report))
        return 0
    metrics = evaluate.evaluate(config, model_path=args.model, split=args.split, progress=not args.quiet)
    low, high = metrics["accuracy_ci95"]
    print(f"{metrics['model']}: {metrics['split']} accuracy {metrics['accuracy']:.4f} "
          f"({metrics['correct']}/{metrics['count']}; 95% interval {low:.3f}-{high:.3f}), "
          f"weighted F1 {metrics['weighted']['f1']:.4f}")
    print(f"written: {', '.join(metrics['outputs'])}")
    return 0


def _evaluate_folder(config: Config, args: argparse.Namespace) -> int:
    """A batch test on the device: no torch, the runtime's model (or --model)."""
    from edge.vision.backends import open_backend
    from edge.vision.batch import evaluate_images, folder_images, results_csv, summary_text
    from edge.vision.predict import Classifier

    model = Path(args.model or config.runtime.model or config.run_path / "model.onnx")
    folder = Path(args.folder)
    out = Path(args.output) if args.output else config.run_path / f"batch-{folder.resolve().name}"
    with open_backend(model) as backend:
        images, skipped = folder_images(folder, list(backend.info.classes))
        for line in skipped:
            print(f"skipped {line}")
        report = evaluate_images(Classifier(backend).classify, images, list(backend.info.classes))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"model": str(model), "folder": str(folder), "skipped": skipped,
                                                  "report": report}, indent=1))
    (out / "results.csv").write_text(results_csv(report))
    print(f"{model} on {folder}: {summary_text(report)}")
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from edge.service.audit import export_csv

    config = _config(args)
    db = Path(args.db or config.audit.db or config.run_path / "audit.db")
    since, until = parse_time(args.since, 0.0), parse_time(args.until, time.time() + 1)
    if not db.is_file():
        raise ConfigError(f"{db}: no audit log here; pass --db or the line's --config")
    rows = 0
    with (open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout)) as out:
        for chunk in export_csv(db, since, until):
            out.write(chunk)
            rows += chunk.count("\n")
    print(f"{rows - 1} decisions exported" + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def parse_time(text: Optional[str], default: float) -> float:
    """'2026-11-26T08:00' (local time, or with an offset), '2026-11-26', or Unix seconds."""
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}: use 2026-11-26T08:00 (local), an ISO time with an "
                          "offset, or Unix seconds") from None


def cmd_export(args: argparse.Namespace) -> int:
    export = require("train.export", "train")
    config = _config(args)
    result = export.export(config, checkpoint=args.checkpoint, dynamic_batch=args.dynamic_batch)
    print(f"ONNX {result['onnx']} (opset {result['opset']}): max |ONNX Runtime - PyTorch| = "
          f"{result['max_abs_diff']:.2e} over {result['parity_images']} images")
    print(f"TorchScript {result['torchscript']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    calibrate = require("calibration.calibrate", "train")
    config = _config(args)
    report = calibrate.calibrate(config, model_path=args.model, set_path=args.set, progress=not args.quiet)
    print(f"FP16: {report['fp16']}")
    chosen = next(v for v in report["variants"] if v["name"] == report["chosen"])
    cpu = report["int8_cpu"]
    print(f"selection set: {report['selection_images']} non-test images the calibration did not use; "
          f"FP32 accuracy {report['fp32_accuracy']:.4f}")
    print(f"INT8: {report['int8']} ({report['chosen']}: agreement with FP32 {chosen['agreement']:.4f}, "
          f"accuracy {chosen['accuracy']:.4f})")
    if not report["chosen_good_enough"]:
        print(f"  no variant met calibration.min_agreement {config.calibration.min_agreement} and max_drop "
              f"{config.calibration.max_drop}: raise calibration.max_float_layers or calibration.images")
    print(f"INT8 for ONNX Runtime on x86: {cpu['path']} (agreement with FP32 {cpu['agreement']:.4f}, "
          f"accuracy {cpu['accuracy']:.4f})")
    print(f"TensorRT calibration cache: {report['trt_cache']} ({report['trt_cache_tensors']} tensors)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from jetson.build import build, precision_for_runtime

    config = _config(args)
    precision = args.precision or precision_for_runtime(config)
    if precision is None:
        print(f"runtime.model is ONNX ({config.runtime.model or 'default'}): no TensorRT engine to build")
        return 0
    output = args.output or (config.runtime.model if not args.precision else None)
    engine = build(config, precision, onnx=args.onnx, out=output, if_needed=args.if_needed)
    print(f"engine {engine} (+ {engine.name}.json metadata)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge.service.run import run_line

    config = _config(args)
    if args.model:
        config = config.replace(runtime=config.runtime.replace(model=args.model))
    run_line(config)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.service.bench import bench, markdown

    config = _config(args)
    if args.belt:
        from edge.service.belt_bench import belt_bench, markdown as belt_markdown

        print(belt_markdown(belt_bench(config, items=args.belt_items)))
        print(f"written: {config.run_path / 'bench'}/belt.json, belt.md")
        return 0
    result = bench(config, iterations=args.iterations, warmup=args.warmup, accuracy=not args.no_accuracy,
                   daemon_items=args.daemon_items)
    print(markdown(result))
    print(f"written: {config.run_path / 'bench'}/bench.json, bench.md, bench.png")
    return 0


def cmd_outputs_off(args: argparse.Namespace) -> int:
    from edge.service.run import outputs_off

    return outputs_off(_config(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from jetson.doctor import apply_performance, report

    print(report())
    if args.apply:
        print("\n".join(apply_performance()))
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from edge.config import schema_text

    if args.output:
        Path(args.output).write_text(schema_text())
        print(f"written: {args.output}")
    else:
        print(schema_text(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{config.source_file}: valid ({len(config.classes)} classes, {len(config.decision.ejectors)} ejectors, "
          f"actuators: {', '.join(a.type for a in config.actuators)})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Model A (the line's) against model B (the candidate) on the frozen test set and the
    reviewed items of the manifest (B's run, else A's, else the config's run)."""
    from edge.vision.compare import compare
    from edge.vision.dataset import MANIFEST_NAME, Manifest

    config = _config(args)
    runs = [Path(r) for r in (args.b, args.a)] + [config.run_path]
    manifest = next((r / MANIFEST_NAME for r in runs if (r / MANIFEST_NAME).is_file()), runs[-1] / MANIFEST_NAME)
    out = Path(args.output) if args.output else (Path(args.b) if Path(args.b).is_dir() else config.run_path) / "compare"
    result = compare(Path(args.a), Path(args.b), Manifest.load(manifest), out,
                     Path(args.test) if args.test else None, args.alpha)
    for name, s in result["slices"].items():
        print(f"{name}: {s['images']} images; A {100 * s['accuracy']['a']:.2f} %, B {100 * s['accuracy']['b']:.2f} %; "
              f"only A right {s['only_a_right']}, only B right {s['only_b_right']}, McNemar p = {s['mcnemar_p']:.4f}")
    rec = result["recommendation"]
    print(f"{rec['verdict'].upper()}: {rec['reason']}")
    print(f"report: {out / 'compare.md'} and {out / 'compare.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from edge.vision.predict import predict_paths

    records = predict_paths(args.model, args.images, top=args.top)
    failures = 0
    for rec in records:
        if "error" in rec:
            failures += 1
            print(f"{rec['path']}: ERROR {rec['error']}")
            continue
        top = ", ".join(f"{t['class']} {t['confidence']:.3f}" for t in rec["top"])
        print(f"{rec['path']}: {rec['class']} ({rec['confidence']:.3f})  top-{args.top}: {top}")
    if args.json:
        with open(args.json, "w") as out:
            out.writelines(json.dumps(rec) + "\n" for rec in records)
    if failures:
        print(f"{failures} of {len(records)} file(s) could not be classified", file=sys.stderr)
    return 2 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scrapsort", description="Scrap sorting: train, export and run.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if config:
            p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
            p.add_argument("--run-dir", help="where artefacts go (default: the config's run_dir)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    p = command("prepare", cmd_prepare, "check a class-folder dataset and write the split manifest")
    p.add_argument("--data", help="class-folder tree (default: the config's data.root)")
    p.add_argument("--review", action="append", default=[], metavar="DIR",
                   help="a review folder the operator page wrote (<class>/<image>); repeatable")
    p.add_argument("--hold-out-reviewed", action="store_true",
                   help="all reviewed images form the `review` split (evaluation only), none trains")
    p.add_argument("--freeze-test", action="store_true",
                   help="freeze this test split (data.frozen_test, default <run_dir>/frozen_test.json)")
    p = command("train", cmd_train, "fine-tune the backbone on the train split")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    p.add_argument("--benchmark", action="store_true",
                   help="measure images/s of the input pipeline and of a training step in each speed-up variant "
                        "on this machine, and the epoch time; trains nothing")
    p.add_argument("--final", action="store_true",
                   help="train on train + val (every non-test image) for train.epochs with no validation "
                        "(the epochs `scrapsort cv` chose; needs train.schedule: cosine); the last epoch is kept")
    p.add_argument("--init-from", metavar="RUN_OR_PT",
                   help="start from a trained model (its run dir or best.pt) instead of ImageNet weights; "
                        "classes matched by name, a new class gets a new head row")
    p = command("cv", cmd_cv, "k-fold cross-validation of the config's recipe on the non-test images, "
                              "folds grouped by near-duplicate photos")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, help="override train.epochs (every fold runs them all)")
    p.add_argument("--name", help="the recipe's name in <run_dir>/cv/ (default: the config file's name)")
    p.add_argument("--fold", type=int, action="append", metavar="N",
                   help="train only fold N (repeatable; e.g. one fold per machine on a shared run dir); "
                        "the summary covers the folds finished")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N folds at once, each in its own process (a GPU that one fold leaves mostly idle; "
                        "on a CPU the processes split its cores); logs in <fold>/train.log")
    p.add_argument("--distance", type=int, default=8, help="perceptual-hash bits within which photos share a fold")
    p.add_argument("--table", action="store_true",
                   help="only print every recipe cross-validated in <run_dir>/cv as a table, best mean first; "
                        "trains nothing")
    p.add_argument("--grouping", type=int, nargs="+", metavar="BITS",
                   help="only report what these distances would group (the rule's measurement); trains nothing")
    p = command("evaluate", cmd_evaluate, "metrics, confusion matrix and curves on a split, or on a folder")
    p.add_argument("--model", help="checkpoint (.pt), TorchScript (.ts) or ONNX (.onnx); default best.pt "
                                   "(with --folder: the runtime's model)")
    p.add_argument("--folder", help="batch test on <folder>/<class>/<image> with the runtime (no torch needed)")
    p.add_argument("--output", help="with --folder: where results.json/.csv go (default <run_dir>/batch-<name>)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--precisions", action="store_true",
                   help="compare model.onnx / model_fp16.onnx / model_int8.onnx (JSON + markdown table)")
    p = command("export", cmd_export, "export the best checkpoint to ONNX (+ TorchScript), parity-checked")
    p.add_argument("--checkpoint", help="default: the run's best.pt")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis instead of batch 1")
    p = command("calibrate", cmd_calibrate, "FP16 + INT8 Q/DQ ONNX and a TensorRT calibration cache")
    p.add_argument("--model", help="FP32 ONNX (default: the run's model.onnx)")
    p.add_argument("--set", help="reuse a saved calibration_set.json instead of drawing a new one")
    p = command("build", cmd_build, "build a TensorRT engine for this device (needs TensorRT)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="default: the engine named by runtime.model (nothing to do for an ONNX model)")
    p.add_argument("--onnx", help="ONNX to build from (default: the run's model for that precision)")
    p.add_argument("--output", help="engine path (default: <run_dir>/model_<precision>.engine)")
    p.add_argument("--if-needed", action="store_true",
                   help="only build when the engine is missing or does not match this TensorRT/GPU/ONNX")
    p = command("run", cmd_run, "run the sorting line (camera loop, decisions, ejection) until stopped")
    p.add_argument("--model", help="override runtime.model (.onnx or .engine)")
    p = command("bench", cmd_bench, "latency + accuracy per backend and precision, and the daemon's stages")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-accuracy", action="store_true", help="latency only (no test-split pass)")
    p.add_argument("--daemon-items", type=int, default=40, help="items for the simulated line (0: skip)")
    p.add_argument("--belt", action="store_true",
                   help="instead: the line at three belt densities against the simulator's truth (real time)")
    p.add_argument("--belt-items", type=int, default=200, help="items per density with --belt")
    command("outputs-off", cmd_outputs_off, "switch every configured output off (no daemon needed)")
    p = command("doctor", cmd_doctor, "report JetPack/TensorRT/CUDA, power mode, cameras and GPIO", config=False)
    p.add_argument("--apply", action="store_true", help="also set max power mode and lock clocks (root)")
    p = command("config", None, "check a line config, or write the JSON Schema editors use to check and complete one",
                config=False)
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    q = config_sub.add_parser("schema", help="print (or --output) the JSON Schema of the config")
    q.set_defaults(func=cmd_config_schema)
    q.add_argument("--output", help="write to this file (configs/scrapsort.schema.json is shipped)")
    q = config_sub.add_parser("check", help="validate a config file; exit 78 with the problem if it is broken")
    q.set_defaults(func=cmd_config_check)
    q.add_argument("config", help="YAML config")
    p = command("audit", None, "read the audit log", config=False)
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = audit_sub.add_parser("export", help="decisions in a time range as CSV (streamed)")
    q.set_defaults(func=cmd_audit_export)
    q.add_argument("--config", default=DEFAULT_CONFIG, help="the line's config (its audit.db)")
    q.add_argument("--run-dir", help="override the config's run_dir")
    q.add_argument("--db", help="an audit.db to read instead of the config's")
    q.add_argument("--since", help="from this time (2026-11-26T08:00 local, ISO with offset, or Unix seconds)")
    q.add_argument("--until", help="up to this time, excluded (default: now)")
    q.add_argument("--csv", action="store_true", help="CSV (the only format; the default)")
    q.add_argument("--output", help="file to write (default: standard output)")
    p = command("compare", cmd_compare, "is model B better than model A? Paired test on the frozen test set "
                                        "and the reviewed items; writes a promotion recommendation")
    p.add_argument("a", help="the line's model: a run dir (its model.onnx) or a model file")
    p.add_argument("b", help="the candidate: a run dir or a model file")
    p.add_argument("--test", help="frozen test set file (default: the manifest's data.frozen_test, else its test split)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--output", help="where compare.json/.md go (default <B run>/compare)")
    p = command("predict", cmd_predict, "classify images or folders", config=False)
    p.add_argument("model", help="model.onnx, best.pt or model.ts")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top", type=int, default=3, help="how many classes to list (default 3)")
    p.add_argument("--json", help="write one JSON record per image to this file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ScrapsortError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a fault, not a usage error: logged with its traceback, distinct exit code
        log.exception("unexpected failure")
        return 70  # EX_SOFTWARE: systemd restarts the service


if __name__ == "__main__":
    sys.exit(main())
