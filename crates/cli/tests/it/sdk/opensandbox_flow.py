"""The flow of OpenSandbox's official Python SDKs (opensandbox, opensandbox-code-interpreter
1.1.x) against runcell's `/opensandbox` lifecycle API and execd routes, as a user writes it.
Run by `api::opensandbox::the_official_python_sdk_drives_a_sandbox_end_to_end` with the
server's `HOST:PORT/opensandbox` and an API key; prints one JSON document of what it saw.
Every step that fails raises, so the exit code says whether the SDK got through."""

import json
import sys
import time
from datetime import timedelta

from code_interpreter import CodeInterpreterSync, SupportedLanguage
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.config import ConnectionConfigSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.sandboxes import SandboxFilter

domain, key = sys.argv[1], sys.argv[2]
config = ConnectionConfigSync(
    domain=domain, api_key=key, request_timeout=timedelta(seconds=60)
)
seen = {}

# Create as the code-interpreter README does: an image, its entrypoint, env, metadata. This
# also looks up both endpoints (execd's 44772, egress's 18080), pings, and posts telemetry.
sb = SandboxSync.create(
    "opensandbox/code-interpreter:v1.1.0",
    connection_config=config,
    entrypoint=["/opt/code-interpreter/code-interpreter.sh"],
    env={"PYTHON_VERSION": "3.11", "GREETING": "hello from the sdk"},
    metadata={"suite": "sdk-flow"},
    timeout=timedelta(minutes=5),
)
seen["id"] = sb.id
info = sb.get_info()
seen["state"] = str(info.status.state)
seen["image"] = info.image.image if info.image else None
seen["entrypoint"] = info.entrypoint
seen["metadata"] = info.metadata

# Commands: output, the sandbox's environment, a failing exit.
ex = sb.commands.run("echo hello; echo \"$GREETING\"; echo oops >&2")
seen["stdout"] = [m.text for m in ex.logs.stdout]
seen["stderr"] = [m.text for m in ex.logs.stderr]
ex = sb.commands.run("exit 3")
seen["exit_error"] = [ex.error.name, ex.error.value] if ex.error else None

# Files: write, read back, inspect.
sb.files.write_file("/workspace/notes.txt", "first line\nsecond line\n")
seen["read"] = sb.files.read_file("/workspace/notes.txt")
infos = sb.files.get_file_info(["/workspace/notes.txt"])
seen["size"] = infos["/workspace/notes.txt"].size

# Code: a Python context keeps its variables; a result's text; printed output.
ci = CodeInterpreterSync.create(sandbox=sb)
ctx = ci.codes.create_context(SupportedLanguage.PYTHON)
seen["context_language"] = ctx.language
r = ci.codes.run("x = 40 + 2\nprint('printed')\nx", context=ctx)
seen["code_result"] = [res.text for res in r.result]
seen["code_stdout"] = [m.text for m in r.logs.stdout]
r = ci.codes.run("import os\nos.environ['GREETING']", context=ctx)
seen["code_env"] = [res.text for res in r.result]
r = ci.codes.run("1/0", context=ctx)
seen["code_error"] = r.error.name if r.error else None

# Lifecycle: renew, metadata patched, list by state and metadata, pause and resume (the context keeps x), kill.
seen["renewed"] = sb.renew(timedelta(minutes=10)).expires_at.isoformat()
seen["patched"] = sb.patch_metadata({"stage": "patched"}).metadata
manager = SandboxManagerSync.create(connection_config=config)
page = manager.list_sandbox_infos(
    SandboxFilter(states=["Running"], metadata={"suite": "sdk-flow", "stage": "patched"})
)
seen["listed"] = [s.id for s in page.sandbox_infos]
sb.pause()
seen["paused_state"] = str(sb.get_info().status.state)
sb = SandboxSync.resume(sb.id, connection_config=config)
seen["resumed_state"] = str(sb.get_info().status.state)
ci = CodeInterpreterSync.create(sandbox=sb)
r = ci.codes.run("x", context=ctx)
seen["x_after_resume"] = [res.text for res in r.result]
sb.kill()
try:
    sb.get_info()
    seen["after_kill"] = "still there"
except SandboxException as e:
    seen["after_kill"] = e.error.code
sb.close()
print(json.dumps(seen))
