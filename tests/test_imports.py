"""_imports: the import-path rules that make custom objects safe to write in YAML."""

from __future__ import annotations

import collections.abc

import pytest

import keras_test_models
from kedro_keras._formats import imports as _imports


@pytest.mark.parametrize(
    "path, expected",
    [
        ("keras_test_models.Scale", keras_test_models.Scale),
        ("keras_test_models:Scale", keras_test_models.Scale),
        ("collections.abc.Mapping", collections.abc.Mapping),
        ("keras_test_models.TwoLayerNet.from_config", keras_test_models.TwoLayerNet.from_config),
    ],
)
def test_import_object(path, expected):
    assert _imports.import_object(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "os.system('x')",
        "a..b",
        "1abc.d",
        "a.b;c",
        "a b",
        "a.b:c:d",
        "lambda: 0",
        "__import__('os')",
        "os.path\n",
    ],
)
def test_only_dotted_names_are_imported(path):
    with pytest.raises(ValueError, match="not an import path"):
        _imports.import_object(path)


def test_module_whose_own_import_fails_is_reported_as_such(tmp_path, monkeypatch):
    (tmp_path / "broken_module.py").write_text("import no_such_dependency\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        _imports.import_object("broken_module.X")


def test_checking_a_path_runs_no_package_of_the_project(tmp_path, monkeypatch):
    """When the catalog is built, a builder's path into a project's
    pipelines is checked from the files: ``pipelines/__init__.py`` imports
    the nodes and so TensorFlow, which made ``kedro keras list`` take 9 s."""
    package = tmp_path / "proj_imports" / "pipelines"
    package.mkdir(parents=True)
    ran = tmp_path / "ran"
    (tmp_path / "proj_imports" / "__init__.py").write_text(f"open({str(ran)!r}, 'a').write('proj ')\n")
    (package / "__init__.py").write_text(f"open({str(ran)!r}, 'a').write('pipelines ')\n")
    (package / "nodes.py").write_text("def build(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _imports.check_import_path("proj_imports.pipelines.nodes.build")
    _imports.check_import_path("proj_imports.pipelines.nodes:build")
    assert not ran.exists()
    with pytest.raises(ValueError, match=r"there is no module 'proj_imports\.pipelines\.nodez'"):
        _imports.check_import_path("proj_imports.pipelines.nodez.build")
    assert ran.read_text() == "proj pipelines "  # only to word the error: the slow path imports


def test_resolve_custom_objects_forms():
    assert _imports.resolve_custom_objects(None) is None
    assert _imports.resolve_custom_objects(["keras_test_models.Scale"]) == {"Scale": keras_test_models.Scale}
    assert _imports.resolve_custom_objects({"S": keras_test_models.Scale}) == {"S": keras_test_models.Scale}
    with pytest.raises(ValueError, match="custom_objects must be a mapping"):
        _imports.resolve_custom_objects("keras_test_models.Scale")


def test_a_mistyped_module_is_named_as_the_missing_module():
    with pytest.raises(ValueError, match=r"there is no module 'keras_test_modelz'"):
        _imports.import_object("keras_test_modelz.Scale")
    with pytest.raises(ValueError, match=r"there is no module 'keras_test_models\.layerz'"):
        _imports.import_object("keras_test_models.layerz.Scale")
    with pytest.raises(ValueError, match=r"module 'keras_test_models' has no attribute 'Scal'"):
        _imports.import_object("keras_test_models.Scal")


@pytest.mark.parametrize(
    "path, named",
    [
        ("os.system", "os"),
        ("builtins.eval", "builtins"),
        ("subprocess:Popen", "subprocess"),
        ("importlib.import_module", "importlib"),
        ("shutil.rmtree", "shutil"),
        ("keras_test_models.os", "os"),  # a module model code imports
        ("keras_test_models_reexports.system", "posix"),  # os.system imported into a project module
    ],
)
def test_paths_into_modules_that_are_never_model_code_are_refused(path, named, tmp_path, monkeypatch):
    (tmp_path / "keras_test_models_reexports.py").write_text("from os import system\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ValueError, match=rf"refusing '{path}': it is (a module|\(or comes from\) module '{named}')"
    ):
        _imports.import_object(path)
