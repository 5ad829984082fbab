"""Fuzzing the loaders with damaged real files (hypothesis).

Real ``.keras``, legacy ``.h5`` and ``.weights.h5`` files of a small fitted
model are damaged in up to three steps each: bytes flipped, the file
truncated, chunks spliced in from another file (the same format for a model
with other weights, or another format), regions duplicated, zeroed, deleted
or filled with random bytes. Every case is loaded through the dataset in a
child process (``reliability_helpers/load_worker.py``) with a time limit, so
that a crash in HDF5 or a hang is caught and reported with the input saved
for reproduction. A quarter of the cases go through the public-API fallback.

Each case must either load or raise ``kedro.io.DatasetError`` that names the
file; anything else fails. A ``.keras`` file that loads must hold exactly the
weights and optimizer state of a model that was saved (the zip's CRC-32s
cover every member), never a mixture. No temporary file may be left behind.
``.h5`` and ``.weights.h5`` files we write end with a CRC-32 trailer, but
damage that also breaks the trailer (its magic or size) leaves the file
unchecked, as a file written by Keras is: for them, how many damaged files
load with other weights is counted and printed, not failed
(docs/guarantees.md).

``make test`` runs ``KEDRO_KERAS_FUZZ_EXAMPLES`` cases per format (default
400 under TensorFlow, 150 under the other backends, half of that for legacy
``.h5``: see ``examples_for``); ``make fuzz`` sets it to 5000 for every format. Failing inputs are kept in ``KEDRO_KERAS_FUZZ_ARTIFACTS`` (default
``<tmp>/fuzz-failures-kedro-keras``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import keras
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import keras_test_models
from conftest import fit
from kedro_keras import KerasModelDataset, KerasWeightsDataset
from reliability_helpers import weights_digest
from reliability_helpers.workers import LoadWorker, WorkerDied

# Fewer under the other backends' runs of the suite: the parsers are the same.
_DEFAULT_EXAMPLES = "400" if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" else "150"
EXAMPLES = int(os.environ.get("KEDRO_KERAS_FUZZ_EXAMPLES", _DEFAULT_EXAMPLES))
# Unless the count is set: half as many legacy .h5 cases. Each of their loads
# first reads the headers in a child process (the guard against libhdf5's
# endless loops), 0.6 s a case against 0.03 s for the other formats: 400 of
# them were four minutes of `make test`. `make fuzz` runs 5,000 of each.
_H5_SHARE = 1.0 if "KEDRO_KERAS_FUZZ_EXAMPLES" in os.environ else 0.5


def examples_for(kind: str) -> int:
    return max(1, round(EXAMPLES * _H5_SHARE)) if kind == "h5" else EXAMPLES


CASE_TIMEOUT = float(os.environ.get("KEDRO_KERAS_FUZZ_CASE_TIMEOUT", "15"))
# Formats whose hangs are counted (and their inputs kept) instead of failing,
# e.g. KEDRO_KERAS_FUZZ_KNOWN_HANGS=h5 to survey a new libhdf5. Empty by
# default: every hang fails. (libhdf5's endless loop on some damaged legacy
# .h5 attributes, HDFGroup/hdf5#1707, is caught by the loader's child-process
# header check: test_reliability_integrity.py::test_damaged_legacy_h5_does_not_hang.)
KNOWN_HANGS = {kind for kind in os.environ.get("KEDRO_KERAS_FUZZ_KNOWN_HANGS", "").split(",") if kind}
FILE_NAMES = {"keras": "model.keras", "h5": "model.h5", "weights": "model.weights.h5"}
# Inputs that fail are kept here (pytest's own temporary folders are rotated).
ARTIFACTS = Path(
    os.environ.get("KEDRO_KERAS_FUZZ_ARTIFACTS", Path(tempfile.gettempdir()) / "fuzz-failures-kedro-keras")
)

settings.register_profile(
    "kedro-keras-fuzz",
    max_examples=EXAMPLES,
    # Each case has its own time limit in the worker (a hang is a failure
    # with the input saved); hypothesis's deadline only guards against a
    # worker that stops answering altogether.
    deadline=(CASE_TIMEOUT + 60) * 1000,
    database=None,  # nothing written into the repository
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    # No shrinking: a failing input is saved as it is, and shrinking a hang
    # costs a worker restart per attempt.
    phases=[Phase.explicit, Phase.generate],
    print_blob=True,
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory, data):
    """Files of two models with one architecture and different weights, and
    what loading each gives."""
    keras.utils.set_random_seed(3)
    folder = tmp_path_factory.mktemp("fuzz-originals")
    found: dict[str, dict] = {}
    for label, epochs in (("a", 2), ("b", 4)):
        model = fit(keras_test_models.build_functional(hidden=4), data, epochs=epochs)
        place = folder / label
        place.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            KerasModelDataset(filepath=str(place / "model.keras")).save(model)
            KerasModelDataset(filepath=str(place / "model.h5")).save(model)
        KerasWeightsDataset(filepath=str(place / "model.weights.h5")).save(model)
        found[label] = {kind: (place / name).read_bytes() for kind, name in FILE_NAMES.items()}
        found[label]["architecture"] = (place / "model.architecture.json").read_bytes()
        found[label]["path"] = place
    return found


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    worker = LoadWorker(tmp_path_factory.mktemp("fuzz-worker"), timeout=CASE_TIMEOUT)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def undamaged_digests(originals, worker):
    """What the worker gets from each undamaged file (the reference digests)."""
    digests = {}
    for label in ("a", "b"):
        for kind in FILE_NAMES:
            result = worker.load(kind, originals[label]["path"] / FILE_NAMES[kind])
            assert result["outcome"] == "loaded", result
            digests[label, kind] = result["digest"]
    assert digests["a", "keras"] != digests["b", "keras"]
    return digests


# --------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------


def positions(size: int) -> st.SearchStrategy[int]:
    """Anywhere, with extra weight on the first and last few hundred bytes
    (HDF5 superblock, zip central directory)."""
    last = max(size - 1, 0)
    return st.one_of(
        st.integers(0, last),
        st.integers(max(0, last - 600), last),
        st.integers(0, min(last, 600)),
    )


def mutation(size: int, donors: int) -> st.SearchStrategy[tuple]:
    at = positions(size)
    length = st.integers(1, 4096)
    return st.one_of(
        st.tuples(st.just("flip"), at, st.integers(1, 255)),
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("splice"), st.integers(0, donors - 1), at, at, length),
        st.tuples(st.just("duplicate"), at, length, at),
        st.tuples(st.just("zero"), at, length),
        st.tuples(st.just("delete"), at, length),
        st.tuples(st.just("insert"), at, st.binary(min_size=1, max_size=64)),
    )


def apply(data: bytes, steps: list[tuple], donors: list[bytes]) -> bytes:
    out = bytearray(data)
    for step in steps:
        kind, args = step[0], step[1:]
        n = max(len(out), 1)
        if kind == "flip" and out:
            out[args[0] % n] ^= args[1]
        elif kind == "truncate":
            del out[args[0] % n :]
        elif kind == "splice":
            donor = donors[args[0]]
            start = args[1] % max(len(donor), 1)
            chunk = donor[start : start + args[3]]
            at = args[2] % n
            out[at : at + len(chunk)] = chunk
        elif kind == "duplicate":
            start = args[0] % n
            chunk = bytes(out[start : start + args[1]])
            at = args[2] % n
            out[at:at] = chunk
        elif kind == "zero":
            start = args[0] % n
            end = min(len(out), start + args[1])
            out[start:end] = bytes(end - start)
        elif kind == "delete":
            start = args[0] % n
            del out[start : start + args[1]]
        elif kind == "insert":
            out[args[0] % n : args[0] % n] = args[1]
    return bytes(out)


def donors_for(originals, kind: str) -> list[tuple[str, bytes]]:
    """Donor files for splices: the same format of model b first, then the others of model a."""
    return [("b", originals["b"][kind])] + [
        ("a", originals["a"][other]) for other in FILE_NAMES if other != kind
    ]


# --------------------------------------------------------------------------
# The fuzz tests
# --------------------------------------------------------------------------


class Fuzzer:
    def __init__(self, kind, originals, worker, digests, folder: Path, artifacts: Path) -> None:
        self.kind, self.originals, self.worker, self.digests = kind, originals, worker, digests
        self.folder, self.artifacts = folder, artifacts
        self.donors = donors_for(originals, kind)
        self.stats: Counter = Counter()

    def save_input(self, data: bytes, steps) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        name = f"{hashlib.sha256(data).hexdigest()[:16]}-{FILE_NAMES[self.kind]}"
        path = self.artifacts / name
        path.write_bytes(data)
        if self.kind == "weights":
            (self.artifacts / name.replace(".weights.h5", ".architecture.json")).write_bytes(
                self.originals["a"]["architecture"]
            )
        (self.artifacts / f"{name}.steps.txt").write_text(repr(steps) + "\n")
        return path  # reproduce: python -m reliability_helpers.load_worker, or load it with the dataset

    def run(self, steps: list[tuple], public_api: bool) -> None:
        base = self.originals["a"][self.kind]
        data = apply(base, steps, [donor for _, donor in self.donors])
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        path = self.folder / FILE_NAMES[self.kind]
        path.write_bytes(data)
        expected = {path.name}
        if self.kind == "weights":
            (self.folder / "model.architecture.json").write_bytes(self.originals["a"]["architecture"])
            expected.add("model.architecture.json")
        leftovers = self.worker.temp_leftovers()

        try:
            result = self.worker.load(self.kind, path, public_api=public_api)
        except WorkerDied as died:
            saved = self.save_input(data, steps)
            if self.kind in KNOWN_HANGS and "did not finish" in str(died):
                self.stats["cases"] += 1
                self.stats["hung (known)"] += 1
                return
            raise AssertionError(f"{died}\ninput saved to {saved}") from None

        self.stats["cases"] += 1
        self.stats["public API"] += public_api
        outcome = result["outcome"]
        if outcome == "other":
            saved = self.save_input(data, steps)
            pytest.fail(
                f"loading a damaged {FILE_NAMES[self.kind]} raised {result['type']}, not DatasetError "
                f"(input saved to {saved}):\n{result['traceback']}"
            )
        if outcome == "dataset_error":
            self.stats["DatasetError"] += 1
            assert str(path) in result["message"], f"the error does not name the file: {result['message']}"
        else:
            same = result["digest"] == self.digests["a", self.kind]
            self.stats["loaded, same weights" if same else "loaded, other weights"] += 1
            if self.kind == "keras":
                allowed = {self.digests["a", "keras"]}
                if any(step[0] == "splice" and step[1] == 0 for step in steps):
                    allowed.add(self.digests["b", "keras"])  # the other model's bytes, whole and consistent
                if result["digest"] not in allowed:
                    saved = self.save_input(data, steps)
                    pytest.fail(
                        "a damaged .keras file loaded with weights no model was saved with "
                        f"(input saved to {saved})"
                    )
        assert self.worker.temp_leftovers() == leftovers, "a load left temporary files behind"
        assert {p.name for p in self.folder.iterdir()} == expected, "a load wrote beside the model file"


@pytest.fixture(scope="module")
def fuzz_totals():
    totals: dict[str, Counter] = {}
    yield totals


@pytest.mark.parametrize("kind", list(FILE_NAMES))
def test_damaged_files_load_or_raise_dataset_error(
    kind, originals, worker, undamaged_digests, tmp_path, fuzz_totals, capsys
):
    fuzzer = Fuzzer(kind, originals, worker, undamaged_digests, tmp_path / "case", ARTIFACTS)
    size = len(originals["a"][kind])
    steps_strategy = st.lists(mutation(size, len(fuzzer.donors)), min_size=1, max_size=3)

    @settings(settings.get_profile("kedro-keras-fuzz"), max_examples=examples_for(kind))
    @given(steps=steps_strategy, public_api=st.sampled_from([False, False, False, True]))
    def case(steps, public_api):
        fuzzer.run(steps, public_api)

    start = time.monotonic()
    case()
    seconds = time.monotonic() - start
    stats = fuzzer.stats
    fuzz_totals[kind] = stats
    with capsys.disabled():
        print(
            f"\n[fuzz {FILE_NAMES[kind]}] {stats['cases']} damaged files in {seconds:.0f} s "
            f"({stats['public API']} through the public-API fallback): "
            f"{stats['DatasetError']} DatasetError, {stats['loaded, same weights']} loaded with the saved weights, "
            f"{stats['loaded, other weights']} loaded with other weights"
            + (f", {stats['hung (known)']} hung in libhdf5" if stats["hung (known)"] else "")
        )
    assert stats["cases"] >= examples_for(kind)
    # The fuzzing reached the parsers: most cases are refused, and some damage
    # (e.g. in unused bytes) is harmless.
    assert stats["DatasetError"] > 0


def test_undamaged_files_load_in_the_worker(originals, undamaged_digests, data):
    """The reference the fuzz compares with is the saved model itself."""
    model = KerasModelDataset(filepath=str(originals["a"]["path"] / "model.keras")).load()
    assert weights_digest(model, optimizer=True) == undamaged_digests["a", "keras"]
