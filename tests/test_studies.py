"""The transfer and scaling studies over seeds: intervals per cell, the gain of pre-training, paired tests
over users from the runs' `per_user.npz`, gain against domain shift, the scaling curves.

Each test builds a study folder of finished runs by hand (metrics.json with the parameters the study would
pass, per_user.npz with known ranks): the study reuses them instead of training, so every number it reports
can be checked against a computation done here, in seconds. tests/test_experiments.py runs the study
notebooks end to end on real tiny runs."""
import json
from pathlib import Path
import numpy as np
import pytest
from scipy import stats
from transrec import experiment as ex, study
from transrec import sim
from transrec.metrics import per_user_metrics, metrics_from_ranks

FINETUNE = dict(seed=0, device='cpu', dim=16, epochs=1, progress=False)
PRETRAIN = dict(seed=0, device='cpu', dim=16, epochs=1, progress=False)


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    "Any run the study would start fails the test: every run must be reused from the folder built here."
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'no-data'))       # no real files: synthetic shifts apply
    def refuse(nb, run_dir, params): raise AssertionError(f'the study started a run: {nb} -> {run_dir}')
    monkeypatch.setattr(study, 'run_notebook', refuse)


def fake_run(run_dir, params, ranks=None, groups=None, test=None, **extra):
    "A finished run in `run_dir`: metrics.json recording `params`, and per_user.npz when `ranks` are given."
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ranks is not None:
        ex.write_per_user(run_dir, [f'u{i}' for i in range(len(ranks))], ranks, groups)
        cold = np.asarray(groups) == 'cold'
        test = metrics_from_ranks(np.asarray(ranks)[cold], ks=(10,))
    # every training setting, as a real run records it (the preset's defaults included)
    settings = study._training_settings_now('pretrain' if 'source' in params else 'finetune', params)
    params = {**settings, **params, 'out_dir': str(run_dir.resolve())}
    metrics = dict(experiment='finetune', params=params, test=test,
                   test_all=test, wall_time_s=1.0, synthetic=True, best_dir=str(run_dir/'best'), **extra)
    ex.write_metrics(run_dir, metrics)
    return metrics


def user_ranks(rng, n_users, best):
    "Ranks of `n_users` users; a smaller `best` puts more test items near the top."
    return rng.integers(1, best, n_users)


def build_transfer_study(out, seeds=(0, 1), targets=('qb_text', 'nc_mixed'), skip_per_user=(), source='qb_mixed'):
    "Pre-train and fine-tune runs for the study `transfer_study(out, source, targets, seeds=len(seeds))`."
    rng = np.random.default_rng(0)
    groups = ['cold'] * 40 + ['warm'] * 10
    for seed in seeds:
        pre = out/f'pretrain-{source}'/f'seed-{seed}'
        fake_run(pre, dict(source=source, **{**PRETRAIN, 'seed': seed}), test={'NDCG@10': 0.3})
        for target in targets:
            # qb_text: pre-training clearly helps; nc_mixed: +/- noise around no effect
            best = dict(transrec=30, popularity=60, pretrained=8 if target == 'qb_text' else 30)
            for method in ('transrec', 'transrec-pretrained', 'popularity'):
                kind, init = (('transrec', str((pre/'best').resolve())) if method == 'transrec-pretrained'
                              else (method, 'scratch'))
                params = dict(target=target, init=init, kind=kind, target_fraction=0.2,
                              **{**FINETUNE, 'seed': seed})
                ranks = user_ranks(rng, len(groups), best['pretrained' if init != 'scratch' else method])
                keep = (target, method, seed) not in skip_per_user
                fake_run(out/target/method/f'seed-{seed}', params, ranks if keep else None, groups,
                         test=None if keep else {'NDCG@10': 0.1, 'HR@10': 0.2}, zero_shot={'NDCG@10': 0.05})


def run_transfer(out, **kw):
    return study.transfer_study(out, 'qb_mixed', kw.pop('targets', ['qb_text', 'nc_mixed']),
                             methods=['transrec', 'transrec-pretrained', 'popularity'], target_fraction=0.2,
                             seeds=2, pretrain_params=PRETRAIN, finetune_params=FINETUNE, **kw)


def per_user_ndcg(run_dir):
    "By hand: NDCG@10 of the held-out (cold) users of one run's per_user.npz."
    with np.load(Path(run_dir)/'per_user.npz', allow_pickle=False) as f:
        users, ranks, groups = f['user'], f['rank'], f['group']
    cold = groups == 'cold'
    return dict(zip(users[cold].tolist(), per_user_metrics(ranks[cold], (10,))['NDCG@10']))


def test_summary_has_intervals_per_cell_and_p_values_from_the_per_user_files(tmp_path, no_training):
    out = tmp_path/'transfer'
    build_transfer_study(out)
    summary = run_transfer(out)
    saved = json.loads((out/'summary.json').read_text())
    assert saved['seeds'] == [0, 1] and saved['evaluated_on'].startswith('held-out')
    for target in ('qb_text', 'nc_mixed'):
        for method in ('transrec', 'transrec-pretrained', 'zero-shot', 'popularity'):
            cell = saved['table'][target][method]['NDCG@10']
            assert set(cell) >= {'mean', 'half_width', 'n'} and cell['n'] == 2
            per_seed = [run['NDCG@10'] for run in saved['results'][target][method]]
            assert cell['mean'] == pytest.approx(np.mean(per_seed))
            half_width = stats.t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / np.sqrt(2)
            assert cell['half_width'] == pytest.approx(half_width)
        # the p-value, recomputed by hand from the saved per-user files with scipy's Wilcoxon test
        pre = [per_user_ndcg(out/target/'transrec-pretrained'/f'seed-{s}') for s in (0, 1)]
        scratch = [per_user_ndcg(out/target/'transrec'/f'seed-{s}') for s in (0, 1)]
        users = sorted(pre[0])
        diff = [np.mean([pre[s][u] for s in (0, 1)]) - np.mean([scratch[s][u] for s in (0, 1)])
                for u in users]
        paired = saved['table'][target]['paired_NDCG@10']
        assert 0 <= paired['p_value'] <= 1 and paired['n_users'] == 40        # held-out users only
        assert paired['p_value'] == pytest.approx(stats.wilcoxon(diff).pvalue)
        assert paired['diff'] == pytest.approx(np.mean(diff))
    assert saved['table']['qb_text']['paired_NDCG@10']['p_value'] < 0.01     # built to help on qb_text
    assert summary['gain_vs_shift'] == saved['gain_vs_shift']         # what it returns is what it wrote


def test_gain_vs_shift_has_one_point_per_target_at_its_domain_shift(tmp_path, no_training):
    out = tmp_path/'transfer'
    build_transfer_study(out)
    run_transfer(out)
    saved = json.loads((out/'summary.json').read_text())
    points = {p['target']: p for p in saved['gain_vs_shift']}
    assert set(points) == {'qb_text', 'nc_mixed'}
    for target, point in points.items():
        assert point['domain_shift'] == sim.domain_shift(sim.domain_spec(target))
        diff = saved['table'][target]['diff_NDCG@10']
        assert point['mean'] == diff['mean'] and point['half_width'] == diff['half_width'] and point['n'] == 2
        assert point['relative_gain'] == saved['table'][target]['gain_NDCG@10']['mean']
        runs = saved['results'][target]
        pairs = list(zip(runs['transrec-pretrained'], runs['transrec']))
        assert point['mean'] == pytest.approx(np.mean([p['NDCG@10'] - s['NDCG@10'] for p, s in pairs]))
        relative = [(p['NDCG@10'] - s['NDCG@10']) / s['NDCG@10'] for p, s in pairs]
        assert point['relative_gain'] == pytest.approx(np.mean(relative))
    html = (out/'gain_vs_shift.html').read_text()
    assert 'domain shift' in html and 'nc_mixed' in html



def test_transfer_study_takes_a_both_target_and_a_both_source(tmp_path, no_training):
    "tn_both as a target (its shift: tn_mixed's, the mix of parts is no ladder dial) and qb_both as the source."
    out = tmp_path/'transfer'
    build_transfer_study(out, targets=('tn_both',))
    saved = run_transfer(out, targets=['tn_both'])
    assert saved['domain_shift']['tn_both'] == sim.domain_shift(sim.domain_spec('tn_mixed')) == 0.5
    assert saved['table']['tn_both']['paired_NDCG@10']['n_users'] == 40
    assert '| tn_both | 0.50 | 2 |' in (out/'table.md').read_text()
    both_out = tmp_path/'transfer-from-both'
    build_transfer_study(both_out, targets=('tn_both',), source='qb_both')
    saved = study.transfer_study(both_out, 'qb_both', ['tn_both'], methods=['transrec', 'transrec-pretrained'],
                                 target_fraction=0.2, seeds=2, pretrain_params=PRETRAIN, finetune_params=FINETUNE)
    assert saved['source'] == 'qb_both' and saved['pretrained']['0'].endswith('pretrain-qb_both/seed-0/best')

def test_table_marks_not_significant_and_missing_per_user_files(tmp_path, no_training):
    out = tmp_path/'transfer'
    build_transfer_study(out, skip_per_user={('nc_mixed', 'transrec', 1)})
    run_transfer(out)
    saved = json.loads((out/'summary.json').read_text())
    table = (out/'table.md').read_text()
    nc_line = next(line for line in table.splitlines() if line.startswith('| nc_mixed |'))
    assert 'n/a: no per_user.npz' in nc_line and 'note' in saved['table']['nc_mixed']['paired_NDCG@10']
    gain = saved['table']['nc_mixed']['gain_NDCG@10']
    if gain['low'] <= 0 <= gain['high']:
        assert gain['significant'] is False and '(n.s.)' in nc_line
    else:
        assert gain['significant'] is True and '(n.s.)' not in nc_line
    qb_line = next(line for line in table.splitlines() if line.startswith('| qb_text |'))
    assert '| 0.00 | 2 |' in qb_line and ' ± ' in qb_line
    assert 'held-out (cold) users' in table


def test_seeds_are_counted_from_seed_and_checked(tmp_path, no_training):
    assert study.study_seeds(2, 5) == [5, 6]
    with pytest.raises(ValueError, match='seeds=0: give the number of seeds'):
        study.transfer_study(tmp_path/'t', 'qb_mixed', ['qb_text'], seeds=0, finetune_params=FINETUNE)


def build_scaling_study(out, seeds=(0, 1)):
    """Runs of `scaling_study(out, 'qb_mixed', 'tn_mixed', (0.5,), (0.2,), 0.2, seeds=2)`, with histories and
    per-user ranks: the pre-trained models rank the test items higher than scratch, more so from more users."""
    rng = np.random.default_rng(1)
    groups = ['cold'] * 40 + ['warm'] * 10
    for seed in seeds:
        for share in (0.5, 1.0):
            pre = out/f'pretrain-s{share}'/f'seed-{seed}'
            fake_run(pre, dict(source='qb_mixed', source_fraction=share, **{**PRETRAIN, 'seed': seed}),
                     test={'NDCG@10': 0.3}, train_data={'users': int(100 * share)})
            history = [dict(epoch=e, **{'valid_NDCG@10': 0.1 * share + 0.01 * e + 0.001 * seed})
                       for e in (1, 2, 3)]
            fake_run(out/f'finetune-s{share}-t0.2'/f'seed-{seed}',
                     dict(target='tn_mixed', init=str((pre/'best').resolve()), target_fraction=0.2,
                          **{**FINETUNE, 'seed': seed}),
                     user_ranks(rng, len(groups), 6 if share == 1.0 else 10), groups,
                     zero_shot={'NDCG@10': 0.05 * share}, history=history, train_data={'users': 20})
        fake_run(out/'scratch-t0.2'/f'seed-{seed}',
                 dict(target='tn_mixed', init='scratch', kind='transrec', target_fraction=0.2,
                      **{**FINETUNE, 'seed': seed}),
                 user_ranks(rng, len(groups), 60), groups, train_data={'users': 20},
                 history=[dict(epoch=e, **{'valid_NDCG@10': 0.01 * e}) for e in (1, 2)])


def test_scaling_study_reports_intervals_and_convergence_bands_per_source_size(tmp_path, no_training):
    out = tmp_path/'scaling'
    build_scaling_study(out)
    study.scaling_study(out, 'qb_mixed', 'tn_mixed', source_fractions=(0.5,), target_fractions=(0.2,),
                     base_target_fraction=0.2, seeds=2, pretrain_params=PRETRAIN, finetune_params=FINETUNE)
    res = json.loads((out/'scaling.json').read_text())
    assert res['target'] == 'tn_mixed' and res['seeds'] == [0, 1]
    assert set(res['source_scaling']) == {'0.5', '1.0'}
    full = res['source_scaling']['1.0']
    assert full['source_users'] == 100 and full['finetuned']['n'] == 2 and full['finetuned']['half_width'] > 0
    runs = [json.loads((out/'finetune-s1.0-t0.2'/f'seed-{s}'/'metrics.json').read_text()) for s in (0, 1)]
    assert full['finetuned']['mean'] == pytest.approx(np.mean([run['test']['NDCG@10'] for run in runs]))
    band = res['convergence']['0.5']
    assert band['epoch'] == [1, 2, 3] and band['n'] == [2, 2, 2]
    assert band['mean'][0] == pytest.approx(0.05 + 0.01 + 0.0005)
    assert all(low < mean < high for low, mean, high in zip(band['low'], band['mean'], band['high']))
    assert res['convergence']['scratch']['epoch'] == [1, 2]
    target = res['target_scaling']['0.2']
    assert target['scratch']['n'] == 2 and target['pretrained']['n'] == 2
    assert target['difference']['significant'] is True and target['held_out_users'] == 40
    for row, share in ((target, 1.0), (res['source_scaling']['0.5'], 0.5), (full, 1.0)):
        # pre-trained - scratch per seed, and the p-value recomputed from the per-user files with scipy
        pre = [per_user_ndcg(out/f'finetune-s{share}-t0.2'/f'seed-{s}') for s in (0, 1)]
        scratch = [per_user_ndcg(out/'scratch-t0.2'/f'seed-{s}') for s in (0, 1)]
        assert row['difference']['mean'] == pytest.approx(
            np.mean([np.mean(list(p.values())) - np.mean(list(b.values())) for p, b in zip(pre, scratch)]))
        diff = [np.mean([pre[s][u] for s in (0, 1)]) - np.mean([scratch[s][u] for s in (0, 1)])
                for u in sorted(pre[0])]
        assert row['paired']['n_users'] == 40 and row['paired']['p_value'] == pytest.approx(
            stats.wilcoxon(diff).pvalue)
    assert res['source_scaling']['0.5']['scratch'] == target['scratch']     # one scratch reference
    table = (out/'scaling.md').read_text()
    assert '| 50 (0.5) |' in table and '| 20 (0.2) | 40 |' in table and 'held-out users' in table
    assert f"{full['paired']['p_value']:.3g}" in table
    assert all((out/f'{name}.html').exists() for name in ('source_scaling', 'convergence', 'target_scaling'))


def add_selection(run_dir, regret):
    "What a run that tracked its held-out users records: `metrics['selection']` with its regret."
    metrics = json.loads((Path(run_dir)/'metrics.json').read_text())
    metrics['selection'] = dict(chosen_epoch=2, best_epoch=5, chosen=0.1, best=0.1 + regret, regret=regret)
    ex.write_metrics(run_dir, metrics)


def test_studies_summarise_the_selection_regret_per_method(tmp_path, no_training):
    "Mean, median and worst regret per method and target (transfer), per cell (scaling), in the tables too."
    out = tmp_path/'transfer'
    build_transfer_study(out, targets=('qb_text',))
    regrets = {'transrec': (0.01, 0.03), 'transrec-pretrained': (0.0, 0.02)}
    for method, per_seed in regrets.items():
        for seed, regret in enumerate(per_seed): add_selection(out/'qb_text'/method/f'seed-{seed}', regret)
    summary = run_transfer(out, targets=['qb_text'])
    cells = summary['selection_regret']['qb_text']
    assert set(cells) == {'transrec', 'transrec-pretrained'}          # popularity runs tracked nothing
    scratch = cells['transrec']
    summary_of_scratch = (scratch['mean'], scratch['median'], scratch['worst'], scratch['n'])
    assert summary_of_scratch == pytest.approx((0.02, 0.02, 0.03, 2))
    half_width = stats.t.ppf(0.975, 1) * np.std([0.01, 0.03], ddof=1) / np.sqrt(2)
    assert scratch['interval']['half_width'] == pytest.approx(half_width)
    table = (out/'table.md').read_text()
    assert 'Selection regret' in table and '| qb_text | TransRec (scratch) | 0.0200 ± ' in table
    scaling = tmp_path/'scaling'
    build_scaling_study(scaling)
    for seed in (0, 1): add_selection(scaling/'scratch-t0.2'/f'seed-{seed}', 0.01 * (seed + 1))
    res = study.scaling_study(scaling, 'qb_mixed', 'tn_mixed', source_fractions=(0.5,), target_fractions=(0.2,),
                           base_target_fraction=0.2, seeds=2, pretrain_params=PRETRAIN,
                           finetune_params=FINETUNE)
    assert res['target_scaling'][0.2]['regret']['scratch']['worst'] == pytest.approx(0.02)
    assert res['target_scaling'][0.2]['regret']['pretrained'] is None
    assert '| tn_mixed | scratch (target share 0.2) | 0.0150 ± ' in (scaling/'scaling.md').read_text()


def test_studies_without_tracked_runs_have_no_regret(tmp_path, no_training):
    out = tmp_path/'transfer'
    build_transfer_study(out, targets=('qb_text',))
    assert run_transfer(out, targets=['qb_text'])['selection_regret'] == {}
    assert 'Selection regret' not in (out/'table.md').read_text()
