"Tests of transrec.bench in quick mode: the reference step does the same work, JSON structure, CLI, isolation. No timing assertions."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import numpy as np
import pytest
import torch
from transrec.core import ModelConfig, seed_everything
from transrec.model import build_model
from transrec.encoders import make_content
from transrec import bench
from transrec.bench import (bench_dataset, bench_batch, occurrence_slots, reference_item_vectors, reference_loss, step_variants, bench_training,
                            run_bench, run_isolated, weights_sha1, PeakMemory, TrainSpec, StepVariant, loss_check, main,
                            eval_chunk_size, datasheet_bf16, QUICK, fit_exponent, NO_CUDA)

torch.set_num_threads(1)
CFG = ModelConfig(**QUICK['model_config'])


@pytest.fixture(scope='module')
def root(tmp_path_factory): return tmp_path_factory.mktemp('bench')

@pytest.fixture(scope='module')
def ds(root): return bench_dataset('mixed', root=root, scale=0.05)

@pytest.fixture(scope='module')
def batch(ds): return bench_batch(ds, CFG, batch_size=8)


def test_occurrence_slots(batch):
    slots = occurrence_slots(batch)
    m = batch.mask
    k = int(m.sum())
    assert len(slots) == k * (1 + batch.neg.shape[-1]) > len(batch.items)
    assert torch.equal(batch.items[slots[:k]], batch.items[batch.seq[m]])            # history/positive positions, in order
    assert torch.equal(batch.items[slots[k:]], batch.items[batch.neg[m]].reshape(-1))  # then every negative
    assert torch.equal(torch.unique(slots), torch.arange(len(batch.items)))


@pytest.mark.parametrize('loss', ['softmax', 'bce'])
def test_reference_step_same_loss_and_gradients(ds, batch, loss):
    cfg = CFG.replace(loss=loss)
    seed_everything(0); model = build_model(cfg).eval()
    model.item_tower.text.length_bucket = 4            # our text path sorts into small length buckets, the reference does not
    c_ref, c_ours = make_content(cfg, ds, prefix_cache=False), make_content(cfg, ds)
    with torch.no_grad():
        torch.testing.assert_close(reference_item_vectors(model, batch, c_ref), model.item_vectors(batch.items, c_ours),
                                   atol=1e-5, rtol=1e-4)
    out = {}
    for name, fn in (('ref', lambda: reference_loss(model, batch, c_ref)), ('ours', lambda: model.loss(batch, c_ours)),
                     ('ours_warm', lambda: model.loss(batch, c_ours))):
        model.zero_grad(); l, info = fn(); l.backward()
        out[name] = l.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert c_ours.caches and all(c.n_filled > 0 for c in c_ours.caches.values())   # the cache was really used
    for k in ('ours', 'ours_warm'):
        assert out[k][0] == pytest.approx(out['ref'][0], rel=1e-5)
        assert sorted(out[k][1]) == sorted(out['ref'][1])
        for n, g in out['ref'][1].items(): torch.testing.assert_close(out[k][1][n], g, atol=1e-5, rtol=1e-3)
    # a different batch gives a different loss: the check can fail
    other = bench_batch(ds, cfg, batch_size=8, seed=1)
    with torch.no_grad(): assert reference_loss(model, other, c_ref)[0].item() != pytest.approx(out['ref'][0], rel=1e-5)


def test_step_variants_cpu():
    vs, skipped = step_variants('cpu')
    assert [v.name for v in vs] == ['reference', 'unique', 'default'] and skipped == []
    assert vs[0].every_occurrence and not vs[0].prefix_cache and vs[0].amp == 'none'
    assert not vs[2].every_occurrence and vs[2].prefix_cache
    vs, skipped = step_variants('cpu', amp='bf16', compile=True)
    assert [s['option'] for s in skipped] == ['--amp bf16', '--compile'] and all('CUDA' in s['reason'] for s in skipped)
    with pytest.raises(ValueError, match='fp8'): step_variants('cpu', amp='fp8')


def test_loss_check_detects_mismatch():
    rows = [dict(variant='reference', initial_loss=1.0, amp='fp32', weights_sha1='a'),
            dict(variant='default', initial_loss=1.0 + 1e-7, amp='fp32', weights_sha1='a')]
    assert loss_check(rows)['ok']
    assert not loss_check([rows[0], dict(rows[1], initial_loss=1.1)])['ok']
    assert not loss_check([rows[0], dict(rows[1], weights_sha1='b')])['ok']


def test_peak_memory_sees_allocation():
    with PeakMemory('cpu') as pm:
        x = np.ones(32 * 2**20 // 8); x += 1; del x
    assert pm.peak_mb >= 28 and pm.method


def test_bench_training_in_process(root):
    tr = bench_training(data=('mixed',), model_config=CFG, root=root, scale=0.05, batch_size=8, steps=1, warmup=1,
                        isolate=False, progress=False, ceiling_n=256)
    rows = {r['variant']: r for r in tr['rows']}
    assert list(rows) == ['reference', 'unique', 'default']
    assert tr['loss_check']['mixed']['ok'] and tr['loss_check']['mixed']['same_weights']
    ref, ours = rows['reference'], rows['default']
    assert ref['initial_loss'] == pytest.approx(ours['initial_loss'], rel=1e-5)
    assert ref['speedup'] == 1.0 and ref['n_encoded'] == ref['n_occurrences'] and ours['n_encoded'] == ours['n_unique']
    assert ref['step_flops'] > rows['unique']['step_flops'] > ours['step_flops'] > 0
    for r in rows.values():
        assert r['seq_per_s'] > 0 and set(r['phases_s']) == {'forward', 'backward', 'optimizer'}
        assert r['forward_flops']['total'] >= r['forward_flops']['text'] + r['forward_flops']['image'] > 0
        # the AdamW state (2 fp32 tensors per trainable parameter) is allocated inside the measured steps: a known allocation
        assert r['peak_mem_mb'] * 2**20 >= 0.9 * 2 * 4 * r['trainable_params'] > 0
        # share of peak from the raw numbers: a step is a forward and a backward, so it counts more FLOPs than a forward,
        # its time is the median of the raw step times, and no step runs faster than the measured matmul ceiling
        assert r['step_flops'] > r['forward_flops']['total']
        assert len(r['step_times_s']) == 1 and r['step_s'] == pytest.approx(float(np.median(r['step_times_s'])))
        independent = r['step_flops'] / float(np.median(r['step_times_s'])) / r['peak_flops']
        assert 0 < r['share_of_peak'] == pytest.approx(independent, rel=1e-9) and r['share_of_peak'] < 1.5


def test_run_bench_quick_json(root):
    res = run_bench(quick=True, data=('mixed',), root=root, isolate=False, progress=False, n_items=(1000, 5000), n_users=(32, 64))
    res = json.loads(json.dumps(res))                                       # JSON-able
    assert set(res) == {'machine', 'settings', 'ceilings', 'skipped', 'training', 'evaluation', 'targets'}
    m = res['machine']
    assert m['device'] == 'cpu' and m['cpu_count'] >= 1 and m['torch_threads'] == 1
    assert res['ceilings']['fp32'] > 0
    ev = res['evaluation']
    assert [(r['n_items'], r['n_users']) for r in ev['rows']] == [(1000, 32), (1000, 64), (5000, 32), (5000, 64)]
    for r in ev['rows']:
        assert r['matmul_flops'] > 0 and r['ideal_users_per_s'] == pytest.approx(r['matmul_flops'] / (2 * r['n_items'] * ev['dim']))
        assert r['ideal_over_metrics'] == pytest.approx(r['ideal_users_per_s'] / r['metrics_users_per_s'])
        assert r['chunk_size'] == eval_chunk_size(r['n_items'], QUICK['chunk_mb'], tile_items=r['tile_items'])
        assert r['chunk_size_untiled'] == eval_chunk_size(r['n_items'], QUICK['chunk_mb'])
        assert r['ideal_over_untiled'] == pytest.approx(r['ideal_users_per_s'] / r['untiled_users_per_s'])
    assert set(ev['memory_vs_users']['metrics_peak_mb']) == {'32', '64'}
    assert {'train_default_vs_reference_mixed', 'eval_metrics_within_2x_of_ceiling', 'eval_memory_independent_of_users'} <= set(res['targets'])
    text = bench.render(res)
    assert 'reference' in text and 'ideal' in text and 'target train_default_vs_reference_mixed' in text


def test_isolated_child_builds_the_same_model(root, ds):
    spec = TrainSpec('mixed', vars(StepVariant('default')), CFG.to_dict(), str(root), 0.05, 0, 8, 1, 1, 'cpu', 1, False, 256)
    r = run_isolated('train', vars(spec))
    seed_everything(0); here = build_model(CFG)
    assert r['weights_sha1'] == weights_sha1(here)                          # same seed -> same weights in the child
    assert r['data'] == 'mixed' and r['n_items'] == ds.n_items and r['threads'] == 1 and r['seq_per_s'] > 0
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


def test_cli_errors(capsys):
    with pytest.raises(SystemExit) as e: main(['--steps', '0'])
    assert e.value.code == 2
    with pytest.raises(SystemExit): main(['--items', 'many'])
    if not torch.cuda.is_available():
        assert main(['--quick', '--parts', 'eval', '--device', 'cuda']) == 2
        assert 'CUDA' in capsys.readouterr().err


def test_datasheet_lookup():
    assert datasheet_bf16('NVIDIA H100 80GB HBM3') == 989e12
    assert datasheet_bf16('NVIDIA H100 PCIe') == 756e12
    assert datasheet_bf16('Some Other GPU') is None


def test_fit_exponent_known_slopes():
    n = np.array([2_000, 20_000, 200_000, 2_000_000], dtype=float)
    assert fit_exponent(n, 3 * n ** 1.2) == pytest.approx(1.2, abs=1e-9)
    assert fit_exponent(n, 0.5 * n ** -0.3) == pytest.approx(-0.3, abs=1e-9)
    noisy = 2 * n ** 0.8 * np.array([1.05, 0.95, 1.02, 0.98])
    assert fit_exponent(n, noisy) == pytest.approx(np.polyfit(np.log(n), np.log(noisy), 1)[0])
    assert fit_exponent([10, 10], [1, 2]) is None
    with pytest.raises(ValueError, match='> 0'): fit_exponent([1, 10], [0.0, 1.0])
    with pytest.raises(ValueError, match='one cost per size'): fit_exponent([1, 10, 100], [1, 2])


def test_cli_scale_tiny(tmp_path, capsys):
    out = tmp_path/'scale.json'
    rc = main(['scale', '--scales', '0.02', '0.04', '--steps', '2', '--sizes', '32', '--batch-size', '4', '--workers', '0',
               '--threads', '1', '--work-dir', str(tmp_path/'work'), '--json', str(out)])
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
    assert 'decode on the fly' in res['settings']['pixel_source'] or 'pixel store' in res['settings']['pixel_source']
    printed = capsys.readouterr().out
    assert 'exponents vs interactions' in printed and 'pipeline ratio' in printed


def test_scale_data_reused(tmp_path):
    first, again = bench.scale_data(tmp_path, 0.02), bench.scale_data(tmp_path, 0.02)
    assert (first['reused'], again['reused']) == (False, True) and again['build_s'] == first['build_s']
    assert first['disk_mb'] > first['image_mb'] > 0


def test_cli_scale_errors():
    for bad in (['--scales', '0'], ['--scales', 'x'], ['--steps', '0'], ['--sizes', '8']):
        with pytest.raises(SystemExit) as e: main(['scale'] + bad)
        assert e.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without CUDA')
def test_cli_gpu_needs_cuda(tmp_path, capsys):
    out = tmp_path/'gpu.json'
    assert main(['gpu', '--json', str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == NO_CUDA == 'needs CUDA: no GPU here'
    assert json.loads(out.read_text()) == dict(skipped=True, reason=NO_CUDA, rows=[])
