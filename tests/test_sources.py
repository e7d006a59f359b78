"""Subprocess tests of the `python -m transrec.sources` command line; the unit behaviour (real-files-first lookup,
synthetic fallback, cache) is tested in nbs/04_sources.ipynb."""
import hashlib, json, os, subprocess, sys
import pandas as pd
import pytest
from transrec import sources
from transrec.data import write_dataset

SMALL = 0.05


def digest(folder):
    return {str(file.relative_to(folder)): hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(folder.rglob('*')) if file.is_file()}


def real_dataset(path, name):
    items = pd.DataFrame({'item_id': ['a', 'b', 'c'], 'modality': ['text'] * 3, 'text': ['x y', 'y z', 'z w'],
                          'image': [''] * 3})
    interactions = pd.DataFrame({'user_id': ['u'] * 3 + ['v'] * 3, 'item_id': ['a', 'b', 'c', 'c', 'b', 'a'],
                                 'timestamp': range(6)})
    return write_dataset(path, items, interactions, {'name': name, 'synthetic': False, 'description': 'real test data'})


def run_cli(*args, cwd):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    env.pop('TRANSREC_DATA', None)
    return subprocess.run([sys.executable, '-m', 'transrec.sources', *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_cli_list(tmp_path):
    real_dataset(tmp_path/'qb_text', 'qb_text')
    result = run_cli('list', '--root', str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(lines) == set(sources.list_sources())
    assert 'REAL files present' in lines['qb_text'] and 'synthetic stand-in' in lines['qb_mixed']


def test_cli_build_goes_where_the_name_resolves(tmp_path):
    "One layout: `build NAME` from the project folder and a notebook (cwd nbs/) find the same folder."
    project = tmp_path/'project'
    (project/'nbs').mkdir(parents=True)
    build = ('build', 'tn_text', '--scale', str(SMALL), '--seed', '2')
    result = run_cli(*build, cwd=project)                              # default data root: project/data
    assert result.returncode == 0, result.stderr
    out = project/'data'/'synthetic'/f'tn_text-scale{SMALL}-seed2'
    assert [folder.name for folder in (project/'data').iterdir()] == ['synthetic']
    assert {'items.tsv', 'interactions.tsv', 'meta.json', 'sim_truth.json'} <= {file.name for file in out.iterdir()}
    assert 'SYNTHETIC' in result.stdout and json.loads((out/'meta.json').read_text())['synthetic'] is True
    mtime = (out/'items.tsv').stat().st_mtime_ns
    found = subprocess.run([sys.executable, '-c', 'from transrec.sources import materialise; '
                            f'print(materialise("tn_text", scale={SMALL}, seed=2))'],
                           capture_output=True, text=True, cwd=project/'nbs', timeout=120,
                           env={k: v for k, v in os.environ.items() if k != 'TRANSREC_DATA'})
    assert found.stdout.strip() == str(out), found.stderr                # a notebook finds that very folder
    assert (out/'items.tsv').stat().st_mtime_ns == mtime                 # not built again
    assert run_cli(*build, cwd=project).returncode == 0                  # a second build keeps the folder
    assert (out/'items.tsv').stat().st_mtime_ns == mtime


def test_cli_build_out_writes_exactly_there(tmp_path):
    build = ('build', 'tn_text', '--out', str(tmp_path/'out'/'tn'), '--scale', str(SMALL), '--seed', '2')
    result = run_cli(*build, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path/'out'/'tn'
    assert [folder.name for folder in (tmp_path/'out').iterdir()] == ['tn']
    # same files as the cached build of materialise with the same scale and seed
    assert digest(out) == digest(sources.materialise('tn_text', root=tmp_path/'cache', scale=SMALL, seed=2))
    mtime = (out/'items.tsv').stat().st_mtime_ns
    assert run_cli(*build, cwd=tmp_path).returncode == 0
    assert (out/'items.tsv').stat().st_mtime_ns == mtime


def test_cli_build_refuses_bad_input_and_keeps_real_files(tmp_path):
    result = run_cli('build', 'nope', '--root', str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and 'qb_mixed' in result.stderr and 'tn_text' in result.stderr
    real_dataset(tmp_path/'qb_mixed', 'qb_mixed')
    before = digest(tmp_path/'qb_mixed')
    result = run_cli('build', 'qb_mixed', '--root', str(tmp_path), '--scale', str(SMALL), cwd=tmp_path)
    assert result.returncode == 0 and 'left untouched' in result.stdout and digest(tmp_path/'qb_mixed') == before
    (tmp_path/'qb_image').mkdir()
    (tmp_path/'qb_image'/'notes.txt').write_text('mine')
    result = run_cli('build', 'qb_image', '--out', str(tmp_path/'qb_image'), '--scale', str(SMALL),
                     cwd=tmp_path)
    assert result.returncode == 1 and 'refusing to replace' in result.stderr and 'Traceback' not in result.stderr
    assert (tmp_path/'qb_image'/'notes.txt').read_text() == 'mine'


def test_data_root_is_the_projects_from_any_folder_below_it(tmp_path):
    "The data root is the checkout's data/ (settings.ini: lib_name = transrec), not a data/ beside the cwd."
    project = tmp_path/'project'
    (project/'reports'/'run-1').mkdir(parents=True)
    (project/'settings.ini').write_text('[DEFAULT]\nlib_name = transrec\n')
    for cwd in (project, project/'reports'/'run-1'):
        result = run_cli('list', cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f'data root: {project.resolve()/"data"}'
