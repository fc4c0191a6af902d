"""A progress bar for tuning loops: tqdm where it is installed (it comes with Optuna), else lines."""

from __future__ import annotations

import sys


class _Lines:
    def __init__(self, total, desc):
        self.total, self.desc, self.n = total, desc, 0

    def update(self, n=1):
        self.n += n
        print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


class _Off:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0):
    """An object with ``update(n)``, ``set_postfix_str(text)`` and ``close()``."""
    if not enabled:
        return _Off()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Lines(total, desc)
    return tqdm(total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True)
