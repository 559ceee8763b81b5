"""Batch tests started from the operator page: one at a time, in a thread, with progress.

Each job uses its own model instance with one inference thread, so a batch test never
takes the sorting loop's buffers and leaves it the other cores. A job's zip images live in
its own folder under <run_dir>/batch/; the last few jobs are kept for the page, older ones
are deleted with their images.
"""
from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from edge.errors import DataError
from edge.vision.batch import LabelledImage, evaluate_images, folder_images, zip_images

log = logging.getLogger(__name__)
KEEP_JOBS = 3


class BatchJob:
    def __init__(self, job_id: int, source: str, folder: Path):
        self.id, self.source, self.folder = job_id, source, folder
        self.state, self.done, self.total = "running", 0, 0
        self.images: List[LabelledImage] = []
        self.skipped: List[str] = []
        self.report: Optional[Dict] = None
        self.error: Optional[str] = None
        self.started = time.time()

    def view(self) -> Dict:
        return {"id": self.id, "source": self.source, "state": self.state, "done": self.done, "total": self.total,
                "skipped": self.skipped[:50], "skipped_count": len(self.skipped), "error": self.error,
                "report": self.report}

    def image(self, index: int) -> Path:
        return self.images[index].path  # by index only: a client never names a path


class BatchTests:
    def __init__(self, open_classifier: Callable, classes, work_dir: Path, folder_root: Optional[Path]):
        self._open_classifier, self.classes = open_classifier, list(classes)
        self.work_dir, self.folder_root = work_dir, folder_root
        self._jobs: Dict[int, BatchJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start_zip(self, data: bytes) -> BatchJob:
        job = self._new("uploaded zip")
        try:
            images, skipped = zip_images(data, self.classes, job.folder)
        except DataError:
            self._drop(job)
            raise
        return self._run(job, images, skipped)

    def start_folder(self, name: str) -> BatchJob:
        if self.folder_root is None:
            raise PermissionError("server folders are off: set web.batch_root to the folder that holds test sets")
        root = self.folder_root.resolve()
        folder = (root / name).resolve()
        if folder != root and root not in folder.parents:
            raise PermissionError(f"{name!r} is outside web.batch_root")
        images, skipped = folder_images(folder, self.classes)
        return self._run(self._new(f"folder {folder.relative_to(root).as_posix() or '.'}"), images, skipped)

    def get(self, job_id: int) -> BatchJob:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no batch test {job_id}")
            return self._jobs[job_id]

    def _new(self, source: str) -> BatchJob:
        with self._lock:
            if any(job.state == "running" for job in self._jobs.values()):
                raise BusyError("a batch test is already running; wait for it to finish")
            job_id = next(self._ids)
            job = BatchJob(job_id, source, self.work_dir / f"job-{job_id}")
            self._jobs[job_id] = job
            for old in sorted(self._jobs)[:-KEEP_JOBS]:
                shutil.rmtree(self._jobs.pop(old).folder, ignore_errors=True)
        return job

    def _drop(self, job: BatchJob) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: BatchJob, images: List[LabelledImage], skipped: List[str]) -> BatchJob:
        job.images, job.skipped, job.total = images, skipped, len(images)
        threading.Thread(target=self._work, args=(job,), name=f"batch-{job.id}", daemon=True).start()
        return job

    def _work(self, job: BatchJob) -> None:
        try:
            with self._open_classifier() as classifier:
                job.report = evaluate_images(classifier.classify, job.images, self.classes,
                                             progress=lambda done, total: setattr(job, "done", done))
            job.state = "done"
        except Exception as exc:  # a broken model or disk: the page shows why; the line goes on
            log.exception("batch test %d failed", job.id)
            job.state, job.error = "failed", str(exc)


class BusyError(RuntimeError):
    pass
