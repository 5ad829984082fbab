"""Progress of long remote transfers: a bar in a terminal, log lines
otherwise, nothing for small or local files, and a switch to turn it off."""

from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console

from conftest import assert_same_predictions
from kedro_keras import KerasModelDataset, KerasWeightsDataset
from kedro_keras._io import progress as _progress

PROGRESS_LOGGER = "kedro_keras._io.progress"


@pytest.fixture
def every_transfer_shown(monkeypatch):
    """Progress for transfers of any size, a log line on every update."""
    monkeypatch.setattr(_progress, "SHOWN_FROM_BYTES", 0)
    monkeypatch.setattr(_progress, "LOG_EVERY_SECONDS", 0.0)
    monkeypatch.delenv("KEDRO_KERAS_PROGRESS", raising=False)
    monkeypatch.setattr(_progress, "_console", lambda: Console(file=io.StringIO(), force_terminal=False))


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


class TestOnS3:
    def test_a_save_and_a_load_log_how_far_they_are(
        self, every_transfer_shown, trained_model, s3_bucket, s3_credentials, data, caplog
    ):
        caplog.set_level(logging.INFO, logger="kedro_keras")
        dataset = KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials)
        dataset.save(trained_model)
        saving = [line for line in progress_lines(caplog) if line.startswith("Saving")]
        caplog.clear()
        reloaded = dataset.load()
        loading = [line for line in progress_lines(caplog) if line.startswith("Loading")]

        assert_same_predictions(reloaded, trained_model, data[0])
        size = dataset._location.fs.size(f"{s3_bucket[5:]}/m.keras")
        for lines, verb in ((saving, "Saving"), (loading, "Loading")):
            assert lines, f"no {verb} progress"
            assert all(f"{verb} {s3_bucket}/m.keras: " in line for line in lines)
            done = [int(m) for m in (re.search(r"\((\d+) %\)", line).group(1) for line in lines)]
            assert done[-1] == 100 and done == sorted(done)
        assert re.search(r"of \d+\.\d KB \(100 %\)", saving[-1]), saving[-1]
        assert any("s left" in line for line in saving + loading)
        assert size > 0

    def test_a_terminal_gets_a_bar_instead_of_lines(
        self, every_transfer_shown, monkeypatch, trained_model, s3_bucket, s3_credentials, caplog
    ):
        screen = io.StringIO()
        monkeypatch.setattr(
            _progress, "_console", lambda: Console(file=screen, force_terminal=True, width=120)
        )
        caplog.set_level(logging.INFO, logger="kedro_keras")
        KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials).save(trained_model)
        assert f"Saving {s3_bucket}/m.keras" in screen.getvalue()
        assert "━" in screen.getvalue()  # the bar itself
        assert progress_lines(caplog) == []

    def test_weights_files_show_progress_too(
        self, every_transfer_shown, trained_model, s3_bucket, s3_credentials, caplog
    ):
        caplog.set_level(logging.INFO, logger="kedro_keras")
        dataset = KerasWeightsDataset(filepath=f"{s3_bucket}/m.weights.h5", credentials=s3_credentials)
        dataset.save(trained_model)
        dataset.load()
        verbs = {line.split(" ", 1)[0] for line in progress_lines(caplog)}
        assert verbs == {"Saving", "Loading"}

    @pytest.mark.parametrize("switch", ["fs_args", "environment"])
    def test_it_can_be_turned_off(
        self, every_transfer_shown, monkeypatch, switch, trained_model, s3_bucket, s3_credentials, caplog
    ):
        caplog.set_level(logging.INFO, logger="kedro_keras")
        fs_args = {"progress": False} if switch == "fs_args" else None
        if switch == "environment":
            monkeypatch.setenv("KEDRO_KERAS_PROGRESS", "0")
        dataset = KerasModelDataset(
            filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials, fs_args=fs_args
        )
        dataset.save(trained_model)
        dataset.load()
        assert progress_lines(caplog) == []
        assert any("Saved" in r.getMessage() for r in caplog.records)  # the one line per save stays


def test_never_on_local_files(every_transfer_shown, trained_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kedro_keras")
    dataset = KerasModelDataset(filepath=str(tmp_path / "m.keras"))
    dataset.save(trained_model)
    dataset.load()
    assert progress_lines(caplog) == []


class TestTransfer:
    def test_small_and_quick_transfers_say_nothing(self, caplog, monkeypatch):
        monkeypatch.setattr(_progress, "LOG_EVERY_SECONDS", 0.0)
        caplog.set_level(logging.INFO, logger="kedro_keras")
        with _progress.Transfer("Loading", "s3://b/m.keras", 10**6) as transfer:
            transfer.at(10**6)
        assert progress_lines(caplog) == []

    def test_a_slow_small_transfer_is_shown_once_it_takes_long(self, caplog, monkeypatch):
        monkeypatch.setattr(_progress, "LOG_EVERY_SECONDS", 0.0)
        monkeypatch.setattr(_progress, "_console", lambda: Console(file=io.StringIO(), force_terminal=False))
        caplog.set_level(logging.INFO, logger="kedro_keras")
        transfer = _progress.Transfer("Loading", "s3://b/m.keras", 10**6)
        transfer.at(10**5)
        monkeypatch.setattr(_progress, "SHOWN_AFTER_SECONDS", 0.0)  # as if 5 s had passed
        transfer.at(5 * 10**5)
        (line,) = progress_lines(caplog)
        assert line.startswith("Loading s3://b/m.keras: 500.0 KB of 1.0 MB (50 %), ")
        assert re.search(r"/s, about \d+ s left$", line)

    def test_log_lines_are_spaced_out(self, caplog, monkeypatch):
        import time

        monkeypatch.setattr(_progress, "SHOWN_FROM_BYTES", 0)
        monkeypatch.setattr(_progress, "LOG_EVERY_SECONDS", 0.2)
        monkeypatch.setattr(_progress, "_console", lambda: Console(file=io.StringIO(), force_terminal=False))
        caplog.set_level(logging.INFO, logger="kedro_keras")
        transfer = _progress.Transfer("Saving", "s3://b/m.keras", 100)
        for done in range(0, 51, 10):
            transfer.at(done)
        assert progress_lines(caplog) == []  # a transfer over sooner has only its save/load line
        time.sleep(0.25)
        for done in range(60, 101, 10):
            transfer.at(done)
        (line,) = progress_lines(caplog)
        assert line.startswith("Saving s3://b/m.keras: 60 bytes of 100 bytes (60 %)")

    @pytest.mark.parametrize(
        ("option", "environment", "expected"),
        [
            (True, "", True),
            (False, "", False),
            ("false", "", False),
            (True, "0", False),
            (True, "off", False),
            (True, "1", True),
        ],
    )
    def test_wanted(self, monkeypatch, option, environment, expected):
        monkeypatch.setenv("KEDRO_KERAS_PROGRESS", environment)
        assert _progress.wanted(option) is expected


def test_size_and_rate_texts():
    assert _progress.size_text(None) == "?"
    assert _progress.size_text(999) == "999 bytes"
    assert _progress.size_text(12_345_678) == "12.3 MB"
    assert _progress.transfer_text(2 * 10**9, 4.0) == "2.0 GB in 4.00 s, 500.0 MB/s"
    assert _progress.transfer_text(None, 0.5) == "in 0.50 s"
