"""Drives runcell's execd routes with the official OpenSandbox Python SDKs (opensandbox and
opensandbox-code-interpreter 1.1.1), exactly as the SDKs call them: their own adapters, their
own SSE parsing, their own error conversion. Run by opensandbox_execd.rs in the SDK venv.

Usage: python opensandbox_sdk.py SCENARIO ENDPOINT TOKEN
ENDPOINT is what the lifecycle API hands out: "127.0.0.1:PORT/v1/sandboxes/ID" (no scheme).
Prints one JSON object: what the SDK parsed. The Rust test judges it; this script only fails
(non-zero, with a traceback) when the SDK itself raised where it should not have.
"""

import asyncio
import json
import sys
import time
from datetime import timedelta

from code_interpreter.adapters.factory import AdapterFactory as CodeAdapterFactory
from code_interpreter.code_interpreter import RUNTIME_PROCESS_CHECK_COMMAND
from opensandbox.adapters.factory import AdapterFactory
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.execd import ExecutionHandlers, RunCommandOpts
from opensandbox.models.filesystem import (
    MoveEntry,
    SearchEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import SandboxEndpoint


def exception(e: BaseException) -> dict:
    """An SDK exception as the SDK typed it."""
    err = getattr(e, "error", None)
    return {
        "class": type(e).__name__,
        "is_api": isinstance(e, SandboxApiException),
        "status_code": getattr(e, "status_code", None),
        "code": getattr(err, "code", None),
        "message": getattr(err, "message", None),
    }


def execution(ex) -> dict:
    """An SDK Execution as plain JSON."""
    return {
        "id": ex.id,
        "execution_count": ex.execution_count,
        "exit_code": ex.exit_code,
        "results": [r.text for r in ex.result],
        "stdout": [m.text for m in ex.logs.stdout],
        "stderr": [m.text for m in ex.logs.stderr],
        "stdout_ts": [m.timestamp for m in ex.logs.stdout],
        "error": None
        if ex.error is None
        else {"name": ex.error.name, "value": ex.error.value, "traceback": ex.error.traceback},
        "complete_ms": None if ex.complete is None else ex.complete.execution_time_in_millis,
        "text": ex.text,
    }


def recorder(seen: list):
    """ExecutionHandlers that record every callback, in order."""

    async def rec(kind, ev):
        seen.append([kind, getattr(ev, "text", None)])

    return ExecutionHandlers(
        on_stdout=lambda m: rec("stdout", m),
        on_stderr=lambda m: rec("stderr", m),
        on_result=lambda r: rec("result", r),
        on_error=lambda e: rec("error", e),
        on_execution_complete=lambda c: rec("complete", c),
        on_init=lambda i: rec("init", i),
    )


async def commands(cfg, ep) -> dict:
    svc = AdapterFactory(cfg).create_command_service(ep)
    out = {}

    seen = []
    ex = await svc.run(
        "echo out1; echo err1 >&2; echo out2; echo $SB_ENV-$OPT_ENV",
        opts=RunCommandOpts(envs={"OPT_ENV": "opt"}),
        handlers=recorder(seen),
    )
    out["foreground"] = execution(ex)
    out["foreground_seen"] = seen

    out["failing"] = execution(await svc.run("echo before; exit 3"))
    out["argv"] = execution(await svc.run(["printf", "%s|", "a b", "c"]))
    out["cwd"] = execution(await svc.run("pwd", opts=RunCommandOpts(working_directory="/tmp")))
    t0 = time.monotonic()
    out["timeout"] = execution(
        await svc.run("sleep 30", opts=RunCommandOpts(timeout=timedelta(milliseconds=500)))
    )
    out["timeout_secs"] = time.monotonic() - t0

    bg = await svc.run(
        "echo bg-start; sleep 1; echo bg-err >&2; echo bg-done; exit 4",
        opts=RunCommandOpts(background=True),
    )
    out["background"] = execution(bg)
    first = await svc.get_command_status(bg.id)
    out["background_status_first"] = {"running": first.running, "id": first.id}
    for _ in range(100):
        st = await svc.get_command_status(bg.id)
        if not st.running:
            break
        await asyncio.sleep(0.1)
    out["background_status"] = {
        "id": st.id,
        "content": st.content,
        "running": st.running,
        "exit_code": st.exit_code,
        "started_at": None if st.started_at is None else st.started_at.isoformat(),
        "finished_at": None if st.finished_at is None else st.finished_at.isoformat(),
    }
    logs = await svc.get_background_command_logs(bg.id)
    out["background_logs"] = {"content": logs.content, "cursor": logs.cursor}
    more = await svc.get_background_command_logs(bg.id, cursor=logs.cursor)
    out["background_logs_after"] = {"content": more.content, "cursor": more.cursor}

    try:
        await svc.get_command_status("cmd_doesnotexist")
        out["missing_status"] = None
    except SandboxException as e:
        out["missing_status"] = exception(e)

    # The code interpreter's own readiness probe, run as CodeInterpreter.create runs it.
    out["health"] = execution(await svc.run(RUNTIME_PROCESS_CHECK_COMMAND))
    out["jupyter_port"] = execution(await svc.run("echo ${JUPYTER_PORT:-unset}"))
    return out


async def code(cfg, ep) -> dict:
    svc = CodeAdapterFactory(cfg).create_code_execution_service(ep)
    out = {}
    ctx = await svc.create_context("python")
    out["context"] = {"id": ctx.id, "language": ctx.language}
    seen = []
    out["print"] = execution(
        await svc.run("x = 41\nprint('hello', flush=True)", context=ctx, handlers=recorder(seen))
    )
    out["print_seen"] = seen
    out["expression"] = execution(await svc.run("x + 1", context=ctx))
    out["exception"] = execution(await svc.run("1 / 0", context=ctx))
    out["env"] = execution(await svc.run("import os\nprint(os.environ.get('SB_ENV'))", context=ctx))
    out["default_context"] = execution(await svc.run("print(6 * 7)"))
    got = await svc.get_context(ctx.id)
    out["get_context"] = {"id": got.id, "language": got.language}
    out["list_contexts"] = [{"id": c.id, "language": c.language} for c in await svc.list_contexts("python")]
    await svc.delete_context(ctx.id)
    try:
        await svc.get_context(ctx.id)
        out["deleted_context"] = None
    except SandboxException as e:
        out["deleted_context"] = exception(e)
    return out


async def files(cfg, ep) -> dict:
    fs = AdapterFactory(cfg).create_filesystem_service(ep)
    out = {}
    await fs.write_files(
        [
            WriteEntry(path="/workspace/sdk/a.txt", data="alpha\n", mode=644),
            WriteEntry(path="/workspace/sdk/bin.dat", data=bytes(range(256)) * 4, mode=600),
            WriteEntry(path="/workspace/sdk/run.sh", data="#!/bin/sh\necho hi\n"),
        ]
    )
    out["read_text"] = await fs.read_file("/workspace/sdk/a.txt")
    out["read_bytes_ok"] = await fs.read_bytes("/workspace/sdk/bin.dat") == bytes(range(256)) * 4
    info = await fs.get_file_info(["/workspace/sdk/a.txt", "/workspace/sdk/bin.dat", "/workspace/sdk/run.sh"])
    out["info"] = {
        p: {"path": i.path, "type": i.entry_type, "mode": i.mode, "size": i.size, "owner": i.owner}
        for p, i in info.items()
    }
    found = await fs.search(SearchEntry(path="/workspace", pattern="*.txt"))
    out["search"] = sorted(e.path for e in found)
    from opensandbox.models.filesystem import DirectoryListEntry

    listed = await fs.list_directory(DirectoryListEntry(path="/workspace/sdk"))
    out["list"] = sorted(e.path for e in listed)
    await fs.move_files([MoveEntry(src="/workspace/sdk/a.txt", dest="/workspace/sdk/b.txt")])
    out["moved"] = await fs.read_file("/workspace/sdk/b.txt")
    await fs.delete_files(["/workspace/sdk/b.txt"])
    try:
        await fs.read_file("/workspace/sdk/b.txt")
        out["missing_read"] = None
    except SandboxException as e:
        out["missing_read"] = exception(e)
    try:
        await fs.get_file_info(["/workspace/sdk/nope.txt"])
        out["missing_info"] = None
    except SandboxException as e:
        out["missing_info"] = exception(e)
    # A refusal in the middle of a chunked upload (megabytes still to come) is still the
    # SDK's typed error, not a reset connection.
    try:
        await fs.write_files(
            [
                WriteEntry(path="/usr/refused.txt", data=b"x" * 10),
                WriteEntry(path="/workspace/sdk/after.bin", data=b"y" * (4 << 20)),
            ]
        )
        out["refused_upload"] = None
    except SandboxException as e:
        out["refused_upload"] = exception(e)
    return out


async def bad_token(cfg, ep) -> dict:
    out = {}
    try:
        await AdapterFactory(cfg).create_command_service(ep).run("true")
        out["command"] = None
    except SandboxException as e:
        out["command"] = exception(e)
    try:
        await AdapterFactory(cfg).create_filesystem_service(ep).read_file("/workspace/x")
        out["file"] = None
    except SandboxException as e:
        out["file"] = exception(e)
    try:
        await AdapterFactory(cfg).create_filesystem_service(ep).write_files(
            [WriteEntry(path="/workspace/x", data=b"z" * (4 << 20))]
        )
        out["upload"] = None
    except SandboxException as e:
        out["upload"] = exception(e)
    try:
        await CodeAdapterFactory(cfg).create_code_execution_service(ep).create_context("python")
        out["context"] = None
    except SandboxException as e:
        out["context"] = exception(e)
    return out


async def until_init(ids: list) -> str:
    for _ in range(100):
        if ids:
            return ids[0]
        await asyncio.sleep(0.1)
    raise RuntimeError("no init event within 10 s")


async def more(cfg, ep) -> dict:
    """Sessions, interrupts, health, metrics, the other file operations, other languages."""
    from opensandbox.models.filesystem import (
        ContentReplaceEntry,
        DirectoryListEntry,
        SetPermissionEntry,
    )

    f = AdapterFactory(cfg)
    cmd = f.create_command_service(ep)
    out = {"ping": await f.create_health_service(ep).ping("unused")}
    m = await f.create_metrics_service(ep).get_metrics("unused")
    out["metrics"] = {"cpu_count": m.cpu_count, "memory_total_in_mib": m.memory_total_in_mib,
                      "timestamp": m.timestamp}

    # set_env appends to the file named by EXECD_ENVS; later commands and sessions see it.
    await cmd.set_env("PERSISTED", "it's $SB_ENV")
    await cmd.set_env("PLAIN", "p1")
    await cmd.set_env("PLAIN", "p2")
    out["set_env"] = execution(await cmd.run('printf "%s|%s\\n" "$PERSISTED" "$PLAIN"'))
    out["set_env_overridden"] = execution(
        await cmd.run("echo $PLAIN", opts=RunCommandOpts(envs={"PLAIN": "request"}))
    )

    sid = await cmd.create_session(working_directory="/tmp")
    out["set_env_session"] = execution(await cmd.run_in_session(sid, "echo $PLAIN"))
    out["session_id"] = sid
    out["session_1"] = execution(await cmd.run_in_session(sid, "echo $PWD; cd /workspace; export Q=7"))
    out["session_2"] = execution(await cmd.run_in_session(sid, "echo $PWD $Q; exit 2"))
    await cmd.delete_session(sid)
    try:
        await cmd.run_in_session(sid, "true")
        out["deleted_session"] = None
    except SandboxException as e:
        out["deleted_session"] = exception(e)

    ids = []

    async def on_init(i):
        ids.append(i.id)

    t0 = time.monotonic()
    task = asyncio.create_task(cmd.run("sleep 30", handlers=ExecutionHandlers(on_init=on_init)))
    await cmd.interrupt(await until_init(ids))
    out["interrupted_command"] = execution(await asyncio.wait_for(task, 20))
    out["interrupted_command_secs"] = time.monotonic() - t0

    fs = f.create_filesystem_service(ep)
    await fs.create_directories([WriteEntry(path="/workspace/d1/d2", mode=700)])
    info = await fs.get_file_info(["/workspace/d1/d2"])
    out["dir_info"] = {"type": info["/workspace/d1/d2"].entry_type, "mode": info["/workspace/d1/d2"].mode}
    await fs.write_file("/workspace/d1/x.txt", "hello world hello", mode=640)
    await fs.set_permissions([SetPermissionEntry(path="/workspace/d1/x.txt", mode=600)])
    out["chmod_mode"] = (await fs.get_file_info(["/workspace/d1/x.txt"]))["/workspace/d1/x.txt"].mode
    replaced = await fs.replace_contents_detailed(
        [ContentReplaceEntry(path="/workspace/d1/x.txt", old_content="hello", new_content="bye")]
    )
    out["replaced"] = [[r.path, r.replaced_count] for r in replaced]
    chunks = []
    async for c in await fs.read_bytes_stream("/workspace/d1/x.txt"):
        chunks.append(c)
    out["streamed"] = b"".join(chunks).decode()
    listed = await fs.list_directory(DirectoryListEntry(path="/workspace", depth=3))
    out["listed"] = sorted(e.path for e in listed)
    await fs.delete_directories(["/workspace/d1"])
    try:
        await fs.get_file_info(["/workspace/d1"])
        out["deleted_dir"] = None
    except SandboxException as e:
        out["deleted_dir"] = exception(e)

    codes = CodeAdapterFactory(cfg).create_code_execution_service(ep)
    out["code_ping"] = await codes.ping()
    js = await codes.create_context("javascript")
    out["javascript"] = execution(await codes.run("console.log(1 + 1); 40 + 2", context=js))
    await codes.delete_contexts("javascript")
    out["javascript_after_delete"] = len(await codes.list_contexts("javascript"))
    out["bash"] = execution(await codes.run("echo $((2 + 3))", language="bash"))
    py = await codes.create_context("python")
    ids.clear()
    t0 = time.monotonic()
    task = asyncio.create_task(
        codes.run("import time\ntime.sleep(30)", context=py, handlers=ExecutionHandlers(on_init=on_init))
    )
    await codes.interrupt(await until_init(ids))
    out["interrupted_code"] = execution(await asyncio.wait_for(task, 20))
    out["interrupted_code_secs"] = time.monotonic() - t0
    out["after_interrupt"] = execution(await codes.run("print('still here')", context=py))
    return out


async def sync_clients(cfg, ep) -> dict:
    """The synchronous SDK clients (their own SSE reader), on a thread."""
    from code_interpreter.sync.adapters.factory import AdapterFactorySync as CodeFactorySync
    from opensandbox.config.connection_sync import ConnectionConfigSync
    from opensandbox.sync.adapters.factory import AdapterFactorySync as FactorySync

    def run() -> dict:
        scfg = ConnectionConfigSync(protocol="http", request_timeout=timedelta(seconds=60))
        cmd = FactorySync(scfg).create_command_service(ep)
        codes = CodeFactorySync(scfg).create_code_execution_service(ep)
        ctx = codes.create_context("python")
        fs = FactorySync(scfg).create_filesystem_service(ep)
        fs.write_files([WriteEntry(path="/workspace/sync/s.txt", data="sync file", mode=640)])
        info = fs.get_file_info(["/workspace/sync/s.txt"])["/workspace/sync/s.txt"]
        return {
            "file": fs.read_file("/workspace/sync/s.txt"),
            "file_mode": info.mode,
            "command": execution(cmd.run("echo sync-out; echo sync-err >&2; exit 5")),
            "health": execution(cmd.run(RUNTIME_PROCESS_CHECK_COMMAND)),
            "context": {"id": ctx.id, "language": ctx.language},
            "code": execution(codes.run("print('sync'); 2 ** 10", context=ctx)),
        }

    return await asyncio.to_thread(run)


SCENARIOS = {
    "commands": commands,
    "code": code,
    "files": files,
    "bad_token": bad_token,
    "sync": sync_clients,
    "more": more,
}


async def main() -> None:
    scenario, endpoint, token = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = ConnectionConfig(protocol="http", request_timeout=timedelta(seconds=60))
    ep = SandboxEndpoint(endpoint=endpoint, headers={"X-EXECD-ACCESS-TOKEN": token})
    out = await SCENARIOS[scenario](cfg, ep)
    print(json.dumps(out))


asyncio.run(main())
