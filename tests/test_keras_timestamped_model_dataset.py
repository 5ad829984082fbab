"""KerasTimestampedModelDataset: a model history in one folder."""

from __future__ import annotations

import pickle
import re

import pytest
from kedro.io import DataCatalog, DatasetError
from kedro.io.core import Version

import keras_test_models
from conftest import assert_same_predictions, fit
from kedro_keras import KerasTimestampedModelDataset

NAME = re.compile(r"^model_\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{6}Z\.keras$")


def models_of_width(data, *widths):
    return [fit(keras_test_models.build_functional(hidden=width), data, epochs=1) for width in widths]


class TestKerasTimestampedModelDataset:
    def test_each_save_adds_a_timestamped_file_and_load_gives_the_newest(self, tmp_path, data):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "history"))
        for model in models_of_width(data, 2, 3, 4):
            history.save(model)  # three saves well within one second

        names = sorted(p.name for p in (tmp_path / "history").iterdir())
        assert len(names) == 3 and all(NAME.match(name) for name in names)
        assert history.load().layers[1].units == 4
        versions = history.versions()
        assert versions == sorted(versions, reverse=True) and len(set(versions)) == 3
        assert [f"model_{v}.keras" for v in versions] == sorted(names, reverse=True)

    def test_load_version_pins_one(self, tmp_path, data):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
        for model in models_of_width(data, 2, 3):
            history.save(model)
        oldest = history.versions()[-1]
        pinned = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"), load_version=oldest)
        assert pinned.load().layers[1].units == 2

    def test_keep_last_prunes_oldest_after_save(self, tmp_path, data):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"), keep_last=2)
        saved = []
        for model in models_of_width(data, 2, 3, 4, 5):
            history.save(model)
            saved.append(history.versions()[0])
        assert history.versions() == saved[:-3:-1]
        assert len(list((tmp_path / "h").iterdir())) == 2
        assert history.load().layers[1].units == 5

    def test_round_trip_keeps_predictions(self, tmp_path, trained_model, data, keras_api):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
        history.save(trained_model)
        assert_same_predictions(history.load(), trained_model, data[0])

    def test_empty_folder(self, tmp_path):
        (tmp_path / "h").mkdir()
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
        assert not history.exists()
        assert history.versions() == []
        with pytest.raises(DatasetError, match=r"No model has been saved in '.*h' yet"):
            history.load()

    def test_missing_folder(self, tmp_path):
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "nowhere"))
        assert history.versions() == []
        with pytest.raises(DatasetError, match="No model has been saved"):
            history.load()

    def test_other_files_in_the_folder_are_ignored(self, tmp_path, trained_model):
        folder = tmp_path / "h"
        folder.mkdir()
        (folder / "notes.txt").write_text("hi")
        (folder / "model_latest.keras").write_text("not ours")
        history = KerasTimestampedModelDataset(filepath=str(folder))
        history.save(trained_model)
        assert len(history.versions()) == 1
        assert history.load().name == trained_model.name

    def test_pinned_version_that_does_not_exist(self, tmp_path, trained_model):
        KerasTimestampedModelDataset(filepath=str(tmp_path / "h")).save(trained_model)
        pinned = KerasTimestampedModelDataset(
            filepath=str(tmp_path / "h"), load_version="2001-01-01T00.00.00.000000Z"
        )
        with pytest.raises(
            DatasetError,
            match=r"Version '2001-01-01T00\.00\.00\.000000Z' is not in .*Newest versions there: \d{4}",
        ):
            pinned.load()

    @pytest.mark.parametrize("bad", ["latest", "../../etc/passwd", "2026-01-01"])
    def test_malformed_load_version(self, tmp_path, bad):
        with pytest.raises(DatasetError, match="is not a model version"):
            KerasTimestampedModelDataset(filepath=str(tmp_path / "h"), load_version=bad)

    @pytest.mark.parametrize("keep_last", [0, -1, 1.5, "3", True])
    def test_bad_keep_last(self, tmp_path, keep_last):
        with pytest.raises(DatasetError, match="keep_last must be a whole number"):
            KerasTimestampedModelDataset(filepath=str(tmp_path / "h"), keep_last=keep_last)

    @pytest.mark.parametrize("filepath", ["model.keras", "history/model.h5"])
    def test_filepath_must_be_a_folder(self, tmp_path, filepath):
        with pytest.raises(DatasetError, match="is a folder"):
            KerasTimestampedModelDataset(filepath=str(tmp_path / filepath))

    def test_a_timestamp_taken_while_saving_is_not_overwritten(self, tmp_path, data, monkeypatch):
        """Two saves that pick the same microsecond: the later one moves on."""
        from datetime import datetime, timezone

        from kedro_keras import keras_timestamped_model_dataset
        from kedro_keras._formats import archive as _archive

        class FrozenClock(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=timezone.utc)

        monkeypatch.setattr(keras_timestamped_model_dataset, "datetime", FrozenClock)
        first, second = models_of_width(data, 2, 3)
        write = _archive.write_keras_archive
        raced = []

        def write_while_another_process_saves(model, file, **kwargs):
            if not raced:
                raced.append(True)
                KerasTimestampedModelDataset(filepath=str(tmp_path / "h")).save(second)
            write(model, file, **kwargs)

        monkeypatch.setattr(_archive, "write_keras_archive", write_while_another_process_saves)
        history = KerasTimestampedModelDataset(filepath=str(tmp_path / "h"))
        history.save(first)

        newer, older = history.versions()
        assert (
            older == "2026-11-21T12.00.00.123456Z"
            and "2026-11-21T12.00.00.123457Z" <= newer <= "2026-11-21T12.00.00.124456Z"
        )
        pinned = KerasTimestampedModelDataset(
            filepath=str(tmp_path / "h"), load_version="2026-11-21T12.00.00.123456Z"
        )
        assert pinned.load().layers[1].units == 3  # the other process's model is intact
        assert history.load().layers[1].units == 2

    def test_no_version_mismatch_warning_on_save(self, tmp_path, trained_model, recwarn):
        KerasTimestampedModelDataset(filepath=str(tmp_path / "h")).save(trained_model)
        assert not [w for w in recwarn if "did not match load version" in str(w.message)]


class TestKerasTimestampedModelDatasetVersioned:
    def test_catalog_load_with_version_and_load_versions(self, tmp_path, data):
        config = {
            "history": {
                "type": "kedro_keras.KerasTimestampedModelDataset",
                "filepath": str(tmp_path / "h"),
                "keep_last": 5,
                "versioned": True,
            }
        }
        for model in models_of_width(data, 2, 3):
            DataCatalog.from_config(config).save("history", model)
        catalog = DataCatalog.from_config(config)
        oldest = catalog["history"].versions()[-1]

        assert catalog.load("history").layers[1].units == 3
        assert catalog.load("history", version=oldest).layers[1].units == 2
        assert (
            DataCatalog.from_config(config, load_versions={"history": oldest}).load("history").layers[1].units
            == 2
        )
        assert catalog["history"].list_versions(full_path=False) == catalog["history"].versions()

    @pytest.mark.parametrize("flag", [{}, {"versioned": True}])
    def test_load_versions_and_version_behave_alike_with_or_without_the_flag(self, tmp_path, data, flag):
        """--load-versions used to be ignored without versioned: true (the
        newest loaded instead), while catalog.load(version=...) pinned."""
        config = {
            "history": {
                "type": "kedro_keras.KerasTimestampedModelDataset",
                "filepath": str(tmp_path / "h"),
                **flag,
            }
        }
        for model in models_of_width(data, 2, 3):
            DataCatalog.from_config(config).save("history", model)
        oldest = DataCatalog.from_config(config)["history"].versions()[-1]

        pinned_for_the_run = DataCatalog.from_config(config, load_versions={"history": oldest})
        assert pinned_for_the_run.load("history").layers[1].units == 2
        assert DataCatalog.from_config(config).load("history", version=oldest).layers[1].units == 2
        assert DataCatalog.from_config(config).load("history").layers[1].units == 3

    def test_works_without_versioned_flag_in_catalog(self, tmp_path, trained_model):
        config = {
            "history": {"type": "kedro_keras.KerasTimestampedModelDataset", "filepath": str(tmp_path / "h")}
        }
        catalog = DataCatalog.from_config(config)
        catalog.save("history", trained_model)
        assert catalog.load("history").name == trained_model.name


class TestKerasTimestampedModelDatasetS3:
    def test_history_keep_last_and_pickle(self, s3_bucket, s3_credentials, data):
        history = KerasTimestampedModelDataset(
            filepath=f"{s3_bucket}/h", keep_last=2, credentials=s3_credentials
        )
        for model in models_of_width(data, 2, 3, 4):
            pickle.loads(pickle.dumps(history)).save(model)
        assert len(history.versions()) == 2
        assert pickle.loads(pickle.dumps(history)).load().layers[1].units == 4
        oldest_kept = history.versions()[-1]
        pinned = KerasTimestampedModelDataset(
            filepath=f"{s3_bucket}/h", credentials=s3_credentials, version=Version(oldest_kept, None)
        )
        assert pinned.load().layers[1].units == 3


def test_a_missing_bucket_is_named(s3_credentials):
    history = KerasTimestampedModelDataset(
        filepath="s3://no-such-bucket-4e1f/history", credentials=s3_credentials
    )
    with pytest.raises(DatasetError, match=r"the bucket 'no-such-bucket-4e1f' does not exist"):
        history.load()
