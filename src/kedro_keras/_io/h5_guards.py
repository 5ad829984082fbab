"""What an HDF5 image's headers are checked for before Keras or we read an
array: the one header walk (``walk_headers``) and what is built on it (the
arrays a weights file stores, every array checked, every header read), and
``checked_dataset``: no link, no external or virtual storage, no declared
size far beyond what the file stores. The bytes themselves are read and
CRC-checked through ``h5``'s ``Window``.
"""

from __future__ import annotations

from typing import IO, Any, Callable

from kedro_keras._io.h5 import OPTIMIZER_GROUP, bounded

# Damaged files can make groups link back to each other or nest without end.
MAX_GROUP_DEPTH = 32
# Groups and arrays a header walk visits: a model with thousands of layers and
# its optimizer's state stays far below, and a walk past it takes minutes.
MAX_ENTRIES = 1_000_000


def _address(group: Any) -> Any:
    """Where a group's header is in the file: the same group reached twice has one."""
    import h5py

    info = h5py.h5o.get_info(group.id)
    return getattr(info, "token", None) or info.addr


def walk_headers(
    root: Any,
    member: Callable[[Any, str, str], Any],
    into: Callable[[Any, str, str], bool] | None = None,
    *,
    refuse_repeats: bool,
    refuse_depth: bool = True,
    seen: set[Any] | None = None,
) -> None:
    """The walk over an open HDF5 file's headers that every check here is
    built on: depth first from ``root``, each group's members in order.
    An explicit walk, not h5py's ``visititems``, which loops forever on a
    damaged file whose groups link back to each other.

    ``member(group, path, name)`` sees each member of a group walked (``path``
    is the group's, ``""`` for the root): it checks the link, opens the item
    and returns it, or returns None to pass it by. A group returned is walked
    (unless ``into(item, path, name)`` says no) the first time it is reached:
    reached again, it is refused if ``refuse_repeats`` and passed by if not.
    Groups nested more than ``MAX_GROUP_DEPTH`` deep are refused if
    ``refuse_depth``; if not, they are not walked (nor taken as reached: a
    shorter path may reach them later). ``seen``: groups taken as reached
    before the walk starts.
    """
    import h5py

    reached: set[Any] = set() if seen is None else seen
    entries = 0

    def walk(group: Any, path: str, depth: int) -> None:
        nonlocal entries
        if depth > MAX_GROUP_DEPTH:
            raise ValueError(f"the file's groups nest more than {MAX_GROUP_DEPTH} deep: it is damaged")
        for name in group:
            entries += 1  # every walk is bounded, not only the ones that count arrays
            if entries > MAX_ENTRIES:
                raise ValueError(
                    f"the file holds more than {MAX_ENTRIES} entries, far more than a Keras model's"
                )
            item = member(group, path, name)
            if not isinstance(item, h5py.Group):
                continue
            if depth >= MAX_GROUP_DEPTH and not refuse_depth:
                continue
            address = _address(item)
            if address in reached:
                if refuse_repeats:
                    raise ValueError(f"group '{path}/{name}' is reached twice: the file is damaged")
                continue
            reached.add(address)
            if into is None or into(item, path, name):
                walk(item, f"{path}/{name}" if path else name, depth + 1)

    walk(root, "", 0)


def read_all_headers(h5_file: Any) -> None:
    """Read every attribute of every group and array a hard link reaches:
    links are passed by, and a walk too deep or back to a group already
    read goes no further."""
    import h5py

    def read_attributes(item: Any) -> None:
        for key in item.attrs:
            item.attrs[key]

    def member(group: Any, path: str, name: str) -> Any:
        if not isinstance(group.get(name, getlink=True), h5py.HardLink):
            return None
        item = group[name]
        read_attributes(item)
        return item

    read_attributes(h5_file)
    walk_headers(h5_file, member, refuse_repeats=False, refuse_depth=False, seen={_address(h5_file)})


# Keras 2.13 files name the layers' groups after its checkpoint tracking;
# Keras 3 reads them under 'layers' (H5IOStore.get), so compare them so too.
_KERAS_2_13_LAYERS = "_layer_checkpoint_dependencies"


def stored_variable_groups(file: IO[bytes]) -> dict[str, dict[str, tuple[int, ...]]]:
    """The arrays of a ``.weights.h5`` image, by Keras's variable path.

    ``{"layers/dense": {"0": (4, 8), "1": (8,)}}`` for each ``.../vars``
    group outside the optimizer's: a builder's model is compared on its
    own state. Headers only, no array is read.
    """
    return {
        path: {key: shape for key, (shape, _) in arrays.items()}
        for path, arrays in array_headers(file).items()
        if path != OPTIMIZER_GROUP and not path.startswith(f"{OPTIMIZER_GROUP}/")
    }


def array_headers(file: IO[bytes]) -> dict[str, dict[str, tuple[tuple[int, ...], int]]]:
    """Every ``.../vars`` group of a ``.weights.h5`` image (the optimizer's
    too): ``{path: {key: (shape, bytes per item)}}``, from the headers only.
    Links, groups reached twice and nesting too deep are refused.
    """
    import h5py

    found: dict[str, dict[str, tuple[tuple[int, ...], int]]] = {}
    entries = 0

    def hard_link(group: Any, path: str, name: str) -> None:
        # Following a soft or external link opens whatever it names: another
        # file, or a FIFO that never answers. Keras writes none.
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            where = f"{path}/{name}" if path else name
            raise ValueError(f"refusing '{where}': it is a {type(link).__name__}, not data in this file")
        nonlocal entries
        entries += 1
        if entries > MAX_ENTRIES:
            raise ValueError(f"the file holds more than {MAX_ENTRIES} entries, far more than a Keras model's")

    def member(group: Any, path: str, name: str) -> Any:
        hard_link(group, path, name)
        return group[name]

    def into(item: Any, path: str, name: str) -> bool:
        if name != "vars":
            return True
        arrays = {}
        for key in item:
            hard_link(item, f"{path}/{name}", key)
            value = item[key]
            if isinstance(value, h5py.Dataset):
                arrays[key] = (tuple(value.shape), value.dtype.itemsize)
        found.setdefault(path.replace(_KERAS_2_13_LAYERS, "layers"), {}).update(arrays)
        return False

    with h5py.File(bounded(file), "r") as h5_file:
        walk_headers(h5_file, member, into, refuse_repeats=True)
    file.seek(0)
    return found


# A dataset may declare far more than the file stores (an unwritten dataset
# reads as zeros): a 7 KB file could make a load allocate gigabytes. Keras's
# files store every array uncompressed, so declared and stored sizes match.
_BOMB_FLOOR = 2**20
_MAX_EXPANSION = 16


def checked_dataset(group: Any, key: str) -> Any:
    """The dataset ``key`` of ``group``, refused unless it is plain data in
    this file: no link, no external or virtual storage, and no declared
    size far beyond what the file stores. Checked before anything is
    allocated, whatever Keras version is installed (Keras's own
    ``safe_get_h5_dataset`` is missing from several)."""
    import h5py

    link = group.get(key, getlink=True)
    if link is None:
        raise KeyError(key)
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"refusing '{key}': it is a {type(link).__name__}, not data in this file")
    dataset = group[key]
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"refusing '{key}': expected an array, found a {type(dataset).__name__}")
    if dataset.is_virtual or dataset.external:
        raise ValueError(f"refusing '{key}': its data lives outside this file")
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared > _BOMB_FLOOR and declared > _MAX_EXPANSION * stored:
        raise ValueError(
            f"refusing '{key}': it declares {declared} bytes ({dataset.shape}) but the file stores "
            f"{stored}: the file is damaged or built to exhaust memory"
        )
    return dataset


def check_all_datasets(file: IO[bytes]) -> None:
    """``checked_dataset`` on every array of an HDF5 image (headers only).

    For the paths where Keras's own code reads the arrays (the public-API
    fallback, legacy ``.h5``): a file that declares more than it stores, or
    keeps its data elsewhere, is refused before Keras allocates anything.
    Links and nesting too deep are refused; a group reached twice is checked once.
    """
    import h5py

    def member(group: Any, path: str, name: str) -> Any:
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            checked_dataset(group, name)  # refuses it, naming the kind of link
        item = group[name]
        if not isinstance(item, h5py.Group):
            checked_dataset(group, name)
        return item

    with h5py.File(bounded(file), "r") as h5_file:
        walk_headers(h5_file, member, refuse_repeats=False)
    file.seek(0)
