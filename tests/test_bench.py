"""Tests of transrec.bench that run child processes: `run_isolated` and the command lines that measure in fresh
processes (quick sizes, no timing assertions). Unit behaviour is tested in nbs/09_bench.ipynb."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import numpy as np
import pytest
import torch
from transrec.core import ModelConfig, seed_everything
from transrec.model import build_model
from transrec import bench
from transrec.bench import (bench_dataset, run_isolated, weights_sha1, TrainSpec, StepVariant, main, QUICK)

torch.set_num_threads(1)
CFG = ModelConfig(**QUICK['model_config'])


@pytest.fixture(scope='module')
def root(tmp_path_factory): return tmp_path_factory.mktemp('bench')

@pytest.fixture(scope='module')
def ds(root): return bench_dataset('mixed', root=root, scale=0.05)


def test_isolated_child_builds_the_same_model(root, ds):
    spec = TrainSpec('mixed', vars(StepVariant('default')), CFG.to_dict(), str(root), 0.05, 0, 8, 1, 1, 'cpu', 1,
                     False, 256)
    r = run_isolated('train', vars(spec))
    seed_everything(0)
    here = build_model(CFG)
    assert r['weights_sha1'] == weights_sha1(here)                          # same seed -> same weights in the child
    assert (r['data'], r['n_items'], r['threads'], r['n_sequences']) == ('mixed', ds.n_items, 1, 8)
    assert r['seq_per_s'] == pytest.approx(r['n_sequences'] / r['step_s'])
    with pytest.raises(RuntimeError, match='child process failed'):
        run_isolated('train', dict(vars(spec), data='audio'))


def test_cli_quick_eval_isolated_with_skips(tmp_path, capsys):
    out = tmp_path/'bench.json'
    rc = main(['--quick', '--parts', 'eval', '--items', '1000', '--users', '32,64', '--threads', '1', '--amp', 'bf16',
               '--compile', '--json', str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res['settings']['isolate'] and res['settings']['n_items'] == [1000] and res['settings']['n_users'] == [32, 64]
    assert [s['option'] for s in res['skipped']] == ['--amp bf16', '--compile']
    assert 'training' not in res and len(res['evaluation']['rows']) == 2
    printed = capsys.readouterr().out
    assert 'skipped --amp bf16' in printed and 'Full-ranking evaluation' in printed


def test_cli_scale_tiny(tmp_path, capsys):
    out = tmp_path/'scale.json'
    rc = main(['scale', '--scales', '0.02', '0.04', '--steps', '2', '--sizes', '32', '--batch-size', '4', '--workers',
               '0', '--threads', '1', '--work-dir', str(tmp_path/'work'), '--json', str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) == {'machine', 'settings', 'points', 'exponents', 'pipeline_ratio', 'targets'}
    pts = res['points']
    assert [p['scale'] for p in pts] == [0.02, 0.04] and pts[0]['n_interactions'] < pts[1]['n_interactions']
    assert pts[0]['n_users'] == 40 and pts[1]['n_users'] == 80                     # 2,000 users x scale
    for p in pts:
        for k in ('build_s', 'disk_mb', 'image_mb', 'load_s', 'load_peak_rss_mb', 'peak_rss_mb', 'eval_s'):
            assert np.isfinite(p[k]) and p[k] > 0, k
        assert p['peak_rss_mb'] >= p['load_peak_rss_mb']
        t = p['train']['32']
        for k in ('seq_per_s', 'interactions_per_s', 's_per_interaction', 'pipeline_images_per_s', 'model_images_per_s'):
            assert np.isfinite(t[k]) and t[k] > 0, k
        assert t['steps'] == 2 and t['losses_finite'] and t['pipeline']['workers'] == 0
    ex = res['exponents']
    assert set(ex) == {'load_s', 'eval_s', 'peak_rss_mb', 'load_peak_rss_mb', 'build_s', 'disk_mb',
                       'train_s_per_interaction_32px'}
    logn = np.log([p['n_interactions'] for p in pts])
    for k, cost in (('load_s', 'load_s'), ('eval_s', 'eval_s'), ('peak_rss_mb', 'peak_rss_mb')):
        slope = (np.log(pts[1][cost]) - np.log(pts[0][cost])) / (logn[1] - logn[0])   # two points: the line through them
        assert ex[k] == pytest.approx(slope, rel=1e-6, abs=1e-9)
    t0, t1 = (p['train']['32'] for p in pts)
    assert res['pipeline_ratio']['32'] == pytest.approx(t1['pipeline_images_per_s'] / t1['model_images_per_s'])
    growth = res['targets']['train_cost_per_interaction_growth_32px']
    assert growth['measured'] == pytest.approx(t1['train_s'] / t1['interactions'] / (t0['train_s'] / t0['interactions']))
    assert res['settings']['pixel_source'] == bench.pixel_source()
    printed = capsys.readouterr().out
    assert 'exponents vs interactions' in printed and 'pipeline ratio' in printed


def test_cli_load_tiny(root, ds, tmp_path, capsys):
    import tempfile
    from pathlib import Path
    leftovers = lambda: set(Path(tempfile.gettempdir()).glob('transrec-bench-load-*'))
    before = leftovers()
    out = tmp_path/'load.json'
    rc = main(['load', '--quick', '--root', str(root), '--json', str(out)])
    assert rc == 0
    assert leftovers() <= before                     # the stopped competitors removed their folders too
    res = json.loads(out.read_text())
    assert set(res) == {'machine', 'settings', 'rows', 'summary'}
    rows = res['rows']
    assert [(r['policy'], r['wait_policy']) for r in rows] == [('machine', 'default'), ('usable', 'passive')]
    for row in rows:
        for run in (row['alone'], row['loaded']):
            assert run['seq_per_s'] > 0 and run['steps'] == 2 and 0 < run['sequences'] <= 16
            assert run['seq_per_s'] == pytest.approx(run['sequences'] / run['train_s'])
        assert row['ratio'] == pytest.approx(row['loaded']['seq_per_s'] / row['alone']['seq_per_s'])
    machine, usable = (row['alone'] for row in rows)
    assert machine['omp_wait_policy'].startswith('OpenMP default') and usable['omp_wait_policy'] == 'PASSIVE'
    assert 'policy machine' in machine['plan'] and 'policy usable' in usable['plan']
    assert usable['torch_interop_threads'] == 1
    summary = res['summary']
    assert summary['before'] == rows[0]['ratio'] and summary['after'] == rows[1]['ratio']
    assert summary['after_over_before'] == pytest.approx(rows[1]['ratio'] / rows[0]['ratio'])
    assert summary['shared_speedup'] == pytest.approx(rows[1]['loaded']['seq_per_s'] / rows[0]['loaded']['seq_per_s'])
    printed = capsys.readouterr().out
    assert 'before -> after' in printed and 'Sharing the cores' in printed
