import json
import shutil
from pathlib import Path

import cv2

from edge.cli import main
from edge.config import config_from_dict
from tests.conftest import CLASSES, draw_item, make_dataset, write_config
from edge.vision.dataset import Manifest
from train.prepare import prepare


def config(tmp_path, data):
    return config_from_dict({"classes": CLASSES, "run_dir": str(tmp_path / "out"),
                             "data": {"root": str(data), "seed": 3}})


def test_prepare_finds_corrupt_duplicates_and_conflicts(tmp_path, dataset):
    # A truncated JPEG, a byte-identical duplicate within a class, and the same bytes under two classes.
    good = (dataset / "glass" / "glass0.jpg").read_bytes()
    (dataset / "glass" / "glass_cut.jpg").write_bytes(good[: len(good) // 2])
    (dataset / "metal" / "not_an_image.png").write_bytes(b"hello")
    shutil.copy(dataset / "paper" / "paper1.jpg", dataset / "paper" / "paper1_copy.jpg")
    shutil.copy(dataset / "plastic" / "plastic2.jpg", dataset / "trash" / "trash_dup.jpg")
    (dataset / "unsorted").mkdir()

    report = prepare(config(tmp_path, dataset), dataset, tmp_path / "out", progress=False)
    manifest = Manifest.load(tmp_path / "out" / "manifest.json")
    by_path = {item.path: item for item in manifest.items}

    assert {c["path"] for c in report["corrupt"]} == {"glass/glass_cut.jpg", "metal/not_an_image.png"}
    assert "truncated JPEG" in next(c["reason"] for c in report["corrupt"] if c["path"] == "glass/glass_cut.jpg")
    assert report["duplicate_groups"] == [["paper/paper1.jpg", "paper/paper1_copy.jpg"]]
    assert by_path["paper/paper1.jpg"].split == by_path["paper/paper1_copy.jpg"].split
    conflict_files = {f["path"] for f in report["label_conflicts"][0]["files"]}
    assert conflict_files == {"plastic/plastic2.jpg", "trash/trash_dup.jpg"}
    assert not conflict_files & set(by_path)  # excluded from every split
    assert report["unknown_folders"] == ["unsorted"]
    assert len(manifest.items) == 6 * 8 + 1 - 1  # + the in-class duplicate, - the conflicting original
    for label in CLASSES:
        counts = report["counts"][label]
        assert counts["val"] >= 1 and counts["test"] >= 1 and counts["train"] >= 4, (label, counts)
    assert report["imbalance"]["paper"] == 1.0  # paper has the extra copy: the largest class


def test_split_is_stratified_deterministic_and_seeded(tmp_path, dataset):
    first = prepare(config(tmp_path, dataset), dataset, tmp_path / "a", progress=False)
    second = prepare(config(tmp_path, dataset), dataset, tmp_path / "b", progress=False)
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())["items"]
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())["items"]
    assert a == b and first["counts"] == second["counts"]
    other = config_from_dict({"classes": CLASSES, "data": {"seed": 99}})
    prepare(other, dataset, tmp_path / "c", progress=False)
    c = json.loads((tmp_path / "c" / "manifest.json").read_text())["items"]
    assert [i["split"] for i in a] != [i["split"] for i in c]
    assert all(len(i["sha256"]) == 64 for i in a)


def test_prepare_cli_errors_on_missing_class_folder(tmp_path, dataset, caplog):
    shutil.rmtree(dataset / "trash")
    path = write_config(tmp_path / "c.yaml", dataset, tmp_path / "out")
    assert main(["prepare", "--config", str(path), "-q"]) == 65
    assert "no folder for class(es) trash" in caplog.text


def _splits(out):
    return {i.sha256: i.split for i in Manifest.load(out / "manifest.json").items}


def test_adding_images_moves_no_existing_image_to_another_split(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=40)
    cfg = config(tmp_path, data)
    prepare(cfg, data, tmp_path / "before", progress=False)
    for index, label in enumerate(CLASSES):  # 20 new photos per class, as a review round adds
        for n in range(40, 60):
            cv2.imwrite(str(data / label / f"{label}{n}.jpg"), draw_item(index, index * 100 + n))
    prepare(cfg, data, tmp_path / "after", progress=False)
    before, after = _splits(tmp_path / "before"), _splits(tmp_path / "after")
    assert len(after) == len(before) + 120
    assert {sha: after[sha] for sha in before} == before
    new = [after[sha] for sha in after if sha not in before]
    assert {"train", "val", "test"} <= set(new)  # the new images spread over the splits too


def test_a_frozen_test_split_stays_exactly_the_test_split(tmp_path, dataset):
    path = write_config(tmp_path / "c.yaml", dataset, tmp_path / "run")
    assert main(["prepare", "--config", str(path), "-q", "--freeze-test"]) == 0
    frozen = {sha for sha, split in _splits(tmp_path / "run").items() if split == "test"}
    assert frozen and (tmp_path / "run" / "frozen_test.json").is_file()
    assert main(["prepare", "--config", str(path), "-q", "--freeze-test"]) == 65  # never overwritten
    for index, label in enumerate(CLASSES):
        for n in range(8, 30):
            cv2.imwrite(str(dataset / label / f"{label}{n}.jpg"), draw_item(index, index * 100 + n))
    gone = json.loads((tmp_path / "run" / "frozen_test.json").read_text())["items"][0]["path"]
    Path(gone).unlink()  # a frozen image gone from the folder is reported
    assert main(["prepare", "--config", str(path), "-q"]) == 0
    now = Manifest.load(tmp_path / "run" / "manifest.json")
    present = {i.sha256 for i in now.items}
    assert {i.sha256 for i in now.split("test")} == frozen & present and len(frozen - present) == 1
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["frozen_test"]["missing"] == [gone]
    assert now.frozen_test == str(tmp_path / "run" / "frozen_test.json")


def test_review_folders_join_with_who_filed_them_and_can_be_held_out(tmp_path, dataset):
    review = tmp_path / "review"
    (review / "metal").mkdir(parents=True)
    for n in range(6):
        cv2.imwrite(str(review / "metal" / f"review-{n}.jpg"), draw_item(2, 5000 + n))
    (review / "reviews.jsonl").write_text(
        json.dumps({"file": "metal/review-0.jpg", "label": "metal", "reviewer": "Ana", "reviewed_at": "2026-11-20T08:00:00",
                    "decision_id": 7}) + "\n" + '{"file": "metal/revi')  # the last line cut by a power loss
    cfg = config(tmp_path, dataset)
    report = prepare(cfg, dataset, tmp_path / "mixed", progress=False, review_roots=[review])
    mixed = Manifest.load(tmp_path / "mixed" / "manifest.json")
    reviewed = [i for i in mixed.items if mixed.roots[i.root].kind == "review"]
    assert len(reviewed) == 6 and report["reviewed_images"] == 6
    assert all(mixed.absolute(i).is_file() for i in reviewed)
    first = next(i for i in reviewed if i.path == "metal/review-0.jpg")
    assert first.reviewed == {"label": "metal", "reviewer": "Ana", "reviewed_at": "2026-11-20T08:00:00", "decision_id": 7}
    assert {i.split for i in reviewed} <= {"train", "val", "review"}
    base = {i.sha256: i.split for i in mixed.items if i.root == 0}
    prepare(cfg, dataset, tmp_path / "plain", progress=False)
    assert base == _splits(tmp_path / "plain")  # adding a review folder moves no dataset image

    prepare(cfg, dataset, tmp_path / "held", progress=False, review_roots=[review], hold_out_reviewed=True)
    held = Manifest.load(tmp_path / "held" / "manifest.json")
    assert sorted(i.path for i in held.split("review")) == sorted(i.path for i in reviewed)
