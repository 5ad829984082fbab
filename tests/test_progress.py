"""Progress of long remote transfers: a bar in a terminal, log lines
otherwise, nothing for small or local files, and a switch to turn it off."""

from __future__ import annotations

import io
import logging
import re
import time

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
    monkeypatch.setattr(_progress, "PACE_AFTER_SECONDS", 0.0)
    monkeypatch.delenv("KEDRO_KERAS_PROGRESS", raising=False)
    monkeypatch.setattr(_progress, "_console", lambda: Console(file=io.StringIO(), force_terminal=False))


@pytest.fixture
def transfer_updates(monkeypatch):
    """Every ``Transfer.at`` of the test: (verb, bytes done, total, the pace the bar showed)."""
    updates = []
    original = _progress.Transfer.at

    def at(self, done):
        original(self, done)
        updates.append((self.verb, min(done, self.total), self.total, self.pace(time.monotonic())))

    monkeypatch.setattr(_progress.Transfer, "at", at)
    return updates


def _rate(text):
    """MB/s in a "12.3 MB/s" or "456.0 KB/s" text."""
    number, unit = re.search(r"([\d.]+) (bytes|KB|MB|GB)/s", text).groups()
    return float(number) * {"bytes": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def _large_model():
    """About 11 MB of weights: one PUT by default, or parts of 5 MiB."""
    import keras

    model = keras.Sequential([keras.Input((1400,)), keras.layers.Dense(2000)])
    model.compile(optimizer="sgd", loss="mse")
    return model


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


class TestOneBarPerTransfer:
    """A bar counts the bytes that cross the network once each: botocore's
    checksum and signing passes over an upload's body ran a 403 MB save's bar
    to 100 % three times at 400-900 MB/s while its log line said 65 MB/s."""

    @pytest.mark.parametrize("fs_args", [{}, {"part_size": 5 * 2**20}], ids=["one PUT", "parts"])
    def test_a_save_reaches_100_percent_once_at_the_rate_of_its_log_line(
        self, every_transfer_shown, transfer_updates, s3_bucket, s3_credentials, fs_args, caplog
    ):
        caplog.set_level(logging.INFO, logger="kedro_keras")
        model = _large_model()
        KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials, fs_args=fs_args).save(
            model
        )
        saving = [update for update in transfer_updates if update[0] == "Saving"]
        done = [update[1] for update in saving]
        total = saving[0][2]
        assert total > 10**7
        assert done == sorted(done), "the bar went back"
        assert done.count(total) == 1 and done[-1] == total
        (saved,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Saved")]
        sent = re.search(r"; sent in [\d.]+ s, (.*/s)$", saved)
        assert sent, saved
        assert _rate(sent.group(1)) == pytest.approx(_rate(saving[-1][3]), rel=0.02), (saved, saving[-1])

    # The tally below counts a whole cache block for every small read; with
    # Keras's internals off, Keras's own loader makes hundreds of them (looks
    # back, mostly cache hits), so the tally says nothing there.
    @pytest.mark.private_api
    def test_a_load_reaches_100_percent_when_the_last_byte_arrives(
        self, every_transfer_shown, transfer_updates, s3_bucket, s3_credentials, caplog, monkeypatch
    ):
        from kedro_keras._io.remote import RemoteReader

        dataset = KerasModelDataset(filepath=f"{s3_bucket}/m.keras", credentials=s3_credentials)
        dataset.save(_large_model())
        transfer_updates.clear()
        fetches = []  # (bytes fetched so far, what the bar showed after it)
        fetched = RemoteReader._fetched

        def recorded(self, position, count):
            fetched(self, position, count)
            fetches.append(((fetches[-1][0] if fetches else 0) + count, transfer_updates[-1][1]))

        monkeypatch.setattr(RemoteReader, "_fetched", recorded)
        caplog.set_level(logging.INFO, logger="kedro_keras")
        dataset.load()
        done = [update[1] for update in transfer_updates if update[0] == "Loading"]
        total = transfer_updates[0][2]
        assert done == sorted(done) and done[-1] == total
        # Counting the bytes handed to HDF5 reached 100 % a third of the way
        # into the fetching; counting the file's bytes fetched, only at the
        # last new byte: what comes after is looks back at bytes it has.
        fetched_by_then = next(so_far for so_far, shown in fetches if shown == total)
        assert fetched_by_then >= 0.9 * fetches[-1][0], (fetched_by_then, fetches[-1][0])
        (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loaded")]
        received = re.search(r"; received in [\d.]+ s, (.*/s)$", loaded)
        assert received, loaded
        last = [update for update in transfer_updates if update[0] == "Loading"][-1]
        assert _rate(received.group(1)) == pytest.approx(_rate(last[3]), rel=0.02), (loaded, last)

    def test_a_byte_fetched_twice_counts_once(self):
        from kedro_keras._io.remote import _Coverage

        covered = _Coverage()
        assert covered.add(90, 100) == 10  # the zip directory's block, at the end
        assert covered.add(0, 40) == 50  # the stream from the front
        assert covered.add(40, 95) == 100  # ...running into the block
        assert covered.add(20, 30) == 100  # a look back, fetched again
        assert covered.add(5, 5) == 100
        fresh = _Coverage()
        for start, end in [(10, 20), (30, 40), (50, 60), (15, 55)]:
            fresh.add(start, end)
        assert fresh.total == 50 and fresh._stretches == [[10, 60]]

    def test_the_time_left_waits_for_a_rate_worth_the_name(self, monkeypatch):
        transfer = _progress.Transfer("Loading", "s3://b/m.keras", 400 * 10**6)
        started = transfer._started
        transfer.at(64 * 2**10)  # the zip directory, read first from the file's end
        assert transfer.pace(started + 0.5) == "131.1 KB/s, time left not known yet"
        assert transfer.pace(started + 2.0).endswith("time left not known yet")  # 0.02 % done
        transfer.at(100 * 10**6)
        assert transfer.pace(started + 2.0) == "50.0 MB/s, about 6 s left"
        transfer.at(400 * 10**6)
        transfer._moved_at = started + 8.0  # as if the last byte came 8 s in
        assert transfer.pace(started + 20.0) == "50.0 MB/s"  # and stays put while the load builds


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
        assert re.search(r"/s, (about \d+ s left|time left not known yet)$", line)

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
    _progress._ended_here().clear()  # transfers other tests left unreported
    assert _progress.size_text(None) == "?"
    assert _progress.size_text(999) == "999 bytes"
    assert _progress.size_text(12_345_678) == "12.3 MB"
    assert _progress.transfer_text(2 * 10**9, 4.0) == "2.0 GB in 4.00 s, 500.0 MB/s"
    assert _progress.transfer_text(None, 0.5) == "in 0.50 s"
