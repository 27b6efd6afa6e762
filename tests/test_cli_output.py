"""What a user of the ``sparkvision`` command meets: one clear line per error with a documented exit code,
a short summary on a terminal, and the full JSON for scripts. The real cases run the command in its own
process (only the first two start a JVM); variations of them run in this one."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sparkvision.cli.common import EXIT_CODE_MEANINGS, ExitCode
from sparkvision.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "sparkvision.cli.main"]


def _env() -> dict[str, str]:
    return {**os.environ, "SPARKVISION_MASTER": "local[1]"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command with stdout a pipe (as in a script)."""
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """The command with stdout a pseudo-terminal (as a person runs it); stderr stays a pipe."""
    main_fd, terminal_fd = pty.openpty()
    proc = subprocess.Popen([*COMMAND, *args], stdout=terminal_fd, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    os.close(terminal_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=600)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n"), stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR sparkvision" in line]


def assert_one_clear_line(proc: subprocess.CompletedProcess, code: ExitCode, *words: str) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert proc.stdout == ""  # no result printed
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\tat " not in proc.stderr, proc.stderr[-3000:]  # no Python/Java stacks
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for label, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (root / label).mkdir()
        for i in range(2):
            Image.new("RGB", (24, 16), tuple(c + 10 * i for c in colour)).save(root / label / f"{i}.png")
    return root


# ---------------------------------------------------------------- errors (one line, the right exit code)


def test_a_missing_input_is_one_line_and_exit_code_4(tmp_path):
    missing = tmp_path / "no-such-predictions"
    proc = run_cli("evaluate", "--predictions", str(missing), "--out", str(tmp_path / "report"),
                   "--driver-memory", "1g")
    assert_one_clear_line(proc, ExitCode.INPUT, "PATH_NOT_FOUND", str(missing))  # Spark's AnalysisException
    assert not (tmp_path / "report").exists()


def test_an_output_that_cannot_be_written_fails_the_job_with_one_line(photos, tmp_path):
    # Tests run as root, for whom chmod does not block writes: a path under a regular FILE cannot be made.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    proc = run_cli("ingest", str(photos), "--out", str(blocker / "dataset"), "--driver-memory", "1g")
    line = assert_one_clear_line(proc, ExitCode.FAILED, str(blocker))
    assert "not a directory" in line.lower()
    assert blocker.read_text() == "not a directory\n"


def test_a_wrong_model_directory_fails_before_spark_starts(photos, tmp_path):
    not_a_model = tmp_path / "models" / "typo"
    not_a_model.mkdir(parents=True)
    proc = run_cli("predict", "--model", str(not_a_model), "--input", str(photos), "--out", str(tmp_path / "p"))
    assert_one_clear_line(proc, ExitCode.INPUT, str(not_a_model), "not a sparkvision model directory")
    assert "Spark" not in proc.stderr  # refused before a JVM was started
    assert not (tmp_path / "p").exists()


def test_a_corrupt_model_card_names_the_file(photos, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    card = model / "sparkvision_model.json"
    card.write_text('{"name": "m", "kind": "onnx", "labels": ["a", "b"],\n  "preprocess": {"size": [2')  # cut short
    proc = run_cli("predict", "--model", str(model), "--input", str(photos), "--out", str(tmp_path / "p"))
    assert_one_clear_line(proc, ExitCode.INPUT, str(card), "not a valid model card")


def test_only_v_shows_the_traceback_and_a_card_without_preprocessing_is_invalid(photos, tmp_path, caplog):
    from sparkvision.cli.main import main

    model = tmp_path / "model"
    model.mkdir()
    card = model / "sparkvision_model.json"
    card.write_text("{not json")
    args = ["predict", "--model", str(model), "--input", str(photos), "--out", str(tmp_path / "p")]
    assert main(args) == ExitCode.INPUT
    assert "not a valid model card" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert main([*args, "-v"]) == ExitCode.INPUT
    assert "Traceback" in caplog.text and "JSONDecodeError" in caplog.text

    caplog.clear()
    card.write_text(json.dumps({"name": "m", "kind": "onnx", "labels": ["a"]}))  # JSON, but no preprocessing
    assert main(args) == ExitCode.INPUT
    assert "not a valid model card" in caplog.text and "preprocess" in caplog.text


def test_conflicting_options_are_a_usage_error(caplog, capsys):
    from sparkvision.cli.main import main

    assert main(["heatmap", "--model", "m", "--out", "o"]) == ExitCode.USAGE  # neither SRC nor --tiles
    assert "--tiles" in caplog.text and "sparkvision heatmap --help" in caplog.text
    with pytest.raises(SystemExit) as exited:
        main(["ingest"])  # argparse's own: --out and SRC missing
    assert exited.value.code == ExitCode.USAGE
    assert "required" in capsys.readouterr().err


# ---------------------------------------------------------------- a summary for people, JSON for scripts


@pytest.fixture(scope="module")
def two_reports(spark, tmp_path_factory) -> list[Path]:
    """Two evaluation reports' metrics.json, computed by the real metrics from small predictions."""
    from sparkvision.evaluation.metrics import evaluate_predictions

    labels = ["cat", "dog"]
    truth = ["cat", "cat", "dog", "dog"]
    reports = []
    for name, predicted in (("good", ["cat", "cat", "dog", "dog"]), ("worse", ["cat", "dog", "dog", "cat"])):
        rows = [(f"{i}.png", t, p, [0.8, 0.2] if p == "cat" else [0.2, 0.8], None)
                for i, (t, p) in enumerate(zip(truth, predicted, strict=True))]
        frame = spark.createDataFrame(rows, "path string, label string, prediction string, "
                                            "probability array<double>, error string")
        result = evaluate_predictions(frame, labels)
        result.source = {"model": name}
        folder = tmp_path_factory.mktemp(name)
        (folder / "metrics.json").write_text(json.dumps(result.to_dict()))
        reports.append(folder)
    return reports


def test_json_when_stdout_is_not_a_terminal_and_with_json(two_reports):
    piped = run_cli("compare", *map(str, two_reports))
    assert piped.returncode == 0, piped.stderr[-3000:]
    result = json.loads(piped.stdout)  # the whole stdout is one JSON document, as before
    assert result["models"] == ["good", "worse"]
    assert result["metrics"]["accuracy"] == [1.0, 0.5] and result["best"]["accuracy"] == "good"

    code, shown, _ = run_on_terminal("compare", *map(str, two_reports), "--json")
    assert code == 0 and json.loads(shown) == result


def test_a_terminal_gets_a_short_summary(two_reports):
    code, shown, stderr = run_on_terminal("compare", *map(str, two_reports))
    assert code == 0, stderr[-3000:]
    lines = shown.strip().splitlines()
    assert lines[0] == "2 reports side by side"
    accuracy = next(line for line in lines if line.strip().startswith("accuracy"))
    assert re.search(r"accuracy\s+1\s+0\.5\s+\(best: good\)", accuracy), accuracy
    assert "--json" in lines[-1] and len(lines) <= 12
    with pytest.raises(json.JSONDecodeError):
        json.loads(shown)


# ---------------------------------------------------------------- the exit-code table


def test_exit_codes_are_documented_once_in_help_and_readme():
    help_text = build_parser().format_help()
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", readme, flags=re.MULTILINE))
    assert {int(code) for code in table} == {int(code) for code in EXIT_CODE_MEANINGS}
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert re.search(rf"^  {int(code)}\s+{re.escape(meaning.split()[0])}", help_text, flags=re.MULTILINE)
        assert table[str(int(code))] == meaning
