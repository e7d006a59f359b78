"""Shared pytest hooks. A test that waits on a subprocess bounds the wait (`subprocess.run(..., timeout=...)`); when
that bound runs out, the report carries what the process had printed by then, so a hang in CI leaves evidence
instead of a bare `TimeoutExpired`."""
import subprocess
import pytest


def _tail(text, limit: int = 4000) -> str:
    if text is None: return '(nothing)'
    if isinstance(text, bytes): text = text.decode(errors='replace')
    return text[-limit:] or '(nothing)'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, subprocess.TimeoutExpired):
        report.sections.append(('subprocess that ran past its bound',
                                f'command: {error.cmd}\nbound: {error.timeout} s\n'
                                f'--- its stdout so far ---\n{_tail(error.stdout)}\n'
                                f'--- its stderr so far ---\n{_tail(error.stderr)}'))
