"""A progress hook for tests that read a run's one-line notes (the guard's, keep-best's, lr auto's)."""


class Notes:
    """Keeps the lines the console would print."""

    def __init__(self):
        self.lines = []

    def on_start(self, start, total): ...
    def on_step(self, record): ...
    def on_eval(self, step, metrics): ...

    def on_note(self, line):
        self.lines.append(line)
