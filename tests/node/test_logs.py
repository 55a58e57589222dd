"""The logfmt lines of the node's log."""

from __future__ import annotations

import logging

from node.logs import LogfmtFormatter, RecentLogs


def record(**fields) -> logging.LogRecord:
    rec = logging.LogRecord("gridnode.test", logging.INFO, __file__, 1, "job.ended", None, None)
    rec.fields = fields
    return rec


def test_fields_are_quoted_where_needed():
    line = LogfmtFormatter().format(record(job=b"\x01\xab", reason='exited "3"\nat once',
                                           empty="", plain="ok", eq="a=b"))
    assert line.split(" ", 3)[1:3] == ["level=info", "logger=gridnode.test"]
    assert line.endswith('event=job.ended job=01ab reason="exited \\"3\\"\\nat once" '
                         'empty="" plain=ok eq="a=b"')


def test_each_record_is_formatted_once_for_every_handler():
    rec = record(n=1)
    recent = RecentLogs()
    recent.emit(rec)
    rec.fields["n"] = 2  # (never done by the node: shows the line was kept)
    assert LogfmtFormatter().format(rec) == recent.lines[-1][2]
    assert recent.lines[-1][2].endswith("n=1")
