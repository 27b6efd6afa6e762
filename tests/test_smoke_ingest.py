"""The foundation's happy path on real photos: folder -> dataset -> stats."""

from sparkvision.io import compute_stats, load_images, read_dataset, write_dataset


def test_imagenette_train_ingests_ten_classes_of_eighty(spark, imagenette, tmp_path):
    frame = load_images(spark, str(imagenette / "train"))
    out = str(tmp_path / "ds")
    manifest = write_dataset(spark, frame, out)
    assert manifest.rows == 800 and manifest.errors == 0
    stats = compute_stats(read_dataset(spark, out))
    assert stats.classes == {name: 80 for name in sorted(p.name for p in (imagenette / "train").iterdir())}
    assert stats.errors == 0
    assert stats.formats == {"JPEG": 800}
