"""Box-labelled sources (Pascal VOC, COCO): the real BCCD set against an independent parse, and bad annotations.

The reference below reads the XML with ``xml.etree`` and applies the documented
coordinate convention (VOC pixel indices are 1-based and inclusive: ``xmin - 1``,
``ymin - 1``), so a parser bug or a lost/duplicated box shows up as a mismatch.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from image_cases import encode, jpeg_with_orientation, smooth
from PIL import Image

from sparkvision.io import (
    DETECTION_SCHEMA,
    OBJECTS_TYPE,
    compute_stats,
    load_images,
    read_dataset,
    write_dataset,
)
from sparkvision.io.annotations import (
    Annotation,
    Box,
    check_size,
    coco_image_candidates,
    fit_boxes,
    parse_coco,
    parse_voc,
)
from sparkvision.io.dataset import read_manifest
from sparkvision.io.detection import VocSource, list_coco, list_voc, voc_source
from sparkvision.io.errors import ErrorKind, ImageError, error_kind
from sparkvision.io.load import resolve_kind

BCCD = SHARED_DATA / "bccd"
BCCD_CLASSES = {"RBC": 4155, "WBC": 372, "Platelets": 361}
SPLITS = {"train": 205, "val": 87, "trainval": 292, "test": 72}


@pytest.fixture(scope="module")
def bccd() -> Path:
    if not (BCCD / "Annotations").is_dir():
        pytest.fail(f"the BCCD VOC set is expected at {BCCD} (see ../shared/data/README.md)")
    return BCCD


def reference(xml_file: Path) -> tuple[int, int, list[tuple]]:
    """Size and boxes of one VOC file, parsed independently of sparkvision."""
    root = ET.parse(xml_file).getroot()
    size = root.find("size")
    boxes = []
    for obj in root.findall("object"):
        b = obj.find("bndbox")
        x0, y0, x1, y1 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((obj.find("name").text, x0 - 1, y0 - 1, x1, y1, obj.find("difficult").text == "1"))
    return int(size.find("width").text), int(size.find("height").text), boxes


def _tuples(objects) -> list[tuple]:
    return [(o["label"], o["xmin"], o["ymin"], o["xmax"], o["ymax"], o["difficult"]) for o in objects]


@pytest.fixture(scope="module")
def bccd_reference(bccd) -> dict[str, tuple[int, int, list[tuple]]]:
    return {p.stem: reference(p) for p in sorted((bccd / "Annotations").glob("*.xml"))}


def _empty(boxes) -> bool:
    return any(x1 - x0 <= 1 or y1 - y0 <= 1 for _, x0, y0, x1, y1, _ in boxes)  # xmax == xmin as written


# ------------------------------------------------------------------ no Spark


def test_every_bccd_file_parses_to_the_independent_reference(bccd, bccd_reference):
    counts = Counter(box[0] for _, _, boxes in bccd_reference.values() for box in boxes)
    assert len(bccd_reference) == 364 and counts == BCCD_CLASSES and sum(counts.values()) == 4888
    empty = []
    for stem, (width, height, boxes) in bccd_reference.items():
        data = (bccd / "Annotations" / f"{stem}.xml").read_bytes()
        if _empty(boxes):
            with pytest.raises(ImageError) as exc:
                parse_voc(data)
            assert exc.value.kind == ErrorKind.EMPTY_BOX
            empty.append(stem)
            continue
        ann = parse_voc(data)
        assert (ann.width, ann.height) == (width, height) == (640, 480)
        assert [(b.label, b.xmin, b.ymin, b.xmax, b.ymax, b.difficult) for b in ann.objects] == boxes
        fitted, clipped = fit_boxes(ann.objects, width, height, classes=BCCD_CLASSES)
        assert fitted == ann.objects and clipped == 0  # BCCD boxes all lie inside, 1 <= x <= 640
    # Two BCCD boxes are single points (xmin == xmax, ymin == ymax): their images are errors.
    assert empty == ["BloodImage_00338", "BloodImage_00343"]


def test_image_set_lists_select_their_ids(bccd):
    assert voc_source(str(bccd)) == VocSource(str(bccd)) and voc_source(str(bccd / "JPEGImages")) is None
    whole = list_voc(VocSource(str(bccd)), _ingest())
    assert len(whole) == 364 and whole["error"].isna().all() and whole["xml_path"].notna().all()
    listed = {}
    for split, n in SPLITS.items():
        path = bccd / "ImageSets" / "Main" / f"{split}.txt"
        source = voc_source(str(path))
        assert source == VocSource(str(bccd), str(path)) == voc_source("file:" + str(path))
        tasks = list_voc(source, _ingest())
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        assert len(tasks) == n == len(ids) and tasks["error"].isna().all()
        assert [Path(p).stem for p in tasks["path"]] == ids
        listed[split] = set(ids)
    assert listed["train"] | listed["val"] == listed["trainval"] and not listed["train"] & listed["val"]
    assert not listed["trainval"] & listed["test"]


def _ingest():
    from sparkvision.config import IngestSettings

    return IngestSettings()


def _voc(objects, size=(64, 48), root="annotation", extra="") -> bytes:
    body = "".join(
        f"<object><name>{name}</name><difficult>{int(d)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1, d in objects
    )
    dims = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<{root}><filename>x.jpg</filename>{dims}{extra}{body}</{root}>".encode()


@pytest.mark.parametrize(
    ("data", "kind", "words"),
    [
        (b"<annotation><object><name>a</name>", "bad_annotation", "cannot be parsed"),
        (b"", "bad_annotation", "cannot be parsed"),
        (_voc([("a", 1, 2, 3, 4, 0)], root="doc"), "bad_annotation", "<doc>"),
        (_voc([("a", "abc", 2, 3, 4, 0)]), "bad_annotation", "not a number"),
        (_voc([("a", "nan", 2, 3, 4, 0)]), "bad_annotation", "not finite"),
        (_voc([("a", "", 2, 3, 4, 0)]), "bad_annotation", "missing"),
        (_voc([("", 1, 2, 3, 4, 0)]), "bad_annotation", "no <name>"),
        (b"<annotation><object><name>a</name></object></annotation>", "bad_annotation", "no <bndbox>"),
        (_voc([("a", 1, 2, 3, 4, 0)], size=("x", 4)), "bad_annotation", "<width>"),
        (b'<!DOCTYPE a [<!ENTITY e "x">]><annotation/>', "bad_annotation", "entity"),
        (_voc([("a", 5, 2, 5, 9, 0)]), "empty_box", "xmin 5 xmax 5"),
        (_voc([("a", 5, 9, 8, 2, 0)]), "empty_box", "ymin 9 ymax 2"),
    ],
)
def test_bad_voc_files_raise_their_row_error(data, kind, words):
    with pytest.raises(ImageError) as exc:
        parse_voc(data)
    assert exc.value.kind == kind and words in exc.value.message


def test_voc_fields_difficult_and_missing_size():
    ann = parse_voc(_voc([("cat", 1, 1, 64, 48, 1), ("dog", "10.5", 3, 20, 9, 0)], size=None))
    assert (ann.width, ann.height) == (None, None)
    assert ann.objects == [Box("cat", 0, 0, 64, 48, True), Box("dog", 9.5, 2, 20, 9, False)]
    assert parse_voc(_voc([], size=(0, 0))).objects == [] and parse_voc(_voc([], size=(0, 0))).width is None


def test_boxes_slightly_outside_are_clipped_and_counted_far_outside_are_errors():
    w, h = 200, 100  # tolerance: 4 px across (2% of 200), 2 px down (the 2 px floor)
    boxes = [Box("a", -3.5, 10, 50, 60), Box("b", 10, 10, 203, 101.5), Box("c", 20, 20, 40, 40, True)]
    fitted, clipped = fit_boxes(boxes, w, h)
    assert clipped == 2
    assert fitted == [Box("a", 0, 10, 50, 60), Box("b", 10, 10, 200, 100), Box("c", 20, 20, 40, 40, True)]
    for box, words in [
        (Box("a", -4.5, 10, 50, 60), "4.5 px outside"),
        (Box("a", 10, 10, 50, 102.5), "2.5 px outside"),
        (Box("a", 300, 10, 350, 60), "outside the 200x100"),
        (Box("a", 201, 10, 203, 60), "lies outside"),  # within the tolerance, yet nothing left inside
        (Box("a", 10, -2, 50, 0), "lies outside"),
    ]:
        with pytest.raises(ImageError) as exc:
            fit_boxes([Box("ok", 1, 1, 5, 5), box], w, h)
        assert exc.value.kind == ErrorKind.BOX_OUTSIDE and words in exc.value.message and "object 2" in exc.value.message
    with pytest.raises(ImageError) as exc:
        fit_boxes([Box("ok", 1, 1, 5, 5), Box("zebra", 1, 1, 5, 5)], w, h, classes=["ok", "cat"])
    assert exc.value.kind == ErrorKind.UNKNOWN_CLASS and "'zebra'" in exc.value.message
    assert fit_boxes([Box("a", -50, 0, 5, 5)], None, None) == ([Box("a", -50, 0, 5, 5)], 0)  # no size known


def test_annotation_size_must_be_the_displayed_size():
    check_size(Annotation([], 48, 32), 48, 32)
    check_size(Annotation([], None, None), 48, 32)
    with pytest.raises(ImageError, match="displays as 48x32 .EXIF orientation"):
        check_size(Annotation([], 32, 48), 48, 32)
    with pytest.raises(ImageError, match="for a 640x480 image, but the image is 48x32"):
        check_size(Annotation([], 640, 480), 48, 32)


def _coco_doc() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "c.jpg"},
            {"id": 4, "file_name": "d.jpg"},
            {"id": 5, "file_name": "e.jpg"},
            {"id": 5, "file_name": "e2.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1.5, 2, 10, 20], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},
            {"id": 13, "image_id": 3, "category_id": 1, "bbox": [1, 1, 0, 5]},
            {"id": 14, "image_id": 4, "category_id": 1, "bbox": [1, 1, "x", 5]},
            {"id": 15, "image_id": 777, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 16, "image_id": 777, "category_id": 1, "bbox": [1, 1, 5, 5]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def test_coco_groups_per_image_and_names_missing_ids():
    coco = parse_coco(json.dumps(_coco_doc()))
    assert coco.categories == {1: "cat", 2: "dog"} and coco.orphans == {777: 2}
    a, b, c, d, e, e2 = coco.images
    assert a.error is None and (a.annotation.width, a.annotation.height) == (64, 48)
    assert a.annotation.objects == [Box("cat", 1.5, 2, 11.5, 22, False), Box("dog", 0, 0, 64, 48, True)]
    assert error_kind(b.error) == "missing_id" and "category id 99" in b.error
    assert error_kind(c.error) == "empty_box" and error_kind(d.error) == "bad_annotation"
    assert e.error is None and e.annotation.objects == [] and (e.annotation.width, e.annotation.height) == (None, None)
    assert error_kind(e2.error) == "bad_annotation" and "listed twice" in e2.error
    for doc in ({"images": []}, [1, 2], {"images": [], "annotations": [], "categories": [{"id": 1}]}):
        with pytest.raises(ValueError, match="COCO"):
            parse_coco(json.dumps(doc))


def test_coco_images_are_found_beside_the_json_in_images_or_one_folder_up(tmp_path):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    assert coco_image_candidates(str(ann_dir / "instances_val2017.json"), "a.jpg") == [
        str(ann_dir / "a.jpg"), str(ann_dir / "images" / "a.jpg"), str(tmp_path / "a.jpg"),
        str(tmp_path / "images" / "a.jpg"), str(tmp_path / "val2017" / "a.jpg"),
    ]
    (tmp_path / "val2017").mkdir()
    jpeg = encode(Image.fromarray(smooth(48, 64)), "JPEG")
    (tmp_path / "val2017" / "a.jpg").write_bytes(jpeg)
    (ann_dir / "images").mkdir()
    (ann_dir / "images" / "b.jpg").write_bytes(jpeg)
    doc = _coco_doc()
    json_path = ann_dir / "instances_val2017.json"
    json_path.write_text(json.dumps(doc))
    tasks = list_coco(str(json_path), None)
    by_name = {Path(p.split("#")[0]).name: (p, e) for p, e in zip(tasks["path"], tasks["error"], strict=True)}
    assert by_name["a.jpg"] == ("file:" + str(tmp_path / "val2017" / "a.jpg"), None)
    assert by_name["b.jpg"][0] == "file:" + str(ann_dir / "images" / "b.jpg") and "category id 99" in by_name["b.jpg"][1]
    assert error_kind(by_name["e.jpg"][1]) == "missing_image" and "not found at" in by_name["e.jpg"][1]
    orphan = tasks[tasks["path"].str.endswith("#image_id=777")]
    assert len(orphan) == 1 and orphan["error"].iloc[0].startswith("missing_id: 2 annotations refer to image id 777")
    assert len(tasks) == len(doc["images"]) + 1  # every image entry, plus the unknown id
    only = list_coco(str(json_path), str(tmp_path / "val2017"))  # --images: that folder only
    assert [e is None for e in only["error"]][:1] == [True] and error_kind(only["error"].iloc[1]) == "missing_image"


# --------------------------------------------------------------------- Spark


def test_bccd_ingests_round_trips_and_counts_like_the_reference(spark, bccd, bccd_reference, tmp_path):
    frame = load_images(spark, str(bccd))
    assert frame.schema == DETECTION_SCHEMA
    out = str(tmp_path / "bccd")
    manifest = write_dataset(spark, frame, out, source=str(bccd))
    assert (manifest.rows, manifest.ok, manifest.errors, manifest.task) == (364, 362, 2, "detect")
    assert manifest.classes == ["Platelets", "RBC", "WBC"] and read_manifest(spark, out) == manifest
    back = read_dataset(spark, out)
    assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in DETECTION_SCHEMA]
    assert back.schema["objects"].dataType == OBJECTS_TYPE
    rows = back.drop("content").collect()
    assert len({r.path for r in rows}) == 364
    expected = Counter()
    for row in rows:
        assert row.path.startswith("file:" + str(bccd / "JPEGImages")) and row.label is None
        assert (row.width, row.height, row.format) == (640, 480, "JPEG")
        _, _, boxes = bccd_reference[Path(row.path).stem]
        if _empty(boxes):
            assert error_kind(row.error) == "empty_box" and row.objects is None
            continue
        assert row.error is None and row.clipped_boxes == 0
        assert _tuples(row.objects) == boxes
        expected.update(b[0] for b in boxes)
    stats = compute_stats(back)
    assert (stats.rows, stats.ok, stats.errors, stats.task) == (364, 362, 2, "detect")
    assert stats.classes == dict(sorted(expected.items())) and stats.objects == sum(expected.values())
    assert stats.error_kinds == {"empty_box": 2} and stats.clipped_boxes == 0
    assert {"task", "objects", "clipped_boxes"} <= set(stats.to_dict())


def test_coco_route_gives_the_voc_route_objects(spark, bccd, bccd_reference, tmp_path):
    """A COCO file converted from BCCD's test list (as the common voc2coco tools do) ingests to the same rows."""
    test_list = bccd / "ImageSets" / "Main" / "test.txt"
    ids = [line.strip() for line in test_list.read_text().splitlines() if line.strip()][:12]
    categories = {name: i for i, name in enumerate(sorted(BCCD_CLASSES), start=1)}
    images, annotations = [], []
    for image_id, stem in enumerate(ids, start=1):
        width, height, boxes = reference(bccd / "Annotations" / f"{stem}.xml")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height})
        root = ET.parse(bccd / "Annotations" / f"{stem}.xml").getroot()
        for obj in root.findall("object"):
            b = obj.find("bndbox")
            x0, y0, x1, y1 = (int(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": categories[obj.find("name").text],
                "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], "area": (x1 - x0 + 1) * (y1 - y0 + 1),
                "iscrowd": 0,
            })
    images.append({"id": 500, "file_name": "gone.jpg", "width": 640, "height": 480})
    annotations.append({"id": 9001, "image_id": 1234, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    annotations.append({"id": 9002, "image_id": 2, "category_id": 42, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    json_path = tmp_path / "instances_bccd.json"
    json_path.write_text(json.dumps(doc))

    coco = {r.path: r for r in load_images(spark, str(json_path), images=str(bccd / "JPEGImages"))
            .drop("content").collect()}
    voc = {r.path: r for r in load_images(spark, str(test_list), probe="header").drop("content").collect()}
    assert len(voc) == 72 and len(coco) == len(images) + 1
    for stem in ids:
        path = "file:" + str(bccd / "JPEGImages" / f"{stem}.jpg")
        if stem == ids[1]:  # the image given an annotation of an unknown category
            assert error_kind(coco[path].error) == "missing_id" and "category id 42" in coco[path].error
            continue
        assert coco[path].error is None and voc[path].error is None
        assert _tuples(coco[path].objects) == _tuples(voc[path].objects) == reference(
            bccd / "Annotations" / f"{stem}.xml")[2]
    orphan = coco["file:" + str(json_path) + "#image_id=1234"]
    assert orphan.error == "missing_id: 1 annotation refers to image id 1234, which 'images' does not list"
    gone = coco["file:" + str(bccd / "JPEGImages" / "gone.jpg")]
    assert error_kind(gone.error) == "missing_image" and gone.objects is None


def _adversarial_voc(root: Path) -> dict[str, tuple[str | None, str]]:
    """A small VOC set with one bad case per file; returns id -> (expected error kind, note)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    jpeg = encode(Image.fromarray(smooth(48, 64)), "JPEG")  # 64 x 48: tolerance 2 px both ways
    expected: dict[str, tuple[str | None, str]] = {}

    def case(stem, kind, objects=(("cell", 1, 1, 10, 10, 0),), size=(64, 48), image=jpeg, xml=None, ext=".jpg"):
        if image is not None:
            (root / "JPEGImages" / f"{stem}{ext}").write_bytes(image)
        if xml is not False:
            (root / "Annotations" / f"{stem}.xml").write_bytes(xml or _voc(objects, size))
        expected[stem] = (kind, "")

    case("good", None, objects=(("cell", 1, 1, 64, 48, 0), ("blob", 5, 6, 20, 30, 1)))
    case("empty_annotation", None, objects=())
    case("no_image", "missing_image", image=None)
    case("no_xml", "missing_annotation", xml=False, ext=".png")
    case("broken_xml", "bad_annotation", xml=b"<annotation><object>")
    case("not_a_number", "bad_annotation", objects=(("cell", "1,5", 1, 10, 10, 0),))
    case("empty_box", "empty_box", objects=(("cell", 1, 1, 10, 10, 0), ("cell", 7, 3, 7, 9, 0)))
    case("slightly_outside", None, objects=(("cell", 0, 1, 10, 10, 0), ("blob", 50, 40, 65, 49, 0)))
    case("far_outside", "box_outside", objects=(("cell", 1, 1, 10, 10, 0), ("cell", 40, 10, 90, 20, 0)))
    case("wholly_outside", "box_outside", objects=(("cell", 66, 1, 66.5, 10, 0),))
    case("unknown_class", "unknown_class", objects=(("cell", 1, 1, 10, 10, 0), ("dog", 1, 1, 10, 10, 0)))
    case("corrupt_image", "truncated", image=jpeg[: len(jpeg) // 2])
    case("wrong_size", "bad_annotation", size=(640, 480))
    rotated = jpeg_with_orientation(6)  # stored 32 wide x 48 high, displayed 48 x 32
    # Annotated on the displayed picture: a box reaching x = 45 only fits the displayed width.
    case("rotated", None, objects=(("cell", 1, 1, 45, 30, 0),), size=(48, 32), image=rotated)
    case("rotated_as_stored", "bad_annotation", objects=(("cell", 1, 1, 30, 45, 0),), size=(32, 48), image=rotated)
    (root / "ImageSets" / "Main" / "some.txt").write_text("good\nno_image\nnever_existed\nrotated 1\n\n")
    return expected


def test_bad_annotations_are_row_errors_counted_by_ingest_and_info(spark, tmp_path, capsys):
    from sparkvision.cli.main import main

    voc = tmp_path / "voc"
    expected = _adversarial_voc(voc)
    assert resolve_kind(spark, str(voc)) == "voc" and resolve_kind(spark, str(voc / "JPEGImages")) == "folder"
    out = tmp_path / "ds"
    assert main(["ingest", str(voc), "--out", str(out), "--classes", "cell,blob"]) == 0
    result = json.loads(capsys.readouterr().out)
    kinds = Counter(kind for kind, _ in expected.values() if kind)
    assert result["rows"] == len(expected) and result["errors"] == sum(kinds.values())
    assert result["error_kinds"] == dict(sorted(kinds.items()))
    assert result["task"] == "detect" and result["class_order"] == ["cell", "blob"]
    assert result["clipped_boxes"] == 2 and result["classes"] == {"blob": 2, "cell": 3}
    assert read_manifest(spark, str(out)).classes == ["cell", "blob"]

    rows = {Path(r.path).stem: r for r in read_dataset(spark, str(out)).collect()}
    assert set(rows) == set(expected)
    for stem, (kind, _) in expected.items():
        row = rows[stem]
        assert error_kind(row.error) == kind, (stem, row.error)
        assert (row.objects is None) == (kind is not None)
    assert rows["no_image"].path == "file:" + str(voc / "Annotations" / "no_image.xml")
    assert rows["no_image"].content is None and rows["no_xml"].content is not None
    assert rows["wrong_size"].width == 64 and rows["wrong_size"].content is not None  # the image itself is fine
    assert _tuples(rows["good"].objects) == [("cell", 0, 0, 64, 48, False), ("blob", 4, 5, 20, 30, True)]
    assert rows["empty_annotation"].objects == [] and rows["good"].clipped_boxes == 0
    assert rows["slightly_outside"].clipped_boxes == 2
    assert _tuples(rows["slightly_outside"].objects) == [("cell", 0, 0, 10, 10, False), ("blob", 49, 39, 64, 48, False)]
    assert (rows["rotated"].width, rows["rotated"].height) == (48, 32)
    assert _tuples(rows["rotated"].objects) == [("cell", 0, 0, 45, 30, False)]
    assert "displays as 48x32" in rows["rotated_as_stored"].error

    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["error_kinds"] == result["error_kinds"] and info["clipped_boxes"] == 2 and info["objects"] == 5

    # An image-set list picks its ids; an id with neither file is still a row.
    listed = {Path(r.path).stem: r for r in load_images(spark, str(voc / "ImageSets" / "Main" / "some.txt"),
                                                         probe="header").drop("content").collect()}
    assert set(listed) == {"good", "no_image", "never_existed", "rotated"}
    assert error_kind(listed["never_existed"].error) == "missing_image" and "some.txt" in listed["never_existed"].error
    # Without --classes every class is allowed: 'dog' is no longer an error.
    free = load_images(spark, str(voc), probe="header").where("path like '%unknown_class%'").first()
    assert free.error is None and [o["label"] for o in free.objects] == ["cell", "dog"]
    with pytest.raises(ValueError, match="VOC and COCO"):
        load_images(spark, str(voc / "JPEGImages"), classes=["cell"])
