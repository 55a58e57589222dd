"""``USER:TASK.out``: the output files of a task's finished jobs, as one dataset.

A job's output patterns are matched in its sandbox when it ends well; the
matching files go into the worker's chunk store and their manifests ride in
the job's result report, which the queue records for the one attempt that
finished the job (``JobRecord.outputs``). So a task's outputs are
registered exactly once per job however often a job ran: the queue's
single primary per job decides which attempt finished it, and a report from
any other attempt is refused. The dataset ``USER:TASK.out`` is that record
set seen as a dataset: its files are ``INDEX/PATH`` (a job outside a task:
``JOBID/PATH``), each held by the node that ran the job; it is closed once
every job of the task is final. It is a view, not a signed catalog record
(nodes cannot sign as the user): every node builds it from the job records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from overlay import BadMessage
from replication import DatasetName, FileManifest, ReplicationPolicy
from steering import JobRecord

_TASK_OUT = re.compile(r"([0-9a-f]{40})\.out\Z")


def task_of(name: DatasetName) -> str | None:
    """The task id an output dataset's name names, or None."""
    m = _TASK_OUT.match(name.name)
    return m.group(1) if m else None


@dataclass(frozen=True)
class OutputView:
    name: DatasetName
    files: tuple[FileManifest, ...]
    holders: dict[str, bytes] = field(default_factory=dict)  # file name -> node
    closed: bool = False
    version: int = 0  # jobs whose outputs are in
    policy: ReplicationPolicy = field(default_factory=lambda: ReplicationPolicy(1, 1))
    created: float = 0.0

    @property
    def size(self) -> int:
        return sum(m.size for m in self.files)

    @property
    def owner_name(self) -> str:
        return self.name.scope

    def file(self, name: str) -> FileManifest | None:
        return next((m for m in self.files if m.name == name), None)

    @classmethod
    def of_records(cls, name: DatasetName, records: list[JobRecord]) -> OutputView:
        """The view of these job records (those of the task whose user owns the scope)."""
        files: dict[str, FileManifest] = {}
        holders: dict[str, bytes] = {}
        jobs = [r for r in records if r.job.user.name == name.scope]
        done = 0
        for rec in jobs:
            if rec.state != "finished" or not rec.outputs or not rec.history:
                continue
            done += 1
            for wire in rec.outputs:
                try:
                    m = FileManifest.from_wire_untrusted(wire)
                except BadMessage:
                    continue  # a worker's bad manifest: that file is not offered
                if m.name not in files:
                    files[m.name] = m
                    holders[m.name] = rec.history[-1].node
        return cls(name, tuple(files[n] for n in sorted(files)), holders,
                   closed=bool(jobs) and all(r.final for r in jobs), version=done,
                   created=min((r.job.submitted for r in jobs), default=0))

    def to_wire(self) -> dict[str, Any]:
        return {"view": "task_outputs", "name": str(self.name),
                "files": [m.to_wire() for m in self.files],
                "holders": {n: h for n, h in self.holders.items()},
                "closed": self.closed, "version": self.version, "created": self.created}

    @classmethod
    def from_wire_untrusted(cls, data: Any, name: DatasetName) -> OutputView:
        if not (isinstance(data, dict) and data.get("view") == "task_outputs"
                and data.get("name") == str(name) and isinstance(data.get("files"), list)
                and isinstance(data.get("holders"), dict)):
            raise BadMessage("bad output dataset view")
        files = tuple(FileManifest.from_wire_untrusted(w) for w in data["files"])
        return cls(name, files, dict(data["holders"]), closed=bool(data.get("closed")),
                   version=int(data.get("version", 0)),
                   created=float(data.get("created", 0)))
