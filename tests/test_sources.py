"Tests of the named data sets (transrec.sources): real-files-first lookup, synthetic fallback, cache, CLI."
import hashlib, json, logging, os, subprocess, sys
import pandas as pd
import pytest
from transrec import sim, sources
from transrec.data import write_dataset

SMALL = 0.05


def digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture
def logs():
    "Messages logged on the 'transrec' logger during the test."
    msgs = []
    class H(logging.Handler):
        def emit(self, record): msgs.append(record.getMessage())
    h = H(); lg = logging.getLogger('transrec'); lg.addHandler(h)
    yield msgs
    lg.removeHandler(h)


def real_dataset(path, name):
    items = pd.DataFrame({'item_id': ['a', 'b', 'c'], 'modality': ['text'] * 3, 'text': ['x y', 'y z', 'z w'], 'image': [''] * 3})
    inter = pd.DataFrame({'user_id': ['u'] * 3 + ['v'] * 3, 'item_id': ['a', 'b', 'c', 'c', 'b', 'a'], 'timestamp': range(6)})
    return write_dataset(path, items, inter, {'name': name, 'synthetic': False, 'description': 'real test data'})


def test_registry_names():
    names = sources.list_sources()
    assert names[0] == 'qb_mixed'
    assert {'qb_text', 'qb_image', 'tn_mixed', 'tn_text'} <= set(names)
    assert all(sources.SOURCES[n].synthetic in sim.SYNTHETIC_DOMAINS for n in names)


def test_synthetic_fallback_is_built_once_and_announced(tmp_path, logs):
    p = sources.materialise('qb_text', root=tmp_path, scale=SMALL, seed=4)
    assert p == tmp_path/'synthetic'/'qb_text-scale0.05-seed4'
    meta = json.loads((p/'meta.json').read_text())
    assert meta['synthetic'] is True and meta['name'] == 'qb_text' and meta['generator']['seed'] == 4
    assert any('SYNTHETIC DATA' in m and 'qb_text' in m for m in logs)
    assert sum('built synthetic' in m for m in logs) == 1
    mtime = (p/'items.tsv').stat().st_mtime_ns
    logs.clear()
    assert sources.materialise('qb_text', root=tmp_path, scale=SMALL, seed=4) == p
    assert (p/'items.tsv').stat().st_mtime_ns == mtime and not any('built synthetic' in m for m in logs)
    assert any('SYNTHETIC DATA' in m for m in logs)             # announced on every use, not only when built
    before = digest(p)
    sources.materialise('qb_text', root=tmp_path, scale=SMALL, seed=4, force=True)
    assert any('built synthetic' in m for m in logs) and digest(p) == before
    assert sorted(q.name for q in (tmp_path/'synthetic').iterdir()) == ['qb_text-scale0.05-seed4']


def test_scale_and_seed_get_their_own_cache(tmp_path):
    a = sources.materialise('tn_text', root=tmp_path, scale=SMALL, seed=0)
    b = sources.materialise('tn_text', root=tmp_path, scale=0.1, seed=0)
    c = sources.materialise('tn_text', root=tmp_path, scale=SMALL, seed=1)
    assert len({a, b, c}) == 3
    assert json.loads((b/'meta.json').read_text())['counts']['users'] == 80


def test_stale_cache_is_rebuilt(tmp_path):
    p = sources.materialise('qb_image', root=tmp_path, scale=SMALL)
    m = json.loads((p/'meta.json').read_text()); m['generator']['version'] = 0
    (p/'meta.json').write_text(json.dumps(m))
    sources.materialise('qb_image', root=tmp_path, scale=SMALL)
    assert json.loads((p/'meta.json').read_text())['generator']['version'] == sim.GENERATOR_VERSION


def test_real_files_win(tmp_path, logs):
    real_dataset(tmp_path/'tn_mixed', 'tn_mixed')
    assert sources.has_real_files('tn_mixed', tmp_path)
    assert sources.materialise('tn_mixed', root=tmp_path, scale=3.0, seed=9) == tmp_path/'tn_mixed'
    assert not (tmp_path/'synthetic').exists()
    assert not any('SYNTHETIC' in m for m in logs)
    ds = sources.load_source('tn_mixed', root=tmp_path)
    assert ds.synthetic is False and ds.n_items == 3


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path))
    p = sources.materialise('qb_text', scale=SMALL)
    assert p == tmp_path/'synthetic'/'qb_text-scale0.05-seed0'
    ds = sources.load_source('qb_text', scale=SMALL)
    assert ds.synthetic and ds.n_users == 40 and ds.name == 'qb_text'


def test_path_to_a_mom_folder_is_accepted(tmp_path):
    p = real_dataset(tmp_path/'mine', 'mine')
    assert sources.materialise(str(p)) == p
    assert sources.materialise(p) == p
    assert sources.load_source(str(p)).n_users == 2
    (tmp_path/'empty').mkdir()
    with pytest.raises(ValueError, match='no items.tsv'):
        sources.materialise(str(tmp_path/'empty'))


def test_unknown_name_lists_the_available_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        sources.materialise('qq_browser', root=tmp_path)
    for n in sources.list_sources(): assert n in str(e.value)


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    real_build = sim.build_synthetic
    def broken(name, out_dir, **kw):
        real_build(name, out_dir, **kw)           # writes the complete data set ...
        raise KeyboardInterrupt('killed')         # ... and is interrupted before the rename
    monkeypatch.setattr(sim, 'build_synthetic', broken)
    with pytest.raises(KeyboardInterrupt):
        sources.materialise('qb_text', root=tmp_path, scale=SMALL)
    assert list((tmp_path/'synthetic').iterdir()) == []
    monkeypatch.setattr(sim, 'build_synthetic', real_build)
    p = sources.materialise('qb_text', root=tmp_path, scale=SMALL)
    assert (p/'items.tsv').is_file()


def test_cache_folder_without_items_is_rebuilt(tmp_path):
    p = sources.synthetic_dir('qb_text', tmp_path, SMALL, 0)
    p.mkdir(parents=True); (p/'meta.json').write_text(json.dumps({'synthetic': True}))   # a leftover without data
    assert (sources.materialise('qb_text', root=tmp_path, scale=SMALL)/'items.tsv').is_file()


def run_cli(*args, cwd):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}; env.pop('TRANSREC_DATA', None)
    return subprocess.run([sys.executable, '-m', 'transrec.sources', *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_list(tmp_path):
    real_dataset(tmp_path/'qb_text', 'qb_text')
    r = run_cli('list', '--root', str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines()[2:]}
    assert set(lines) == set(sources.list_sources())
    assert 'REAL files present' in lines['qb_text'] and 'synthetic stand-in' in lines['qb_mixed']


def test_cli_build_writes_exactly_root_name(tmp_path):
    r = run_cli('build', 'tn_text', '--root', str(tmp_path/'out'), '--scale', str(SMALL), '--seed', '2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path/'out'/'tn_text'
    assert [q.name for q in (tmp_path/'out').iterdir()] == ['tn_text']
    assert {'items.tsv', 'interactions.tsv', 'meta.json', 'sim_truth.json'} <= {q.name for q in out.iterdir()}
    assert 'SYNTHETIC' in r.stdout and json.loads((out/'meta.json').read_text())['synthetic'] is True
    # same files as the cached build of materialise with the same scale and seed
    assert digest(out) == digest(sources.materialise('tn_text', root=tmp_path/'cache', scale=SMALL, seed=2))
    # a second build keeps the folder; --force rebuilds it identically
    mtime = (out/'items.tsv').stat().st_mtime_ns
    assert run_cli('build', 'tn_text', '--root', str(tmp_path/'out'), '--scale', str(SMALL), '--seed', '2', cwd=tmp_path).returncode == 0
    assert (out/'items.tsv').stat().st_mtime_ns == mtime


def test_cli_build_refuses_bad_input_and_keeps_real_files(tmp_path):
    r = run_cli('build', 'nope', '--root', str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and 'qb_mixed' in r.stderr and 'tn_text' in r.stderr
    real_dataset(tmp_path/'qb_mixed', 'qb_mixed'); before = digest(tmp_path/'qb_mixed')
    r = run_cli('build', 'qb_mixed', '--root', str(tmp_path), '--scale', str(SMALL), cwd=tmp_path)
    assert r.returncode == 0 and 'left untouched' in r.stdout and digest(tmp_path/'qb_mixed') == before
    (tmp_path/'qb_image').mkdir(); (tmp_path/'qb_image'/'notes.txt').write_text('mine')
    r = run_cli('build', 'qb_image', '--root', str(tmp_path), '--scale', str(SMALL), cwd=tmp_path)
    assert r.returncode == 1 and 'refusing to replace' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path/'qb_image'/'notes.txt').read_text() == 'mine'
