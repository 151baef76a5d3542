"""Where the data lives: precedence of --data-dir, the environment and platform defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs
import pytest

from derm_workstation.core.errors import DataDirError, StorageError
from derm_workstation.core.paths import (
    APP_AUTHOR,
    APP_NAME,
    HOME_ENV,
    DataPaths,
    default_data_dir,
    resolve_data_paths,
)
from derm_workstation.core.workspace import Workspace

needs_non_root = pytest.mark.skipif(
    os.name == "nt" or os.geteuid() == 0,
    reason="permission bits do not stop root (or apply on Windows)",
)


def test_explicit_dir_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "from-env"))
    paths = resolve_data_paths(tmp_path / "explicit")
    assert paths.root == (tmp_path / "explicit").resolve()
    assert resolve_data_paths(str(tmp_path / "explicit")).root == paths.root


@pytest.mark.parametrize("explicit", [None, ""])
def test_environment_beats_the_platform_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: str | None
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "from-env"))
    assert default_data_dir() == tmp_path / "from-env"
    assert resolve_data_paths(explicit).root == (tmp_path / "from-env").resolve()


def test_environment_value_expands_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(HOME_ENV, "~/derm-data")
    assert resolve_data_paths().root == (tmp_path / "derm-data").resolve()


def test_explicit_dir_expands_home_and_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_paths("~/d").root == (tmp_path / "home" / "d").resolve()
    monkeypatch.chdir(tmp_path)
    rel = resolve_data_paths("relative/data")
    assert rel.root.is_absolute()
    assert rel.root == (tmp_path / "relative" / "data").resolve()


@pytest.mark.parametrize("env_value", [None, ""])
def test_platform_default_without_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str | None
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if env_value is None:
        monkeypatch.delenv(HOME_ENV, raising=False)
    else:
        monkeypatch.setenv(HOME_ENV, env_value)  # an empty variable is ignored
    expected = Path(platformdirs.user_data_dir(APP_NAME, APP_AUTHOR))
    assert default_data_dir() == expected
    assert resolve_data_paths().root == expected.resolve()


def test_layout_of_the_data_folder(tmp_path: Path) -> None:
    p = DataPaths(tmp_path)
    assert p.database == tmp_path / "derm.sqlite3"
    assert p.images == tmp_path / "images"
    assert p.cache == tmp_path / "cache"
    assert p.backups == tmp_path / "backups"
    assert p.logs == tmp_path / "logs"
    assert p.settings_file == tmp_path / "settings.json"
    assert p.database_url() == "sqlite:///" + (tmp_path / "derm.sqlite3").as_posix()


def test_ensure_creates_the_folders_and_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "data"
    paths = resolve_data_paths(root)
    assert paths.ensure() is paths
    for sub in (paths.images, paths.cache, paths.backups, paths.logs):
        assert sub.is_dir()
    (paths.images / "keep").write_text("x")
    paths.ensure()
    assert (paths.images / "keep").read_text() == "x"


def test_ensure_read_only_mode_creates_only_the_root(tmp_path: Path) -> None:
    paths = resolve_data_paths(tmp_path / "data").ensure(writable=False)
    assert paths.root.is_dir()
    assert list(paths.root.iterdir()) == []


def test_a_path_beneath_a_regular_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("I am a file")
    paths = resolve_data_paths(blocker / "data")
    with pytest.raises(DataDirError, match="Cannot create the data folder") as err:
        paths.ensure()
    assert str(blocker / "data") in str(err.value)
    assert isinstance(err.value, StorageError) and err.value.exit_code == 1
    assert "Errno" not in str(err.value)  # a sentence, not a raw OS error repr
    assert blocker.read_text() == "I am a file"


def test_a_regular_file_as_the_data_folder_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_text("file")
    with pytest.raises(DataDirError, match=str(f)):
        resolve_data_paths(f).ensure()
    assert f.read_text() == "file"


def test_a_file_in_place_of_a_sub_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "images").write_text("oops")
    with pytest.raises(DataDirError, match=r"Cannot create .*images"):
        resolve_data_paths(root).ensure()


def test_workspace_open_reports_an_unusable_data_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataDirError):
        Workspace.open(blocker / "data")


def test_workspace_open_uses_the_data_folder(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "data")
    try:
        assert ws.paths.root == (tmp_path / "data").resolve()
        assert ws.paths.database.is_file()
        assert ws.images.root == ws.paths.images
        assert ws.location == str(ws.paths.root)
    finally:
        ws.close()


def test_workspace_open_with_an_explicit_database_url(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.sqlite3"
    ws = Workspace.open(tmp_path / "data", db_url="sqlite:///" + other.as_posix())
    try:
        assert other.is_file()
        assert not ws.paths.database.exists()
    finally:
        ws.close()


@needs_non_root
def test_a_read_only_data_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(DataDirError, match="read-only"):
            resolve_data_paths(root).ensure()
        # Read-only use (e.g. inspecting a backup) is allowed.
        assert resolve_data_paths(root).ensure(writable=False).root == root.resolve()
    finally:
        root.chmod(0o755)


@needs_non_root
def test_a_folder_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(DataDirError, match="Cannot create the data folder"):
            resolve_data_paths(parent / "data").ensure()
    finally:
        parent.chmod(0o755)


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A real read-only file system (tmpfs mounted ro); skipped where we may not mount."""
    import shutil
    import subprocess

    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root on Linux to mount a read-only tmpfs")
    target = tmp_path / "ro"
    target.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("this sandbox does not allow mounting")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_a_read_only_file_system_is_reported(read_only_mount: Path) -> None:
    with pytest.raises(DataDirError, match="read-only"):
        DataPaths(read_only_mount).ensure()


def test_cli_on_a_read_only_data_dir_says_so_and_exits_1(read_only_mount: Path) -> None:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "derm_workstation", "--data-dir",
                        str(read_only_mount), "queue", "list"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "read-only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
