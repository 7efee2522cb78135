"""Atomic writes: a replaced file is whole, and as readable as any file written normally under the same umask."""

import os
import stat

import pytest

from pipeline_dalda.atomic import atomic_output, write_json_atomically


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json_atomically(tmp_path / "settings.json", {"a": 1})
        with atomic_output(tmp_path / "data" / "shard.parquet", temp_dir=tmp_path / "tmp") as temporary:
            temporary.write_bytes(b"rows")
        (tmp_path / "plain.txt").write_text("written the usual way")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "settings.json") == mode(tmp_path / "data" / "shard.parquet") == 0o666 & ~umask
    assert mode(tmp_path / "settings.json") == mode(tmp_path / "plain.txt")
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "bank.json"
    write_json_atomically(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed midway")
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert not list(tmp_path.glob("*.tmp"))
