import json
import shutil

from edge.cli import main
from edge.config import config_from_dict
from tests.conftest import CLASSES, write_config
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
