"""A real terminal for tests: a program runs in a pseudo-terminal of a given size, keys go in, and
what it draws is read back through pyte, a maintained terminal emulator, so the screen is checked
by an implementation independent of the program's own layout code.

    t = Terminal([sys.executable, "label_tool.py", ...], rows=30, cols=100)
    screen = t.wait_for("0/4 done")  # the screen's text once it shows that (and has gone quiet)
    t.send("pgdn"); t.resize(6, 24); t.kill()

The program sees TERM=vt220. Everything ncurses sends for that terminal (cursor addressing, erase,
insert/delete of lines and characters, insert mode, scroll regions, save/restore cursor) is
something pyte implements. xterm's and linux's entries would also use SU/SD scrolling and REP
(repeat the last character), which pyte 0.8 silently drops, so a screen could look right to the
program and wrong here. `missing()` says why the terminal cannot run on this machine, if it cannot.

Widths: pyte gives each code point the cells `wcwidth.wcwidth` says, as curses and most terminals
do per code point. It stops drawing the rest of a write at a zero-width code point that is not a
combining mark (U+FE0F, U+200D, a Devanagari vowel sign): the labeler never sends the first two
(machinery/termtext.py::sanitize), and tests should not use the third.
"""

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

try:
    import pyte
except ImportError:  # a test dependency (tests/requirements.txt); missing() reports it
    pyte = None

TERM = "vt220"

KEYS = {"up": "\x1b[A", "down": "\x1b[B", "pgup": "\x1b[5~", "pgdn": "\x1b[6~", "ctrl-c": "\x03"}


def missing() -> str | None:
    """Why pseudo-terminal tests cannot run here, or None when they can."""
    if pyte is None:
        return "pyte is not installed (pip install -r tests/requirements.txt)"
    import curses

    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        curses.setupterm(TERM, fd)  # the description ncurses reads (Debian/Ubuntu: ncurses-base)
    except curses.error:
        return f"no terminfo entry for {TERM} (install ncurses-base)"
    finally:
        os.close(fd)
    return None


class Terminal:
    """`argv` running in a pseudo-terminal of `rows` x `cols`; `env` adds to the environment."""

    def __init__(self, argv, rows=30, cols=100, env=None):
        # LINES and COLUMNS would override the terminal's real size
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")},
            "TERM": TERM,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            **(env or {}),
        }
        pid, fd = pty.fork()
        # child: only set the size and exec (anything else would run inside pytest's forked copy)
        if pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""  # every byte the program wrote, for messages printed after curses ends
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)  # UTF-8 and escapes split across reads are fine
        self.code = None

    def text(self) -> str:
        """The screen as lines of text, trailing blanks removed (a wide character is one str)."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def _pump(self, timeout) -> bool:
        """Read what the program wrote within `timeout` s; False once it has closed the terminal."""
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            return False
        self.output += data
        self.stream.feed(data)
        return True

    def poll(self, timeout=0.1) -> str:
        """Read what the program wrote within `timeout` s (all of it, if more is ready) and return
        the screen text. Sets self.closed once the program has closed the terminal."""
        if self._pump(timeout):
            while select.select([self.fd], [], [], 0)[0]:
                if not self._pump(0):
                    self.closed = True
                    break
        else:
            self.closed = True
        return self.text()

    def wait_for(self, pred, timeout=10.0, what=""):
        """Read output until pred(screen text) holds and return the text; fail with the screen
        shown. `pred` may be a string or a list of strings that must all be on screen."""
        if isinstance(pred, (str, list)):
            needles = [pred] if isinstance(pred, str) else pred
            pred, what = (lambda t: all(n in t for n in needles)), what or repr(needles)
        end = time.monotonic() + timeout
        while True:
            if pred(self.text()):
                # A redraw can arrive in pieces: only trust a screen that has been quiet for a
                # moment.
                while select.select([self.fd], [], [], 0.03)[0] and self._pump(0):
                    pass
                text = self.text()
                if pred(text):
                    return text
            if time.monotonic() > end or not self._pump(min(0.2, max(0.0, end - time.monotonic()))):
                if pred(self.text()):
                    return self.text()
                raise AssertionError(
                    f"waited for {what} in vain; screen:\n{self.text()}\n"
                    f"raw tail: {self.output[-400:]!r}"
                )

    def send(self, keys):
        """Type `keys`: a name from KEYS or literal text."""
        os.write(self.fd, KEYS.get(keys, keys).encode())

    def resize(self, rows, cols):
        """Resize the terminal; the kernel sends the program SIGWINCH."""
        # A curses program repaints everything after a resize: start from a blank screen so that
        # nothing left from before can satisfy a wait_for.
        self.screen.resize(rows, cols)
        self.screen.reset()  # after resize: tab stops are set for the new width
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait_exit(self, timeout=30.0) -> int:
        """Wait for the program to exit, reading its last output; return its exit code."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._pump(0.05):
                    pass
                os.close(self.fd)
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
            self._pump(0.05)
        raise AssertionError(f"the program did not exit; screen:\n{self.text()}")

    def kill(self):
        """SIGKILL: the program gets no chance to clean up."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)

    def reap(self):
        """SIGKILL the program if it is still running (for test teardown)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
