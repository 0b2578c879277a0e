"""The stand-in CLI's conversation on disk: `$HOME/.claude-standin/<session_id>.jsonl`.

Standard library only. One Messages API message per line, appended after each turn, so a later
process started with `--resume <id>` reads the same history the way the real CLI reads its
`~/.claude/projects/.../<id>.jsonl`.
"""

import json
import os


class Transcript:
    """The conversation on disk, one Messages API message per line, appended after each turn.

    Appending costs about 0.04 ms; rewriting the file cost about 1.5 ms per turn on ext4, which
    flushes data on truncate and rename (auto_da_alloc), and made a turn ten times slower.
    """

    def __init__(self, home, session_id):
        self.dir = os.path.join(home, ".claude-standin")
        self.path = self.of(home, session_id)
        self.saved = 0

    @staticmethod
    def of(home, session_id):
        return os.path.join(home, ".claude-standin", os.path.basename(session_id) + ".jsonl")

    @staticmethod
    def load(path):
        messages = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    messages.append(json.loads(line))
                except ValueError:  # a line cut short by a crash mid-write
                    break
        return messages

    def append(self, messages):
        """Write the messages this file does not hold yet."""
        os.makedirs(self.dir, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(
                json.dumps(m, separators=(",", ":")) + "\n" for m in messages[self.saved :]
            )
        self.saved = len(messages)
