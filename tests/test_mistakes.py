"""Mistakes a user makes, each named by its true cause.

One table: how the mistake is set up, what the user then does, the words the
DatasetError must hold. Every case also checks that nothing was written or
lost: the folder holds exactly what it held before. (S3-only causes, a
missing bucket, a stalled endpoint, are in the dataset modules and in
test_bounded_waits.py.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version

from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset, KerasWeightsDataset


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


@dataclass
class Mistake:
    arrange: Callable[[Path, keras.Model], None]
    act: Callable[[Path, keras.Model], object]
    says: str  # a regular expression the message must match


def _versioned_model(folder, model):
    KerasModelDataset(filepath=str(folder / "clf.keras"), version=Version(None, None)).save(model)


def _versioned_weights(folder, model):
    KerasWeightsDataset(filepath=str(folder / "clf.weights.h5"), version=Version(None, None)).save(model)


def _savedmodel_folder(folder, model):
    (folder / "clf.keras" / "variables").mkdir(parents=True)
    (folder / "clf.keras" / "saved_model.pb").write_bytes(b"\x08\x01")


def _a_folder(folder, model):
    (folder / "clf.keras" / "inside").mkdir(parents=True)


def _a_file(folder, model):
    (folder / "history").write_bytes(b"a file, not a folder")


def _nothing(folder, model):
    pass


def _catalog(entry):
    return lambda folder, model: DataCatalog.from_config({"x": entry(folder)})["x"]


MISTAKES = {
    "versioned: true turned off on an entry with version folders": Mistake(
        _versioned_model,
        lambda folder, model: KerasModelDataset(filepath=str(folder / "clf.keras")).load(),
        r"clf\.keras' is a folder of versions .*Add versioned: true",
    ),
    "a weights path that is a folder of versions": Mistake(
        _versioned_weights,
        lambda folder, model: KerasWeightsDataset(filepath=str(folder / "clf.weights.h5")).load(),
        r"clf\.weights\.h5' is a folder, not a weights file .*versioned: true",
    ),
    "a SavedModel folder where a model file is expected": Mistake(
        _savedmodel_folder,
        lambda folder, model: KerasModelDataset(filepath=str(folder / "clf.keras")).load(),
        r"is a TensorFlow SavedModel folder.*Keras 3 cannot load.*tf-keras",
    ),
    "a save over a folder": Mistake(
        _a_folder,
        lambda folder, model: KerasModelDataset(filepath=str(folder / "clf.keras")).save(model),
        r"clf\.keras' is a folder; a model is saved as a file.*previously saved there is unchanged",
    ),
    "a history filepath that is a file, on load": Mistake(
        _a_file,
        lambda folder, model: KerasTimestampedModelDataset(filepath=str(folder / "history")).load(),
        r"history' is a file, but KerasTimestampedModelDataset's filepath is the folder",
    ),
    "a history filepath that is a file, on save": Mistake(
        _a_file,
        lambda folder, model: KerasTimestampedModelDataset(filepath=str(folder / "history")).save(model),
        r"history' is a file, but KerasTimestampedModelDataset's filepath is the folder",
    ),
    "an empty history": Mistake(
        _nothing,
        lambda folder, model: KerasTimestampedModelDataset(filepath=str(folder / "history")).load(),
        r"No model has been saved in .*history' yet",
    ),
    "a model file that does not exist": Mistake(
        _nothing,
        lambda folder, model: KerasModelDataset(filepath=str(folder / "clf.keras")).load(),
        r"No Keras model at .*clf\.keras': the file does not exist",
    ),
    "a mistyped module in a builder's import path, when the catalog is built": Mistake(
        _nothing,
        _catalog(
            lambda folder: {
                "type": "kedro_keras.KerasWeightsDataset",
                "filepath": str(folder / "clf.weights.h5"),
                "architecture": "keras_test_models.modelz.build_functional",
            }
        ),
        r"architecture: cannot import .*there is no module 'keras_test_models\.modelz'",
    ),
    "a mistyped module in custom_objects, when the catalog is built": Mistake(
        _nothing,
        _catalog(
            lambda folder: {
                "type": "kedro_keras.KerasModelDataset",
                "filepath": str(folder / "clf.keras"),
                "load_args": {"custom_objects": ["keras_test_modelz.Scale"]},
            }
        ),
        r"custom_objects: cannot import .*there is no module 'keras_test_modelz'",
    ),
    "a custom object from a module that is never model code": Mistake(
        _nothing,
        _catalog(
            lambda folder: {
                "type": "kedro_keras.KerasModelDataset",
                "filepath": str(folder / "clf.keras"),
                "load_args": {"custom_objects": ["os.system"]},
            }
        ),
        r"refusing 'os\.system': it is \(or comes from\) module 'os', which is never model code",
    ),
    "a weights-only file name for a whole model": Mistake(
        _nothing,
        lambda folder, model: KerasModelDataset(filepath=str(folder / "clf.weights.h5")),
        r"is a weights-only file name; use kedro_keras\.KerasWeightsDataset",
    ),
    "an unknown load argument (a typo)": Mistake(
        _nothing,
        lambda folder, model: KerasModelDataset(
            filepath=str(folder / "clf.keras"), load_args={"compiel": False}
        ),
        r"Unknown load_args \['compiel'\] for '.*clf.keras'; the ones understood are",
    ),
}


DOUBLED_STOP = re.compile(r"(?<![./])\.\.(?=\s|$)")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_named_by_its_true_cause_and_changes_nothing(tmp_path, model, case):
    mistake = MISTAKES[case]
    mistake.arrange(tmp_path, model)
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=mistake.says) as raised:
        mistake.act(tmp_path, model)
    assert snapshot(tmp_path) == before
    # A quoted cause's own full stop and the message's: one is enough (#30).
    assert not DOUBLED_STOP.search(str(raised.value)), str(raised.value)


def test_a_doubled_full_stop_becomes_one_but_an_ellipsis_and_a_path_stay():
    from kedro_keras._log import SafeDatasetError

    assert str(SafeDatasetError("Refusing 'a.keras': it is damaged.. Restore it.")) == (
        "Refusing 'a.keras': it is damaged. Restore it."
    )
    assert str(SafeDatasetError("cause..")) == "cause."
    assert str(SafeDatasetError("wait... then ../up and a/.. here")) == "wait... then ../up and a/.. here"
