"""Alaska exec-runner handlers in Python, as one function.

A handler is a function of the request that returns the reply::

    import alaska_runner as alaska

    def handle(req):
        order = req.json()
        if "id" not in order:
            return alaska.fail("no id in order")
        alaska.send("orders.seen", req.body)          # publish on stream aw.res
        return {"id": order["id"], "ok": True}        # reply (sent as JSON)

    if __name__ == "__main__":
        alaska.run(handle)

or, without the last two lines, run by this module:
``python3 alaska_runner.py handler.py`` (function ``handle``), or
``python3 alaska_runner.py handler.py:other_function``.

What a handler may return: ``None`` (done, no reply), ``str`` or ``bytes``
(the reply), a ``dict``, ``list``, number or boolean (the reply, as JSON), or
one of ``retry()``, ``fail()``, ``drop()``, ``forward()``. An exception is a
failure whose report carries the traceback. ``send`` and ``send_to`` publish
and mail while the handler runs (written by the worker when it ends, in
order, whatever the outcome). Anything printed (to stdout or stderr) goes to
the worker's log, tagged with the runner and the process id.

The line protocol under this module is in docs/RUNNER-PROTOCOL.md. Standard
library only; Python 3.6 or later.
"""

import base64
import importlib.util
import json
import os
import sys
import traceback

__all__ = [
    "Request",
    "run",
    "retry",
    "fail",
    "drop",
    "forward",
    "send",
    "send_to",
    "sendTo",
]

_sends = []


class Request:
    """One request: its metadata and content frames (``bytes``)."""

    __slots__ = ("subject", "address", "sender", "tracker", "attempt", "hops", "frames")

    def __init__(self, msg):
        self.subject = msg.get("subject", "")
        self.address = msg.get("address", "")
        self.sender = msg.get("sender", "")
        self.tracker = msg.get("tracker", "")
        self.attempt = msg.get("attempt", 1)
        self.hops = msg.get("hops", 0)
        frames = msg.get("frames", [])
        if msg.get("base64"):
            self.frames = [base64.b64decode(f) for f in frames]
        else:
            self.frames = [f.encode("utf-8") for f in frames]

    @property
    def body(self):
        """The first content frame (``b""`` if there is none)."""
        return self.frames[0] if self.frames else b""

    @property
    def text(self):
        """The first content frame as text (UTF-8, bad bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The first content frame parsed as JSON."""
        return json.loads(self.body)

    def __repr__(self):
        return "Request(subject=%r, sender=%r, attempt=%r, frames=%d)" % (
            self.subject,
            self.sender,
            self.attempt,
            len(self.frames),
        )


class _Outcome:
    __slots__ = ("fields",)

    def __init__(self, fields):
        self.fields = fields


def retry(after_ms=None, reason=""):
    """Run this request again later: after ``after_ms`` milliseconds, else
    after the worker's backoff. ``req.attempt`` counts the runs."""
    fields = {"outcome": "retry", "reason": str(reason)}
    if after_ms is not None:
        fields["after_ms"] = after_ms
    return _Outcome(fields)


def fail(reason):
    """Give up now, without a retry: a dead letter with ``reason``."""
    return _Outcome({"outcome": "fail", "reason": str(reason)})


def drop():
    """Discard the request silently: no reply, no report."""
    return _Outcome({"outcome": "drop"})


def forward(address, subject, content=None):
    """Hand the request to service ``address`` with ``subject``; the last
    stage's answer reaches the original requester. ``content``: the frames
    to send (a value, or a list of values); default the request's own."""
    fields = {"outcome": "forward", "address": address, "subject": subject}
    if content is not None:
        fields["frames"] = _frames(content)
    return _Outcome(fields)


def send(subject, content, stream="aw.res", attachment=None):
    """Publish ``content`` (and ``attachment`` as a second frame) on
    ``stream`` with ``subject``, as Lua's ``send``."""
    _sends.append({"stream": stream, "subject": subject, "frames": _parts(content, attachment)})


def send_to(subject, content, mailbox="aw.res", attachment=None):
    """Mail ``content`` (and ``attachment`` as a second frame) to
    ``mailbox`` with ``subject``, as Lua's ``sendTo``."""
    _sends.append({"mailbox": mailbox, "subject": subject, "frames": _parts(content, attachment)})


sendTo = send_to


def _parts(content, attachment):
    frames = [_frame(content)]
    if attachment is not None:
        frames.append(_frame(attachment))
    return frames


def _frames(content):
    if isinstance(content, (list, tuple)):
        return [_frame(c) for c in content]
    return [_frame(content)]


def _frame(value):
    """A frame on the wire: text as it is, bytes as text when they are UTF-8
    (else base64), anything else as its JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    return json.dumps(value, separators=(",", ":"))


def _answer(result):
    if isinstance(result, _Outcome):
        answer = dict(result.fields)
    else:
        answer = {"outcome": "done"}
        if result is not None:
            answer["reply"] = _frame(result)
    if _sends:
        answer["sends"] = list(_sends)
    return json.dumps(answer, separators=(",", ":"))


def run(handle):
    """Serve requests with ``handle`` until the worker closes stdin."""
    # The protocol owns the real stdout; anything else written there (print,
    # child processes) goes to stderr, which the worker logs.
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        del _sends[:]
        try:
            text = _answer(handle(Request(json.loads(line))))
        except Exception:
            error = {"outcome": "error", "reason": traceback.format_exc().rstrip()}
            if _sends:
                error["sends"] = list(_sends)
            try:
                text = json.dumps(error, separators=(",", ":"))
            except Exception:
                text = json.dumps({"outcome": "error", "reason": error["reason"]})
        _write(out, (text + "\n").encode("ascii"))


def _write(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _load(target):
    path, _, name = target.partition(":")
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path
    )
    if spec is None or spec.loader is None:
        raise SystemExit("alaska_runner: cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(module)
    return getattr(module, name or "handle")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: alaska_runner.py HANDLER.py[:FUNCTION]")
    # Run as a script, this file is __main__: handlers that import
    # alaska_runner must share this instance (its list of sends).
    sys.modules.setdefault("alaska_runner", sys.modules[__name__])
    run(_load(sys.argv[1]))
