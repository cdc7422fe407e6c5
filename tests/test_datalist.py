"""Datalist: patient-grouped stratified folds, the checks that refuse bad datalists, and the run splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bundle.data.datalist import (
    assign_folds,
    burden_group,
    check_entries,
    lesions_per_image,
    load_split,
    repeated_lesion_ids,
    write_datalist,
)
from bundle.errors import ProblemsError


def make_entries(patients: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    entries = []
    for p in range(patients):
        metastatic = rng.random() < 0.45
        for k in range(rng.randint(1, 9)):
            label = int(rng.random() < (0.8 if metastatic else 0.2))
            entries.append(
                {
                    "image": f"images/P{p:03d}.nii.gz",
                    "mask": f"masks/P{p:03d}_L{k:02d}.nii.gz",
                    "label": label,
                    "patient_id": f"P{p:03d}",
                    "lesion_id": f"P{p:03d}_L{k:02d}",
                }
            )
    return entries


def write_files(root: Path, entries: list[dict]) -> None:
    for e in entries:
        for key in ("image", "mask"):
            (root / e[key]).parent.mkdir(parents=True, exist_ok=True)
            (root / e[key]).write_bytes(b"x")


def test_assign_folds_groups_patients_and_stratifies():
    entries = assign_folds(make_entries(), num_folds=5, seed=0)
    folds_of = {}
    for e in entries:
        folds_of.setdefault(e["patient_id"], set()).add(e["fold"])
    assert all(len(f) == 1 for f in folds_of.values())
    assert {e["fold"] for e in entries} == set(range(5))
    overall = np.mean([e["label"] for e in entries])
    for fold in range(5):
        share = np.mean([e["label"] for e in entries if e["fold"] == fold])
        assert abs(share - overall) < 0.12, (fold, share, overall)
    assert check_entries(entries, num_folds=5) == []
    assert assign_folds(make_entries(), 5, 0) == entries  # deterministic
    assert assign_folds(make_entries(), 5, 1) != entries


def test_assign_folds_needs_enough_patients():
    with pytest.raises(ProblemsError, match="cannot fill 5 folds"):
        assign_folds(make_entries(patients=3), num_folds=5)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda es: es[0].update(fold=(es[0]["fold"] + 1) % 5), "is in folds"),
        (lambda es: es[1].update(lesion_id=es[0]["lesion_id"]), "appears 2 times"),
        (lambda es: es[0].update(label=2), "label 2 is not 0"),
        (lambda es: es[0].update(fold=7), "fold 7 is out of range 0..4"),
        (lambda es: es[0].update(fold="1"), "is not a non-negative integer"),
        (lambda es: es[0].pop("patient_id"), "missing key(s) patient_id"),
    ],
)
def test_check_entries_names_the_problem(mutate, message):
    entries = assign_folds(make_entries(), 5, 0)
    mutate(entries)
    problems = check_entries(entries, num_folds=5)
    assert any(message in p for p in problems), problems


def test_check_entries_requires_both_classes_per_fold():
    entries = assign_folds(make_entries(), 5, 0)
    for e in entries:
        if e["fold"] == 2:
            e["label"] = 1
    assert any("fold 2 has no benign lesion" in p for p in check_entries(entries, 5))


def test_check_entries_lists_every_problem():
    entries = assign_folds(make_entries(), 5, 0)
    entries[0]["label"] = 5
    entries[3]["fold"] = -1
    assert len(check_entries(entries, 5)) >= 2


def test_load_split_parts_are_disjoint_by_patient(tmp_path):
    entries = assign_folds(make_entries(), 5, 0)
    write_files(tmp_path, entries)
    write_datalist(tmp_path / "datalist.json", {"num_folds": 5, "training": entries})
    parts = {p: load_split(tmp_path / "datalist.json", tmp_path, fold=1, part=p) for p in ("train", "val", "test")}
    patients = {p: {e["patient_id"] for e in v} for p, v in parts.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(v) for v in parts.values()) == len(entries)
    assert {e["fold"] for e in parts["test"]} == {1}
    assert 0.05 < len(patients["val"]) / (len(patients["val"]) + len(patients["train"])) < 0.2
    assert {e["label"] for e in parts["val"]} == {0, 1}
    first = parts["test"][0]
    assert first["image"] == str(tmp_path / f"images/{first['patient_id']}.nii.gz")
    same_scan = [e for e in entries if e["patient_id"] == first["patient_id"]]
    assert first["lesions_in_image"] == len(same_scan)
    assert first["tumor_type"] == "unknown"
    everything = load_split(tmp_path / "datalist.json", tmp_path, part="all")
    assert len(everything) == len(entries)


def test_load_split_refuses_missing_files_and_names_them(tmp_path):
    entries = assign_folds(make_entries(patients=20), 5, 0)
    write_files(tmp_path, entries)
    (tmp_path / entries[0]["mask"]).unlink()
    write_datalist(tmp_path / "datalist.json", {"training": entries})
    with pytest.raises(ProblemsError, match="mask file not found") as err:
        load_split(tmp_path / "datalist.json", tmp_path, fold=entries[0]["fold"], part="all")
    assert entries[0]["lesion_id"] in str(err.value)
    assert str(tmp_path / "datalist.json") in str(err.value)


def test_load_split_refuses_patient_in_two_folds(tmp_path):
    entries = assign_folds(make_entries(patients=20), 5, 0)
    write_files(tmp_path, entries)
    entries[0]["fold"] = (entries[0]["fold"] + 1) % 5
    write_datalist(tmp_path / "datalist.json", {"training": entries})
    with pytest.raises(ProblemsError, match=f"patient_id '{entries[0]['patient_id']}' is in folds"):
        load_split(tmp_path / "datalist.json", tmp_path, fold=0, part="train")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ProblemsError, match="file not found"):
        load_split(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [')
    with pytest.raises(ProblemsError, match="not valid JSON") as err:
        load_split(bad, tmp_path)
    assert str(bad) in str(err.value)
    bad.write_text(json.dumps({"entries": []}))
    with pytest.raises(ProblemsError, match='"training" list'):
        load_split(bad, tmp_path)


@pytest.mark.parametrize(("n", "group"), [(1, "few"), (3, "few"), (4, "medium"), (6, "medium"), (7, "extensive")])
def test_burden_group(n: int, group: str) -> None:
    assert burden_group(n) == group


def test_burden_group_rejects_zero() -> None:
    with pytest.raises(ValueError):
        burden_group(0)


def test_lesions_per_image_counts_a_scan_given_as_two_files_as_one_image():
    entries = [{"image": "a.dcm"}, {"image": "a.dcm"}, {"image": ["p_ant.dcm", "p_post.dcm"]}, {"image": None}]
    entries.append({"image": ["p_ant.dcm", "p_post.dcm"]})
    assert lesions_per_image(entries) == {"a.dcm": 2, "p_ant.dcm|p_post.dcm": 2}


def test_repeated_lesion_ids():
    assert repeated_lesion_ids(["L1", "L2", "L1", 3, "3", "L1"]) == {"L1": 3, "3": 2}
    assert repeated_lesion_ids(["L1", "L2"]) == {}


def test_lesions_in_image_given_zero_is_refused_and_read_alike():
    """A given lesions_in_image is used as given by every reader of the datalist (0 included), and validation
    refuses a 0; an absent one is counted on the image."""
    from bundle.data.datalist import entry_problems, lesions_in_image_of, lesions_per_image, normalise_entries

    entries = [
        {"image": "a.nii.gz", "mask": "m1.nii.gz", "label": 1, "patient_id": "p", "lesion_id": "l1", "fold": 0,
         "lesions_in_image": 0},
        {"image": "a.nii.gz", "mask": "m2.nii.gz", "label": 0, "patient_id": "p", "lesion_id": "l2", "fold": 0},
    ]  # fmt: skip
    per_image = lesions_per_image(entries)
    assert [lesions_in_image_of(e, per_image) for e in entries] == [0, 2]
    assert [e["lesions_in_image"] for e in normalise_entries(entries, "/data")] == [0, 2]
    problems = entry_problems(entries)
    assert any("lesions_in_image 0 is not a positive integer" in str(p) for p in problems)
    entries[0]["lesions_in_image"] = 3
    assert not [p for p in entry_problems(entries) if "lesions_in_image" in str(p)]
