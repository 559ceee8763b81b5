"""Batch tests on labelled folders and zips: the scoring, hostile zips, and the CLI."""
import io
import json
import shutil
import zipfile

import pytest

from edge.cli import main
from edge.errors import DataError
from edge.vision import batch
from edge.vision.backends import open_backend
from edge.vision.images import read_image
from edge.vision.predict import Classifier
from tests.conftest import CLASSES


def zip_of(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buffer.getvalue()


def test_zip_names_never_become_paths(tmp_path, trained_run):
    _, run = trained_run
    jpeg = next((run.parent / "data" / "glass").glob("*.jpg")).read_bytes()
    data = zip_of([("../../glass/up.jpg", jpeg), ("/abs/glass/root.jpg", jpeg), ("a/b/glass/deep.jpg", jpeg),
                   ("metal\\win.jpg", jpeg), ("glass/notes.txt", b"x"), ("rocks/r.jpg", jpeg), ("loose.jpg", jpeg)])
    images, skipped = batch.zip_images(data, CLASSES, tmp_path / "job")
    assert sorted((i.label, i.name) for i in images) == [("glass", "glass/deep.jpg"), ("glass", "glass/root.jpg"),
                                                        ("glass", "glass/up.jpg"), ("metal", "metal/win.jpg")]
    assert {p.parent for p in (i.path for i in images)} == {tmp_path / "job"}     # generated names, one folder
    assert len(skipped) == 3 and not (tmp_path / "glass").exists()


def test_zip_bombs_and_non_zips_are_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "MAX_TOTAL_BYTES", 1 << 20)
    bomb = zip_of([(f"glass/{n}.jpg", b"\0" * (600 << 10)) for n in range(2)])   # 1.2 MiB unpacked, tiny packed
    assert len(bomb) < 20_000
    with pytest.raises(DataError, match="at most"):
        batch.zip_images(bomb, CLASSES, tmp_path / "job")
    with pytest.raises(DataError, match="not a zip"):
        batch.zip_images(b"PK\x03\x04 truncated", CLASSES, tmp_path / "job")
    with pytest.raises(DataError, match="no images of the model's classes"):
        batch.zip_images(zip_of([("rocks/r.jpg", b"x")]), CLASSES, tmp_path / "job")
    assert not any((tmp_path / "job").glob("*"))


def test_evaluate_folder_on_the_cli_needs_no_torch_and_matches_an_independent_count(tmp_path, trained_run, capsys):
    config, run = trained_run
    folder = tmp_path / "set"
    for label in CLASSES:
        shutil.copytree(run.parent / "data" / label, folder / label)
    (folder / "glass" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "rocks").mkdir()
    with open_backend(run / "model.onnx") as backend:
        classifier = Classifier(backend)
        correct = sum(classifier.classify(read_image(p))["class"] == p.parent.name
                      for p in folder.glob("*/*.jpg") if p.name != "broken.jpg")
    out = tmp_path / "out"
    assert main(["evaluate", "--config", str(config), "--folder", str(folder), "--model", str(run / "model.onnx"),
                 "--output", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())["report"]
    total = len(list(folder.glob("*/*.jpg"))) - 1
    assert (report["correct"], report["count"]) == (correct, total)
    assert [u["name"] for u in report["unreadable"]] == ["glass/broken.jpg"]
    assert sum(map(sum, report["confusion_matrix"])) == total and len(report["misclassified"]) == total - correct
    printed = capsys.readouterr().out
    assert f"({correct}/{total};" in printed and "confusion matrix" in printed and "skipped rocks/" in printed
    assert (out / "results.csv").read_text().count("\n") == total + 2        # header + every image, broken too


def test_one_batch_test_at_a_time_and_old_jobs_are_deleted(tmp_path, trained_run, monkeypatch):
    import contextlib
    import threading

    from edge.service import batch_test
    from edge.service.batch_test import BatchTests, BusyError

    _, run = trained_run
    release = threading.Event()

    @contextlib.contextmanager
    def slow_classifier():
        release.wait(10)
        yield type("C", (), {"classify": staticmethod(lambda image: {"class": "glass", "confidence": 1.0,
                                                                       "top": [{"class": "glass", "confidence": 1.0}]})})

    jpeg = next((run.parent / "data" / "glass").glob("*.jpg")).read_bytes()
    tests = BatchTests(slow_classifier, CLASSES, tmp_path / "batch", None)
    first = tests.start_zip(zip_of([("glass/a.jpg", jpeg)]))
    with pytest.raises(BusyError):
        tests.start_zip(zip_of([("glass/b.jpg", jpeg)]))
    with pytest.raises(PermissionError, match="web.batch_root"):
        tests.start_folder("anything")
    release.set()
    monkeypatch.setattr(batch_test, "KEEP_JOBS", 1)
    from tests.conftest import wait_for

    assert wait_for(lambda: tests.get(first.id).state == "done", timeout=10)
    assert tests.get(first.id).report["accuracy"] == 1.0 and first.folder.is_dir()
    second = tests.start_zip(zip_of([("glass/c.jpg", jpeg)]))
    assert not first.folder.exists() and second.folder.is_dir()            # only the newest job is kept
    with pytest.raises(KeyError):
        tests.get(first.id)
