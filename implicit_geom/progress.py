"""Progress of long loops: a tqdm bar on a terminal, periodic one-line messages elsewhere.

Carriage-return bars turn into walls of overwritten fragments in log files and
CI output, so when standard output is not a terminal (nor a Jupyter kernel,
where tqdm draws a widget) a loop reports on its own line every
``interval`` seconds and once when it ends::

    fitting NeuralImplicitManifold: 120/600 (20%) loss=0.0123 lr=0.0081 [12 s, ~49 s left]

The lines go to standard error, like tqdm's bars.
"""

import sys
import time

from tqdm.auto import tqdm

__all__ = ["Progress", "use_bars"]

#: Seconds between progress lines when output is not a terminal.
LOG_INTERVAL = 10.0


def use_bars():
    """Whether progress is drawn as a bar: stdout is a terminal, or a Jupyter kernel runs."""
    try:
        if sys.stdout.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
    shell = type(sys.modules["IPython"].get_ipython()).__name__ if "IPython" in sys.modules \
        else ""
    return shell == "ZMQInteractiveShell"


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Progress over ``total`` steps: a tqdm bar or periodic log lines (see module doc).

    Parameters
    ----------
    total : int
    desc : str
    enabled : bool
        False shows nothing.
    interval : float
        Seconds between log lines (no effect on bars).
    stream : file, optional
        Where log lines go (default ``sys.stderr``).

    Examples
    --------
    >>> with Progress(100, "training") as bar:
    ...     for step in range(100):
    ...         bar.update(loss=0.1)
    """

    def __init__(self, total, desc, enabled=True, interval=LOG_INTERVAL, stream=None):
        self.total, self.desc, self.interval = int(total), str(desc), float(interval)
        self.enabled = bool(enabled)
        self.stream = stream
        self.count = 0
        self.postfix = {}
        self._bar = None
        self._start = self._last = time.perf_counter()
        if self.enabled and use_bars():
            self._bar = tqdm(total=self.total, desc=self.desc, leave=False)

    def update(self, n=1, **postfix):
        """Advance by ``n`` steps; ``postfix`` values (e.g. the loss) are shown with it."""
        self.count += n
        if not self.enabled:
            return
        if postfix:
            self.postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval and self.count < self.total:
            self._last = now
            self._line(now)

    def _line(self, now, final=False):
        elapsed = now - self._start
        parts = [f"{self.desc}: {self.count}/{self.total}"]
        if self.total:
            parts.append(f"({100 * self.count / self.total:.0f}%)")
        parts += [f"{k}={_fmt(v)}" for k, v in self.postfix.items()]
        if final:
            parts.append(f"[done in {elapsed:.1f} s]")
        else:
            left = elapsed / max(self.count, 1) * (self.total - self.count)
            parts.append(f"[{elapsed:.0f} s, ~{left:.0f} s left]")
        print(" ".join(parts), file=self.stream or sys.stderr, flush=True)

    def close(self):
        """End the bar, or write the final line (only for loops that logged before)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        now = time.perf_counter()
        # Short loops stay silent: a final line only after an intermediate one.
        if self._last != self._start:
            self._line(now, final=True)
            self._last = self._start

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
