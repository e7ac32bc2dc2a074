import errno
import os
import signal


def handler(context, event):
    """Fork until refused; the children stay alive (paused) so that every one counts."""
    children = []
    while len(children) < 10000:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"errno": errno.errorcode[exc.errno], "children": len(children)}
        if pid == 0:
            try:
                while True:
                    signal.pause()
            finally:
                os._exit(0)
        children.append(pid)
    return {"errno": "none", "children": len(children)}
