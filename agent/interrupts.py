"""Ctrl-C and SIGTERM while a run is in progress (`agent run` / `agent resume`, via agent.live.drive)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable


class Interrupts:
    """Ctrl-C handling while a run is in progress.

    The first Ctrl-C sets `stop` (the run ends cleanly after the current step,
    resumable); the second sets `kill` (running trainings are ended too); a
    third raises KeyboardInterrupt in the main thread. SIGTERM sets both at
    once (a service manager waits seconds, not a batch), so it too leaves the
    run stopped and resumable.

    A terminal sends Ctrl-C to its whole foreground process group, which also
    holds the helper processes the run starts (git for the workspace, the
    homeostasis phase-1 training): killed mid-step, they would turn a clean
    stop into an error. So SIGINT is *blocked* in the main thread while a run
    is driven (children inherit the blocked mask and never see it); trainings
    are cancelled through `kill` by the runner (SIGTERM/SIGKILL), never by SIGINT.

    The signal still reaches this process in some thread that does not block
    it: the small "ctrl-c" thread below, or a thread started before the run
    (torch's pool). Python's C-level handler writes the signal number to the
    wakeup fd in whichever thread receives it, so the ctrl-c thread, reading
    that fd, sees every Ctrl-C at once. (A Python-level handler alone runs only
    when the main thread next executes bytecode, which can be minutes later
    while it waits for a batch.)
    """

    def __init__(self, say: Callable[[str], None]):
        self.stop = threading.Event()
        self.kill = threading.Event()
        self._say = say
        self._old = None
        self._old_term = None
        self._old_mask = None
        self._old_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._waiter: threading.Thread | None = None
        self._closing = False
        self._raise = False

    def handle(self, signum=None, frame=None) -> None:
        """Count one Ctrl-C: stop, then kill, then KeyboardInterrupt in the main thread."""
        if not self.stop.is_set():
            self.stop.set()
            self._say("Ctrl-C: stopping after the current step (Ctrl-C again ends the running trainings)")
        elif not self.kill.is_set():
            self.kill.set()
            self._say("Ctrl-C again: ending the running trainings")
        elif threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        else:
            import _thread

            self._raise = True
            _thread.interrupt_main()  # runs _on_main() in the main thread, which raises

    def terminate(self, signum=None, frame=None) -> None:
        """SIGTERM (kill, systemd, a batch scheduler): end the running trainings and stop, resumable —
        the same as Ctrl-C twice; a second SIGTERM counts like a third Ctrl-C."""
        if not self.kill.is_set():
            self.stop.set()
            self.kill.set()
            self._say("SIGTERM: ending the running trainings and stopping (resume with `agent resume`)")
        else:
            self.handle()

    def _on_main(self, signum=None, frame=None) -> None:
        # The Python-level handler: the ctrl-c thread already counted this signal
        # through the wakeup fd; only the third Ctrl-C's interrupt_main raises here.
        if self._raise:
            raise KeyboardInterrupt

    def _wait(self) -> None:
        import select

        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # this thread receives it
        rfd = self._pipe[0]
        while not self._closing:
            try:
                ready, _, _ = select.select([rfd], [], [])
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                data = os.read(rfd, 64)
            except BlockingIOError:
                continue
            if self._closing:
                return
            for b in data:
                if b == signal.SIGINT:
                    self.handle()
                elif b == signal.SIGTERM:
                    self.terminate()

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_main)
            # not blocked (trainings inherit the mask, and the runner stops them with SIGTERM): the C-level
            # handler writes it to the wakeup fd, which the ctrl-c thread reads
            self._old_term = signal.signal(signal.SIGTERM, self._on_main)
            if hasattr(signal, "pthread_sigmask"):
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._pipe = (r, w)
                self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
                self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                self._waiter = threading.Thread(target=self._wait, name="ctrl-c", daemon=True)
                self._waiter.start()
            else:  # no signal masks (not POSIX): the Python-level handler counts
                signal.signal(signal.SIGINT, self.handle)
                signal.signal(signal.SIGTERM, self.terminate)
        return self

    def __exit__(self, *exc) -> None:
        if self._waiter is not None:
            self._closing = True
            os.write(self._pipe[1], b"\0")  # wakes the ctrl-c thread, which returns
            self._waiter.join(timeout=2)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
