"""The view of a task's outputs: names, and what a node may send for it."""

from __future__ import annotations

import pytest

from node.outputs import OutputView, task_of
from overlay import BadMessage
from replication import DatasetName, FileManifest, chunk_hash

TASK = "ab" * 20


def test_only_a_task_id_with_out_names_a_task_output_dataset():
    assert task_of(DatasetName("alice", f"{TASK}.out")) == TASK
    for name in (TASK, f"{TASK}.outs", f"{TASK[:-1]}.out", f"{TASK.upper()}.out", "raw.out"):
        assert task_of(DatasetName("alice", name)) is None


def test_a_view_round_trips_and_garbage_is_refused():
    name = DatasetName("alice", f"{TASK}.out")
    m = FileManifest("0/out.txt", 3, chunk_hash(b"abc"), (chunk_hash(b"abc"),))
    view = OutputView(name, (m,), {"0/out.txt": b"\x01" * 20}, closed=True, version=1)
    back = OutputView.from_wire_untrusted(view.to_wire(), name)
    assert (back.files, back.holders, back.closed, back.version) == (
        (m,), {"0/out.txt": b"\x01" * 20}, True, 1)
    assert back.file("0/out.txt") == m and back.size == 3
    for bad in (None, [], {"view": "task_outputs"}, {**view.to_wire(), "name": "bob:x"},
                {**view.to_wire(), "files": [["../x", 1, b"h", b""]]}):
        with pytest.raises(BadMessage):
            OutputView.from_wire_untrusted(bad, name)
