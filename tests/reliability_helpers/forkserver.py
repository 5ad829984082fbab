"""A fork server: imports Keras once, then forks worker processes on request.

    python -m reliability_helpers.forkserver

Importing Keras and its backend takes seconds; the kill -9 and concurrency
tests need many fresh processes. The server imports ``keras``,
``kedro_keras`` and ``s3fs`` (nothing runs on the backend yet, so forking is
safe), prints ``ready``, then serves stdin commands:

    fork <job> <output file> <json arguments>  ->  pid <pid>
    reap <pid>                                 ->  status <code>  (negative: killed by that signal)
    quit

A forked process runs ``reliability_helpers.jobs.<job>(say, **arguments)``,
where ``say(line)`` appends a line to the output file (one ``write`` per line,
so a reader never sees half a line), and exits 0, or 1 with a traceback on
stderr if the job raised.
"""

from __future__ import annotations

import json
import os
import sys


def _run(job: str, output: str, arguments: dict) -> None:
    from reliability_helpers import jobs

    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def say(line: str) -> None:
        os.write(descriptor, f"{line}\n".encode())

    getattr(jobs, job)(say, **arguments)


def main() -> None:
    import keras  # noqa: F401 - the expensive part, done once before forking
    import s3fs  # noqa: F401

    import kedro_keras  # noqa: F401
    from reliability_helpers import jobs  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "fork":
            job, output, arguments = rest.split(" ", 2)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    devnull = os.open(os.devnull, os.O_RDWR)
                    os.dup2(devnull, 0)
                    os.dup2(devnull, 1)
                    _run(job, output, json.loads(arguments))
                    code = 0
                except BaseException:  # noqa: BLE001 - reported on stderr, exit status 1
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            print(f"pid {pid}", flush=True)
        elif command == "reap":
            _, status = os.waitpid(int(rest), 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(f"status {code}", flush=True)
        elif command == "quit":
            break


if __name__ == "__main__":
    main()
