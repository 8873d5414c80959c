"""The exec-runner handler the end-to-end tests run (tests/runners.rs),
written with the shipped module. The subject picks the behaviour."""
import os
import signal
import subprocess
import sys
import threading
import time

import alaska_runner as alaska


def hello(req):
    return "hello %s (attempt %d, frames %d, tracker %s)" % (
        req.text,
        req.attempt,
        len(req.frames),
        req.tracker,
    )


def flaky(req):
    if req.attempt < 3:
        return alaska.retry(200, "not yet: attempt %d" % req.attempt)
    return "ok on attempt %d" % req.attempt


def boom(req):
    raise ValueError("bad input %s" % req.text)


def pid(req):
    return str(os.getpid())


def crash(req):
    sys.stderr.write("about to crash\n")
    sys.stderr.flush()
    os._exit(3)


def quit(req):
    # Exits soon after answering, while idle.
    threading.Timer(0.2, os._exit, [0]).start()
    return str(os.getpid())


def slow(req):
    # A grandchild in our process group, then no answer: the timeout must
    # kill both.
    child = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(os.environ["ALASKA_TEST_DIR"], "slow.pids"), "w") as f:
        f.write("%d %d\n" % (os.getpid(), child.pid))
    time.sleep(300)


def stubborn(req):
    # Ignores SIGTERM and starts a grandchild that does too; busy past the
    # shutdown timeout: only SIGKILL ends them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    with open(os.path.join(os.environ["ALASKA_TEST_DIR"], "stubborn.pids"), "w") as f:
        f.write("%d %d\n" % (os.getpid(), child.pid))
    time.sleep(300)


def talk(req):
    print("printed to stdout goes to the log")
    sys.stderr.write("a line for the log: %s\n" % req.text)
    sys.stderr.flush()
    return "said"


def sends(req):
    alaska.send("published", req.body, stream="runner-events")
    alaska.send_to("mailed", "text", mailbox="runner-box", attachment=b"\xff\x00")
    return alaska.fail("after sending")


def binary(req):
    return bytes(reversed(req.frames[1]))


def forward(req):
    return alaska.forward(req.address, "final", [req.body + b"+exec", "second"])


def drop(req):
    return alaska.drop()


def escape(req):
    # Two grandchildren: one in our process group, one that left it with
    # setsid (a group kill cannot reach it). Their pids, then an answer.
    grouped = subprocess.Popen(["sleep", "300"])
    escaped = subprocess.Popen(["sleep", "301"], start_new_session=True)
    with open(os.path.join(os.environ["ALASKA_TEST_DIR"], "escape.pids"), "w") as f:
        f.write("%d %d %d\n" % (os.getpid(), grouped.pid, escaped.pid))
    return "escaped"


def huge(req):
    # A retry delay no clock can hold (1e22 ms): clamped by the worker.
    return alaska.retry(1e22, "in a very long while")


HANDLERS = {f.__name__: f for f in [hello, flaky, boom, pid, crash, quit, slow,
                                     stubborn, talk, sends, binary, forward, drop,
                                     huge, escape]}


def handle(req):
    return HANDLERS[req.subject](req)


if __name__ == "__main__":
    alaska.run(handle)
