"""The console commands of pyproject.toml: each entry point exists, parses sys.argv when called with no arguments
(as the generated `transrec-*` script calls it) and answers --help with exit status 0."""
import json, subprocess, sys, tomllib
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['scripts']
# data/sources/convert name their prog in their own chapters
OWN_PROG = ('transrec-bench', 'transrec-explore', 'transrec-train', 'transrec-compare')


def run_console(name, *args):
    "Run entry point `name` the way pip's console-script wrapper does: argv[0] is the command, sys.exit(main())."
    module, func = SCRIPTS[name].split(':')
    code = f'import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_declared():
    assert set(SCRIPTS) == {'transrec-data', 'transrec-sources', 'transrec-convert', 'transrec-bench', 'transrec-explore',
                            'transrec-train', 'transrec-compare', 'transrec-runs'}


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


TINY_MODEL = ('{dim: 16, n_layers: 1, n_heads: 1, max_len: 8, text_trainable_blocks: 1, image_trainable_blocks: 1, '
              'image_size: 32, text_max_tokens: 16}')
TINY = ('--scale', '0.1', '--device', 'cpu', '--progress', 'False', '--model', TINY_MODEL)


def test_train_then_compare(tmp_path, monkeypatch):
    "transrec-train pre-trains and fine-tunes run folders (settings only the train dict reaches); transrec-compare pairs them."
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'data'))
    monkeypatch.setenv('TRANSREC_REPORTS', str(tmp_path/'reports'))
    pre, tuned, scratch = tmp_path/'pre', tmp_path/'tuned', tmp_path/'scratch'
    r = run_console('transrec-train', 'pretrain', '--source', 'qb_mixed', '--out-dir', str(pre), *TINY,
                    '--train', '{epochs: 1, batch_size: 64, weight_decay: 0, schedule: linear, warmup_steps: 0}')
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((pre/'metrics.json').read_text())
    assert (m['train_config']['weight_decay'], m['train_config']['schedule'], m['model_config']['dim']) == (0, 'linear', 16)
    assert 'run folder: ' + str(pre) in r.stdout and (pre/'curves.html').exists() and (pre/'best'/'model.safetensors').exists()
    for out, init in ((tuned, str(pre/'best')), (scratch, 'scratch')):
        r = run_console('transrec-train', 'finetune', '--target', 'qb_text', '--init', init, '--target-fraction', '0.5',
                        '--out-dir', str(out), *TINY, '--train', '{epochs: 1, batch_size: 64}')
        assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, '-m', 'transrec.study', str(tuned), str(scratch), '--json', str(tmp_path/'c.json')],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    table = r.stdout.splitlines()
    assert table[0].startswith('| run | method |') and len(table) == 4, r.stdout
    assert table[2].startswith(f'| {tuned} | transrec-pretrained | qb_text') and '(the reference)' in table[2], r.stdout
    rows = json.loads((tmp_path/'c.json').read_text())['rows']
    held_out = json.loads((tuned/'metrics.json').read_text())['users']['held_out']
    assert rows[0]['users'] == rows[1]['paired']['n_users'] == held_out, rows     # the same held-out users, paired
    assert rows[0]['NDCG@10']['low'] <= rows[0]['NDCG@10']['mean'] <= rows[0]['NDCG@10']['high']


def test_train_and_compare_bad_input(tmp_path):
    "Bad values end with one line and exit status 2, before any work."
    r = run_console('transrec-train', 'pretrain', '--out-dir', str(tmp_path/'run'), '--train', '{weight_decay: -1}')
    assert r.returncode == 2 and r.stderr == ('transrec-train: error: parameter train.weight_decay=-1: '
                                              'expected a number in [0, 10]\n'), r.stderr
    r = run_console('transrec-train', 'finetune', '--model', '{dim: 16', '--out-dir', str(tmp_path/'run'))
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and "'{dim: 16' is not a value" in r.stderr, r.stderr
    assert not (tmp_path/'run').exists()
    r = run_console('transrec-compare', str(tmp_path))
    assert r.returncode == 2 and r.stderr == f'transrec-compare: error: {tmp_path}: no metrics.json; ' \
        'give the folder of a finished run (what nbs/pretrain.ipynb, nbs/finetune.ipynb or transrec-train write)\n', r.stderr


def test_runs_summarise_refuses_a_folder_without_a_log(tmp_path):
    "`transrec-runs summarise` on a folder that is no run: status 2 and one line naming the folder (no traceback)."
    r = run_console('transrec-runs', 'summarise', str(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.splitlines()[-1] == (f'transrec-runs: error: {tmp_path} has no metrics.jsonl: not a training run '
                                         'folder (give the folder a pretrain/finetune run or fit(..., out_dir) wrote)'), r.stderr
    assert 'Traceback' not in r.stderr and not list(tmp_path.iterdir())


def test_python_m_runs_each_modules_command(tmp_path):
    "`python -m transrec.experiment` is transrec-train, and with `summarise` transrec-runs; one module, one dispatch."
    run_module = lambda *args: subprocess.run([sys.executable, '-m', 'transrec.experiment', *args], capture_output=True,
                                              text=True, cwd=ROOT, timeout=300)
    r = run_module('--help')
    assert r.returncode == 0 and 'pretrain' in r.stdout and 'finetune' in r.stdout, r.stdout + r.stderr
    r = run_module('summarise', str(tmp_path))
    assert r.returncode == 2 and 'has no metrics.jsonl' in r.stderr.splitlines()[-1], r.stderr
