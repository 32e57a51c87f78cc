"""What `fleet push` sends and removes, decided from the board's file hashes."""

import hashlib

from fleet.push import plan_push


def test_push_sends_changed_files_and_removes_stale_modules_only():
    files = {"main.py": b"new", "app/node.mpy": b"same", "app/new.mpy": b"n"}
    on_board = {"main.py": hashlib.sha256(b"old").hexdigest(),
                "app/node.mpy": hashlib.sha256(b"same").hexdigest(),
                "app/node.py": "x", "config.json": "x", "oscore.seq": "x", "q/0001": "x",
                "lib/gone.mpy": "x"}
    assert plan_push(files, on_board) == (["app/new.mpy", "main.py"],
                                          ["app/node.py", "lib/gone.mpy"])
