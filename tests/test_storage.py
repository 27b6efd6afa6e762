"""The storage layer: what a path or URI means, reads, listings and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparkvision import storage
from sparkvision.storage import NotLocalError, OutputExistsError


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/data/x.png", "/data/x.png"),
        ("file:///data/x.png", "/data/x.png"),
        ("file://localhost/data/x.png", "/data/x.png"),
        ("file://LocalHost/data/x.png", "/data/x.png"),
        ("file:///", "/"),
        ("file://localhost/", "/"),
        ("file:/", "/"),
        ("file:///data/a%20b/c%23d.png", "/data/a b/c#d.png"),  # RFC 8089: percent-decoded
        ("file:///data/caf%C3%A9.png", "/data/café.png"),
        ("file:/data/a b/100%.png", "/data/a b/100%.png"),  # Hadoop's unencoded form, as written
        ("/data/plain path.png", "/data/plain path.png"),
        ("relative/x.png", "relative/x.png"),
        ("a:b/x.png", "a:b/x.png"),  # a colon in a relative path is not a scheme
    ],
)
def test_local_path_rules(uri: str, expected: str) -> None:
    assert storage.local_path(uri) == expected


def test_path_that_exists_as_written_wins_over_decoding(tmp_path: Path) -> None:
    literal = tmp_path / "a%20b.png"  # a file whose name really holds '%20' (Hadoop prints it so)
    literal.write_bytes(b"x")
    assert storage.local_path(f"file:{literal}") == str(literal)
    assert storage.local_path(f"file://{tmp_path}/c%20d.png") == f"{tmp_path}/c d.png"


def test_undecodable_escape_round_trips_to_the_same_bytes(tmp_path: Path) -> None:
    name = os.fsdecode(b"latin-\xe9.png")  # not UTF-8
    (tmp_path / name).write_bytes(b"x")
    local = storage.local_path(f"file://{tmp_path}/latin-%E9.png")
    assert os.path.isfile(local)
    assert os.fsencode(local) == os.fsencode(str(tmp_path)) + b"/latin-\xe9.png"


@pytest.mark.parametrize("uri", ["file://server/data/x.png", "file://10.0.0.1/x", "hdfs://nn/data/x.png",
                                 "s3a://bucket/x.png"])
def test_non_local_uris_are_reported(uri: str) -> None:
    with pytest.raises(NotLocalError, match="server|10.0.0.1|hdfs|s3a"):
        storage.local_path(uri)


def test_local_path_or_none_and_schemes() -> None:
    assert storage.local_path_or_none("s3a://bucket/x") is None
    assert storage.local_path_or_none("file:///x") == "/x"
    with pytest.raises(NotLocalError, match="host 'other'"):
        storage.local_path_or_none("file://other/x")
    assert storage.scheme("HDFS://nn/x") == "hdfs"
    assert storage.scheme("/x") == ""
    assert storage.is_local("file://localhost/x") and not storage.is_local("gs://b/x")


def test_file_uri_and_spark_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.file_uri("sub/a b.png") == f"file:{tmp_path}/sub/a b.png"
    assert storage.file_uri("file:///x%20y") == "file:/x y"
    assert storage.spark_path("file:///tmp/a%20b/c%25d%23e.png") == "file:/tmp/a b/c%d#e.png"
    assert storage.spark_path("hdfs://nn:8020/x/caf%C3%A9.jpg") == "hdfs://nn:8020/x/café.jpg"
    assert storage.spark_path("s3a://bucket/k/日本.jpg") == "s3a://bucket/k/日本.jpg"


def test_reads_listing_and_limits(tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    folder.mkdir()
    (folder / "b.bin").write_bytes(b"0123456789")
    (folder / "a.txt").write_text("héllo", encoding="utf-8")
    uri = folder.as_uri()  # percent-encoded: file:///.../with%20space
    assert "%20" in uri
    assert storage.exists(uri) and storage.exists(f"{uri}/b.bin") and not storage.exists(f"{uri}/c")
    assert storage.list_dir(uri) == ["a.txt", "b.bin"]
    assert storage.read_text(f"{uri}/a.txt") == "héllo"
    with storage.open_input(f"file://localhost{folder}/b.bin") as handle:
        handle.seek(3)
        assert handle.read(2) == b"34"
    assert storage.read_bytes(folder / "b.bin", max_bytes=10) == b"0123456789"
    with pytest.raises(storage.FileTooLargeError, match="10 bytes exceeds the limit of 9"):
        storage.read_bytes(folder / "b.bin", max_bytes=9)
    with pytest.raises(FileNotFoundError):
        storage.list_dir(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        storage.open_input(tmp_path / "absent")


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "card.json"
    assert storage.atomic_write(target, "first") == target
    storage.atomic_write(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["card.json"]


def test_failed_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old complete file")
    with pytest.raises(TypeError):
        storage.atomic_write(target, 12345)  # type: ignore[arg-type] - fails after the temp file is open
    with pytest.raises(RuntimeError), storage.atomic_file(target) as tmp:
        Path(tmp).write_bytes(b"half of a new f")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


def test_atomic_file_for_writers_that_want_a_name(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with storage.atomic_file(target) as tmp:
        assert Path(tmp).parent == tmp_path and not os.path.exists(tmp)
        Path(tmp).write_bytes(b"new")
        assert not target.exists()  # invisible until the rename
    assert target.read_bytes() == b"new"


def test_atomic_dir_local(tmp_path: Path) -> None:
    out = tmp_path / "out dir"
    with storage.atomic_dir(out) as staging:
        Path(staging, "part-0").write_text("v1")
        assert not out.exists()
    assert (out / "part-0").read_text() == "v1"
    with pytest.raises(OutputExistsError, match="already exists"), storage.atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), storage.atomic_dir(out, overwrite=True) as staging:
        Path(staging, "part-0").write_text("half")
        raise RuntimeError("job failed")
    assert (out / "part-0").read_text() == "v1"
    with storage.atomic_dir(out.as_uri(), overwrite=True) as staging:
        Path(staging, "part-1").write_text("v2")
    assert [p.name for p in out.iterdir()] == ["part-1"]
    assert [p.name for p in tmp_path.iterdir()] == ["out dir"]  # no staging or retired directory left


def test_hadoop_operations_follow_the_same_uri_rules(spark, tmp_path: Path) -> None:
    out = tmp_path / "a b" / "frame"
    uri = f"file://localhost{out.parent.as_uri()[len('file://'):]}/frame"  # percent-encoded, with a host
    with storage.atomic_dir(uri, spark) as staging:
        assert staging.startswith("file:/") and " " in staging  # a qualified Hadoop URI, unencoded
        spark.range(3).write.parquet(staging)
        storage.write_text(staging + "/_marker.json", '{"ok": true}', spark)
    assert storage.exists(uri, spark) and (out / "_marker.json").is_file()
    assert storage.read_text(str(out / "_marker.json"), spark) == '{"ok": true}'
    assert "_marker.json" in storage.list_dir(str(out), spark)
    assert spark.read.parquet(storage.file_uri(out)).count() == 3
    with pytest.raises(OutputExistsError), storage.atomic_dir(str(out), spark):
        pass
    storage.delete(str(out), spark)
    assert not out.exists()
    with pytest.raises(NotLocalError, match="host 'elsewhere'"):
        storage.exists("file://elsewhere/x", spark)
