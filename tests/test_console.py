"""The console commands of pyproject.toml: each entry point exists, parses sys.argv when called with no arguments
(as the generated `transrec-*` script calls it) and answers --help with exit status 0."""
import json, subprocess, sys, tomllib
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['scripts']
OWN_PROG = ('transrec-bench', 'transrec-explore')    # data/sources/convert name their prog in their own chapters


def run_console(name, *args):
    "Run entry point `name` the way pip's console-script wrapper does: argv[0] is the command, sys.exit(main())."
    module, func = SCRIPTS[name].split(':')
    code = f'import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_declared():
    assert set(SCRIPTS) == {'transrec-data', 'transrec-sources', 'transrec-convert', 'transrec-bench', 'transrec-explore',
                            'transrec-runs'}


HELP_ALL = """
import contextlib, importlib, io, json, sys
out = {}
for name, target in json.loads(sys.argv[1]).items():
    module, func = target.split(':')
    sys.argv = [name, '--help']                   # what the console script sees; main() is called with no arguments
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text): status = getattr(importlib.import_module(module), func)()
    except SystemExit as e: status = e.code
    out[name] = dict(status=status, help=text.getvalue())
print(json.dumps(out))
"""


@pytest.fixture(scope='module')
def helps():
    "`--help` of every console command, all in one fresh process (one import of torch)."
    r = subprocess.run([sys.executable, '-c', HELP_ALL, json.dumps(SCRIPTS)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_help(helps, name):
    status, text = helps[name]['status'], helps[name]['help']
    assert status in (0, None), (status, text)
    assert text.startswith('usage:') and len(text.splitlines()) > 2, text
    if name in OWN_PROG: assert text.startswith(f'usage: {name} ') and len(text.splitlines()) > 10, text


def test_explore_exit_status(tmp_path):
    "A bad --model ends with status 2 and a one-line error (the old main returned a Path: sys.exit(Path) is status 1)."
    r = run_console('transrec-explore', '--model', str(tmp_path), '--data', str(tmp_path), '--out', str(tmp_path/'x.html'))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith('transrec-explore: error: ') and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'x.html').exists()
    r = run_console('transrec-explore', '--data', 'x', '--out', 'y.html')     # --model missing: argparse's status 2
    assert r.returncode == 2 and 'the following arguments are required: --model' in r.stderr, r.stderr


def test_runs_summarise_refuses_a_folder_without_a_log(tmp_path):
    "`transrec-runs summarise` on a folder that is no run: status 2 and one line naming the folder (no traceback)."
    r = run_console('transrec-runs', 'summarise', str(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.splitlines()[-1] == (f'transrec-runs: error: {tmp_path} has no metrics.jsonl: not a training run '
                                         'folder (give the folder a pretrain/finetune run or fit(..., out_dir) wrote)'), r.stderr
    assert 'Traceback' not in r.stderr and not list(tmp_path.iterdir())
