"""The one atomic writer behind checkpoints and token shards: the target is the old file or the whole new one."""

import pytest

from speechtrain.atomic import atomic_write, atomic_write_bytes


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "tokens.json"
    atomic_write_bytes(path, b"old")

    def fails_halfway(file):
        file.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails_halfway)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["tokens.json"]


def test_bytes_replace_the_file_and_folders_are_created(tmp_path):
    path = tmp_path / "shards" / "shard-00000.jsonl"
    atomic_write_bytes(path, b"first\n")
    atomic_write_bytes(path, b"second\n")
    assert path.read_bytes() == b"second\n" and [p.name for p in path.parent.iterdir()] == [path.name]
