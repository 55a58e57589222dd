"""Datasets on real node processes: put, get, replicas, corruption, nodes dying."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from node.client import Client
from node.errors import UserError
from overlay import RpcError
from replication import CHUNK_SIZE, DatasetRecord, ReplicationPolicy
from steering import JobSpec
from tests.integration.grid import Grid

pytestmark = pytest.mark.slow


def make_files(root: Path) -> dict[str, bytes]:
    """Files of 0 bytes, 1 byte, exactly one chunk and several chunks."""
    files = {"empty": b"", "one": b"x", "sub/exact": os.urandom(CHUNK_SIZE),
             "sub/many": os.urandom(2 * CHUNK_SIZE + 5)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


async def wait_holders(c: Client, name: str, count: int, limit: float = 60) -> list[str]:
    with trio.fail_after(limit):
        while True:
            info = await c.replicas(name)
            complete = [h["id"] for h in info["holders"] if h["complete"]]
            if len(complete) >= count:
                return complete
            await trio.sleep(0.3)


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """The real command, as a user runs it: exit code, stdout, stderr."""
    proc = await trio.run_process([sys.executable, "-m", "node", *argv], capture_stdout=True,
                                  capture_stderr=True, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_put_through_one_node_get_through_another(grid4, tmp_path):
    g = grid4
    src = tmp_path / "src"
    files = make_files(src)
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        rec = await c.put("raw", [src], close=True)
        assert isinstance(rec, DatasetRecord) and rec.closed
        assert sorted(f.name for f in rec.files) == sorted(files)
        holders = await wait_holders(c, str(rec.name), 2)  # the policy's minimum
    assert len(holders) >= 2
    async with Client.connect(g.address(2), user_dir=g.user_dir) as c:
        listed = await c.datasets()
        assert [str(r.name) for r in listed] == [str(rec.name)]
        out = tmp_path / "out"
        paths = await c.get(str(rec.name), out)
        assert sorted(p.relative_to(out).as_posix() for p in paths) == sorted(files)
        for name, data in files.items():
            assert (out / name).read_bytes() == data
        one = tmp_path / "one"
        await c.get(f"{rec.name}/sub/many", one)
        assert (one / "sub/many").read_bytes() == files["sub/many"]
        with pytest.raises(UserError, match="has no file 'nope'"):
            await c.get(f"{rec.name}/nope", one)
    # A closed dataset takes no more files; an unknown one is an error (one line, exit 1).
    code, _, err = await run_cli("put", "--via", g.address(1), "--user-dir", str(g.user_dir),
                           str(rec.name), str(src / "one"))
    assert code != 0 and "closed" in err and "Traceback" not in err
    code, _, err = await run_cli("get", "--via", g.address(1), "--user-dir", str(g.user_dir),
                           "nobody:nothing", "--out", str(tmp_path))
    assert code != 0 and "nobody:nothing" in err and len(err.strip().splitlines()) == 1
    for bad, why in ((["bad name!", str(src / "one")], "bad name!"),
                     (["fine", str(tmp_path / "missing")], "no such file or directory")):
        code, _, err = await run_cli("put", "--via", g.address(1), "--user-dir", str(g.user_dir),
                                     *bad)
        assert code != 0 and why in err and len(err.strip().splitlines()) == 1, err
    code, out_text, _ = await run_cli("ls", "--via", g.address(3), "--user-dir", str(g.user_dir),
                                str(rec.name), "--json")
    assert code == 0 and '"sub/many"' in out_text


async def test_a_corrupt_chunk_on_disk_is_quarantined_and_fetched_again(grid4, tmp_path):
    g = grid4
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(CHUNK_SIZE + 100)
    (src / "f").write_bytes(data)
    async with Client.connect(g.address(1), user_dir=g.user_dir) as c:
        rec = await c.put("corrupt-me", [src / "f"])
        await wait_holders(c, str(rec.name), 2)
    chunk = rec.files[0].chunks[0].hex()
    path = g.dir(1) / "chunks" / chunk[:2] / chunk
    os.chmod(path, 0o600)
    raw = bytearray(path.read_bytes())
    raw[10:13] = b"\xff\x00\xff"
    path.write_bytes(bytes(raw))
    async with Client.connect(g.address(1), user_dir=g.user_dir) as c:
        await c.get(str(rec.name), tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == data
    assert any((g.dir(1) / "chunks" / "quarantine").iterdir())


async def test_holder_killed_mid_transfer_and_putting_node_killed(grid4, tmp_path):
    g = grid4
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(32 * CHUNK_SIZE)
    (src / "big").write_bytes(data)
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        rec = await c.put("big", [src / "big"], policy=ReplicationPolicy(3, 5))
        holders = [g.ids.index(bytes.fromhex(h)) for h in await wait_holders(c, "big", 3)]
    # The putting node dies after the acknowledgement: replicas exist elsewhere.
    g.kill(0)
    others = [i for i in holders if i != 0]
    [reader] = [i for i in range(1, 4) if i not in others]
    victim = others[0]
    async with Client.connect(g.address(reader), user_dir=g.user_dir) as c:
        async with trio.open_nursery() as nursery:
            async def kill_when_the_transfer_runs() -> None:
                log = g.dir(reader) / "node.log"
                while "transfer.started" not in log.read_text(errors="replace"):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                g.kill(victim)  # a source dies while chunks flow from it
            nursery.start_soon(kill_when_the_transfer_runs)
            await c.get(str(rec.name), tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data
    assert g.procs[victim].poll() is not None
    log = (g.dir(reader) / "node.log").read_text()
    assert f"event=transfer.done dataset={rec.name} chunks=32" in log, log[-3000:]


async def test_a_full_quota_refuses_the_put_and_registers_nothing(short_tmp, tmp_path):
    g = Grid(short_tmp, 2)
    g.prepare()
    config = g.dir(1) / "config.toml"
    config.write_text(config.read_text().replace("quota_gb = 10.0", "quota_gb = 0.01"))
    for i in range(2):
        g.start(i)
    try:
        await g.converge()
        src = tmp_path / "src"
        src.mkdir()
        (src / "fits").write_bytes(os.urandom(1000))
        (src / "too-big").write_bytes(os.urandom(3 * CHUNK_SIZE))
        async with Client.connect(g.address(1), user_dir=g.user_dir) as c:
            with pytest.raises(RpcError, match="quota"):
                await c.put("full", [src])
            assert [str(r.name) for r in await c.datasets()] == []
            scope = c.identity.creds.cert.name
            with pytest.raises(RpcError, match=f"no dataset {scope}:full"):
                await c.dataset("full")
            rec = await c.put("small", [src / "fits"])  # what fits still goes in
            assert rec.size == 1000
    finally:
        g.stop()
    assert "Traceback" not in g.logs(full=True)


async def test_jobs_read_a_dataset_and_their_outputs_become_one(grid4, tmp_path):
    g = grid4
    src = tmp_path / "src"
    src.mkdir()
    (src / "numbers.txt").write_text("1\n2\n3\n")
    task = os.urandom(20).hex()
    async with Client.connect(g.address(3), user_dir=g.user_dir) as c:
        rec = await c.put("numbers", [src])
        lines = f"inputs/{rec.name.scope}/numbers/numbers.txt"
        ids = await c.submit([JobSpec.from_mapping({
            "argv": ["sh", "-c", f"mkdir -p out; wc -l < {lines} > out/count.txt; "
                     f"echo {i} > out/index.txt; cat {lines} | wc -l"],
            "inputs": [str(rec.name)], "outputs": ["out/*.txt"], "memory_mb": 64,
            "task_id": task, "index": i}) for i in range(3)])
        with trio.fail_after(60):
            done = [(await c.wait(j, poll=0.3))[0] for j in ids]
        assert [d.state for d in done] == ["finished"] * 3, done
        assert all(len(d.outputs) == 2 for d in done)
        async with c.logs(ids[0]) as chunks:
            out = b"".join([x async for x in chunks])
    assert out.strip() == b"3"
    # The outputs are one dataset, readable through any node.
    name = f"{rec.name.scope}:{task}.out"
    async with Client.connect(g.address(1), user_dir=g.user_dir) as c:
        view = await c.dataset(name)
        assert view.closed and view.version == 3
        assert [f.name for f in view.files] == [f"{i}/out/{n}" for i in range(3)
                                                for n in ("count.txt", "index.txt")]
        await c.get(name, tmp_path / "got")
    for i in range(3):
        assert (tmp_path / "got" / f"{i}/out/count.txt").read_text().strip() == "3"
        assert (tmp_path / "got" / f"{i}/out/index.txt").read_text().strip() == str(i)
    code, _, err = await run_cli("put", "--via", g.address(2), "--user-dir", str(g.user_dir),
                                 name, str(src / "numbers.txt"))
    assert code != 0 and "outputs of a task" in err


async def test_a_job_that_ran_twice_registers_its_outputs_once(grid4, tmp_path):
    g = grid4
    task = os.urandom(20).hex()
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        [j] = await c.submit([JobSpec.from_mapping({
            "argv": ["sh", "-c", "echo $GRIDNODE_ATTEMPT > made.txt; sleep 2"],
            "outputs": ["made.txt"], "memory_mb": 64, "task_id": task, "index": 0})])
        with trio.fail_after(30):
            while (rec := await c.job(j)).state != "running":  # noqa: ASYNC110 - remote
                await trio.sleep(0.1)
    first = g.ids.index(rec.lease.worker)
    g.kill(first)  # its attempt made its file, but never reported it
    alive = next(i for i in range(4) if i != first)
    async with Client.connect(g.address(alive), user_dir=g.user_dir) as c:
        with trio.fail_after(90):
            [done] = await c.wait(j, poll=0.3)
        assert done.state == "finished" and done.attempt >= 2
        view = await c.dataset(f"{done.job.user.name}:{task}.out")
        assert [f.name for f in view.files] == ["0/made.txt"]
        assert view.holders["0/made.txt"] == done.history[-1].node != g.ids[first]
        await c.get(f"{done.job.user.name}:{task}.out", tmp_path / "got")
    assert (tmp_path / "got" / "0" / "made.txt").read_text().strip() == str(done.attempt)


async def test_a_get_into_an_unwritable_directory_is_a_one_line_error(grid4, tmp_path):
    g = grid4
    (tmp_path / "f").write_bytes(b"data")
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        await c.put("small", [tmp_path / "f"])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    code, _, err = await run_cli("get", "--via", g.address(1), "--user-dir", str(g.user_dir),
                                 "small", "--out", str(blocker / "out"))
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "not-a-dir" in err
