"End to end: the experiment notebooks run through papermill with tiny parameters (CPU, offline)."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
TINY_MODEL = dict(dim=16, n_layers=1, n_heads=1, max_len=8, text_trainable_blocks=1, image_trainable_blocks=1,
                  image_size=32, text_max_tokens=16)
TINY = dict(scale=0.1, device='cpu', progress=False, model=TINY_MODEL, train=dict(epochs=1, batch_size=64))
# the spelling before the `model` / `train` dicts: every setting a parameter of its own (`-p dim 16`); still works
OLD_TINY = dict(scale=0.1, epochs=1, max_steps=None, **TINY_MODEL, batch_size=64, device='cpu', progress=False)
STUDY = dict(scale=0.1, device='cpu', model=TINY_MODEL, train=dict(batch_size=64))
OLD_STUDY = {k: v for k, v in OLD_TINY.items() if k not in ('epochs', 'progress')}


def cell_output(nb_path) -> str:
    "Everything the cells of an executed notebook printed or logged."
    cells = json.loads(Path(nb_path).read_text())['cells']
    return ''.join(''.join(o.get('text', '')) for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', []))


def run(nb, out_nb, **params):
    "Like the papermill CLI with --inject-paths, which adds both PAPERMILL_INPUT_PATH and PAPERMILL_OUTPUT_PATH."
    injected = dict(PAPERMILL_INPUT_PATH=str(NBS/f'{nb}.ipynb'), PAPERMILL_OUTPUT_PATH=str(out_nb))
    return pm.execute_notebook(str(NBS/f'{nb}.ipynb'), str(out_nb), parameters={**params, **injected},
                               kernel_name='python3', progress_bar=False, cwd=str(NBS))


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp('exp')
    old = {k: os.environ.get(k) for k in ('TRANSREC_DATA', 'TRANSREC_REPORTS')}
    os.environ['TRANSREC_DATA'] = str(d/'data'); os.environ['TRANSREC_REPORTS'] = str(d)
    yield d
    for k, v in old.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


@pytest.fixture(scope='module')
def pretrained(env):
    out = env/'pre'
    run('pretrain', env/'pretrain.ipynb', source='qb_mixed', out_dir=str(out), **OLD_TINY)    # the old spelling
    return out


def test_pretrain_outputs(pretrained):
    m = json.loads((pretrained/'metrics.json').read_text())
    assert m['synthetic'] is True and m['data']['name'].startswith('qb_mixed')
    for split in ('test', 'valid'):
        assert 0 <= m[split]['NDCG@10'] <= 1 and set(m[split]['by_modality']) == {'text', 'image'}
    assert m['image_weights'].startswith('random-init')
    assert m['environment']['torch'] and m['wall_time_s'] > 0 and m['params']['source'] == 'qb_mixed'
    assert (pretrained/'best'/'model.safetensors').exists() and (pretrained/'curves.html').exists()
    assert m['history'] and all('valid_NDCG@10' in h and 'train_loss' in h for h in m['history'])
    assert 'valid NDCG@10' in (pretrained/'curves.html').read_text()       # the curve is drawn, not an empty figure
    assert (pretrained/'notebook.html').exists() and 'Pre-train' in (pretrained/'notebook.html').read_text()
    record = json.loads((pretrained/'best'/'data.json').read_text())     # the model says what data it saw
    assert record['name'] == 'qb_mixed' and record['fingerprint']['generator'] == dict(scale=0.1, seed=0)


def test_old_spelling_still_works_and_says_the_new_one(env, pretrained):
    "The fixture ran `-p dim 16 -p epochs 1 ...`: folded into the model / train dicts, each with the new spelling."
    m = json.loads((pretrained/'metrics.json').read_text())
    assert m['params_given']['model'] == TINY_MODEL and m['params_given']['train'] == dict(epochs=1, batch_size=64)
    assert (m['model_config']['dim'], m['train_config']['epochs'], m['params']['n_layers']) == (16, 1, 1)
    said = cell_output(env/'pretrain.ipynb')
    assert "-p dim 16 is the old spelling of -y 'model: {dim: 16}'; it still works" in said
    assert "-p epochs 1 is the old spelling of -y 'train: {epochs: 1}'; it still works" in said


def test_yaml_spelling_on_the_command_line(env):
    "`papermill -y 'model: {...}'` fills the model dict (here an invalid pair, so it stops before any work)."
    out = env/'yaml-bad'
    done = subprocess.run([sys.executable, '-m', 'papermill', str(NBS/'pretrain.ipynb'), str(env/'yaml.ipynb'),
                           '--cwd', str(NBS), '--inject-paths', '-p', 'out_dir', str(out), '-p', 'device', 'cpu',
                           '-y', 'model: {dim: 30, n_heads: 4}', '-y', 'train: {lr: 1e-4}'],
                          capture_output=True, text=True)
    assert done.returncode != 0 and 'divisible by n_heads' in done.stdout + done.stderr
    assert not out.exists()


def test_finetune_pretrained_and_scratch(env, pretrained):
    out = env/'ft'
    run('finetune', env/'ft.ipynb', target='qb_text', init=str(pretrained/'best'), target_fraction=0.5, out_dir=str(out), **TINY)
    m = json.loads((out/'metrics.json').read_text())
    assert m['zero_shot'] is not None and 'NDCG@10' in m['zero_shot'] and m['method'] == 'transrec-pretrained'
    assert m['train_data']['users'] < m['data']['users']      # trained on a share (warm), the rest held out (cold)
    assert m['test'] == m['test_cold'] and m['test']['n_users'] == m['users']['held_out']   # headline: held-out users
    assert m['test_warm']['n_users'] == m['users']['fine_tune'] == m['train_data']['users']
    assert m['test_all']['n_users'] == m['data']['users'] and m['zero_shot'] == m['zero_shot_cold']
    assert m['history'][0]['epoch'] == 0 and m['best_epoch'] in (0, 1)      # the pre-trained model competed
    assert m['params']['dim'] == TINY_MODEL['dim'] and 'kind' not in m['params_given']['model']   # used / given
    assert m['params']['kind'] == 'transrec' and m['params']['epochs'] == 1       # the full configuration
    from transrec.experiment import per_user_frame
    table = per_user_frame(out, ks=(10,))                                 # item 7: per-user metrics in one call
    assert len(table) == m['data']['users'] and set(table['group']) == {'cold', 'warm'}
    assert abs(table[table['group'] == 'cold']['NDCG@10'].mean() - m['test']['NDCG@10']) < 1e-6
    out2 = env/'ft-scratch'
    run('finetune', env/'ft2.ipynb', target='qb_text', init='scratch', target_fraction=0.5, out_dir=str(out2),
        **{**TINY, 'model': {**TINY_MODEL, 'kind': 'id_sasrec'}})
    m2 = json.loads((out2/'metrics.json').read_text())
    assert m2['zero_shot'] is None and m2['method'] == 'id_sasrec'


def test_finetune_on_another_build_of_the_training_data_set_warns(env, pretrained):
    "Pre-trained on qb_mixed at scale 0.1, fine-tuned on qb_mixed at scale 0.05: said, naming both builds."
    out = env/'ft-other-build'
    run('finetune', env/'ft-other.ipynb', target='qb_mixed', init=str(pretrained/'best'), target_fraction=0.5,
        out_dir=str(out), **{**TINY, 'scale': 0.05})
    said = cell_output(env/'ft-other.ipynb')
    assert 'WARNING: the model in' in said and 'synthetic scale 0.1 -> 0.05' in said, said[-3000:]
    assert 'qb_mixed-scale0.1-seed0' in said and 'qb_mixed-scale0.05-seed0' in said


def link_weights_copy_rest(source, dest):
    "Weights files are replaced by a rename, never edited, so a link is a copy (metrics.jsonl is appended to)."
    return os.link(source, dest) if str(source).endswith('.safetensors') else shutil.copy2(source, dest)


def test_rerun_with_other_parameters_never_continues_the_old_run(env, pretrained):
    "Same out_dir, other settings: refused before any work; `resume fresh` replaces the run; the same settings continue it."
    shutil.copytree(pretrained, env/'pre-copy', copy_function=link_weights_copy_rest)
    pretrained = env/'pre-copy'
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('pretrain', env/'again.ipynb', source='qb_mixed', out_dir=str(pretrained),
            **{**TINY, 'train': dict(epochs=2, batch_size=64)})
    assert 'epochs: 1 -> 2' in str(e.value) and "resume='fresh'" in str(e.value)
    before = json.loads((pretrained/'metrics.json').read_text())
    assert len(before['history']) == 1                                     # the old run is untouched
    run('pretrain', env/'again.ipynb', source='qb_mixed', out_dir=str(pretrained), resume='fresh',
        **{**OLD_TINY, 'epochs': 2})                                       # old spelling ...
    m = json.loads((pretrained/'metrics.json').read_text())
    assert [h['epoch'] for h in m['history']] == [1, 2] and m['params']['epochs'] == 2
    run('pretrain', env/'again.ipynb', source='qb_mixed', out_dir=str(pretrained),     # ... and new: the same run
        **{**TINY, 'train': dict(epochs=2, batch_size=64), 'device': 'auto'})
    assert [h['epoch'] for h in json.loads((pretrained/'metrics.json').read_text())['history']] == [1, 2]   # resumed: done


def test_finetune_rejects_missing_checkpoint(env):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('finetune', env/'bad2.ipynb', **{**TINY, 'init': str(env/'nowhere'), 'out_dir': str(env/'bad2')})
    assert 'no saved model there' in str(e.value)


def test_transfer_grid(env, pretrained):
    "Two seeds of every method on one target: intervals over seeds, the paired test, its note, gain vs shift."
    out = env/'transfer'
    run('transfer', env/'transfer.ipynb', targets=['qb_text'], pretrained=str(pretrained/'best'), seeds=2,
        target_fraction=0.5, out_dir=str(out), finetune_epochs=1, **STUDY)
    s = json.loads((out/'summary.json').read_text())
    assert set(s['results']) == {'qb_text'} and s['seeds'] == [0, 1]
    row, runs = s['table']['qb_text'], s['results']['qb_text']
    assert set(runs) == {'transrec', 'transrec-pretrained', 'zero-shot', 'id_sasrec', 'frozen', 'popularity'}
    assert all(len(seeds) == 2 and all(0 <= r['NDCG@10'] <= 1 for r in seeds) for seeds in runs.values())
    assert all(row[m]['NDCG@10']['n'] == 2 and row[m]['NDCG@10']['half_width'] >= 0 for m in runs)
    paired = row['paired_NDCG@10']
    if (out/'qb_text'/'transrec'/'seed-0'/'per_user.npz').exists(): assert 0 <= paired['p_value'] <= 1
    else: assert 'no per-user file' in paired['note']
    assert [(p['target'], p['domain_shift']) for p in s['gain_vs_shift']] == [('qb_text', 0.0)]
    assert 'gain NDCG@10' in (out/'table.md').read_text() and (out/'chart.html').exists()
    assert (out/'gain_vs_shift.html').exists() and (out/'notebook.html').exists()
    assert (out/'qb_text'/'frozen'/'seed-1'/'finetune.ipynb').exists()  # every run leaves its notebook
    index = (env/'index.md').read_text()    # TRANSREC_REPORTS points the index here
    assert 'transfer/qb_text/transrec-pretrained/seed-0' in index


def test_scaling(env, pretrained):
    out = env/'scaling'
    run('scaling', env/'scaling.ipynb', target='qb_text', source_fractions=[0.5], target_fractions=[0.5],
        base_target_fraction=0.5, seeds=1, out_dir=str(out), pretrain_epochs=1, finetune_epochs=1,
        pretrained=str(pretrained/'best'), **OLD_STUDY)           # `-p dim 16 ...` in a study: the old spelling
    r = json.loads((out/'scaling.json').read_text())
    assert len(r['source_scaling']) == 2 and len(r['target_scaling']) == 1     # 0.5 and the full source
    assert not (out/'pretrain-s1.0').exists()                          # the full-source model was reused
    assert (out/'pretrain-s0.5'/'seed-0'/'metrics.json').exists()
    assert r['source_scaling']['1.0']['source_users'] > r['source_scaling']['0.5']['source_users']
    assert r['source_scaling']['1.0']['finetuned']['n'] == 1
    assert all((out/f'{n}.html').exists() for n in ('source_scaling', 'target_scaling', 'convergence'))
    assert '| difference (pre-trained − scratch) |' in (out/'scaling.md').read_text()
    assert set(r['convergence']) == {'0.5', '1.0', 'scratch'}
    assert all(band['mean'] and None not in band['mean'] for band in r['convergence'].values())


def test_selection_study(env, pretrained):
    "Every rule replayed on every run, per val_items; the baseline is paired with each rule; runs are reused."
    out = env/'selection'
    params = dict(targets=['qb_text'], fractions=[0.5], validation_items=[1, 2], seeds=1,
                  pretrained=str(pretrained/'best'), out_dir=str(out), finetune_epochs=2,
                  finetune_train={'batch_size': 32}, **STUDY)
    run('selection', env/'selection.ipynb', **params)
    s = json.loads((out/'selection.json').read_text())
    assert s['baseline'] == 'ndcg, patience 5 (old default), 1 validation item'
    rules = {o['rule'] for o in s['outcomes']}
    assert 'EMA loss, never stop, 2 validation items' in rules and s['baseline'] in rules
    assert {(o['method'], o['seed']) for o in s['outcomes']} == {('transrec-pretrained', 0), ('transrec', 0)}
    assert all(o['regret'] >= 0 for o in s['outcomes'])
    run_metrics = json.loads((out/'f0.5'/'v2'/'qb_text'/'transrec'/'seed-0'/'metrics.json').read_text())
    assert run_metrics['params']['val_items'] == 2 and run_metrics['params']['batch_size'] == 32
    assert len(run_metrics['history']) == 2                         # every epoch trained (patience 0)
    assert '| kept − old default (paired) |' in (out/'selection.md').read_text()
    stamp = (out/'f0.5'/'v1'/'qb_text'/'transrec'/'seed-0'/'metrics.json').stat().st_mtime
    run('selection', env/'selection2.ipynb', **params)               # started again: every run reused
    assert (out/'f0.5'/'v1'/'qb_text'/'transrec'/'seed-0'/'metrics.json').stat().st_mtime == stamp



@pytest.mark.slow
def test_both_transfer_grid(env):
    "Pre-training on a `both` source, fine-tuning on a `both` target and on its one-part views: the grid, one seed."
    out = env/'both_transfer'
    run('both_transfer', env/'both_transfer.ipynb', seeds=1, target_fraction=0.5, out_dir=str(out),
        pretrain_epochs=1, finetune_epochs=1, **STUDY)
    s = json.loads((out/'summary.json').read_text())
    assert s['failed'] == {} and len(s['table']) == 10 and s['seeds'] == [0]
    assert all(0 <= row['NDCG@10']['mean'] <= 1 for row in s['table'].values())
    assert all('p_value' in c['paired'] for c in s['comparisons'])          # every run wrote per_user.npz
    pre = json.loads((out/'pretrain-qb_both'/'seed-0'/'metrics.json').read_text())
    assert pre['parts'] == 'both' and pre['data']['both_items'] == pre['data']['items'] > 0
    view = json.loads((out/'tn_both'/'text'/'from-qb_both'/'seed-0'/'metrics.json').read_text())
    assert view['parts'] == view['params']['parts'] == 'text' and view['data']['both_items'] == 0
    assert view['data']['name'].endswith('-text-only') and view['init'].endswith('best')
    fused = json.loads((out/'tn_both'/'both'/'from-qb_mixed'/'seed-0'/'metrics.json').read_text())
    assert fused['data']['both_items'] == fused['data']['items'] and 'both' in fused['test_all']['by_modality']
    assert 'tn_both, from qb_both: both parts − image only' in (out/'table.md').read_text()

EXPERIMENT_NOTEBOOKS = ('pretrain', 'finetune', 'transfer', 'scaling', 'explore', 'selection', 'ablation',
                        'both_transfer')
ANNOTATIONS = {str: 'str', int: 'int', float: 'float', bool: 'bool', list: 'list', dict: 'dict'}


@pytest.mark.parametrize('nb', EXPERIMENT_NOTEBOOKS)
def test_help_notebook_shows_type_and_help(nb):
    "`papermill --help-notebook`: every parameter has its Spec's type (no 'Unknown type') and a help text."
    from transrec.params import EXPERIMENT_PARAMS, Spec
    shown = pm.inspect_notebook(str(NBS/f'{nb}.ipynb'))
    for name, p in shown.items():
        assert p['inferred_type_name'] not in ('None', None) and p['help'].strip(), (nb, p)
    if nb in EXPERIMENT_PARAMS:
        specs = EXPERIMENT_PARAMS[nb]
        for name, (_, spec) in specs.items():
            declared = ANNOTATIONS[spec.type if isinstance(spec, Spec) else dict]
            assert shown[name]['inferred_type_name'].startswith(declared), (name, shown[name], declared)
    done = subprocess.run([sys.executable, '-m', 'papermill', '--help-notebook', str(NBS/f'{nb}.ipynb')],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'Unknown type' not in done.stdout, done.stdout + done.stderr


def test_bad_setting_ends_the_run_with_one_line(env):
    "A bad value stops the papermill run; the notebook's error and the run's last line are the one-line explanation."
    out, out_nb = env/'bad-setting', env/'bad-setting.ipynb'
    done = subprocess.run([sys.executable, '-m', 'papermill', str(NBS/'pretrain.ipynb'), str(out_nb), '--cwd', str(NBS),
                           '-p', 'out_dir', str(out), '-p', 'device', 'cpu', '-y', 'train: {weight_decay: -1}'],
                          capture_output=True, text=True, timeout=300)
    said = 'ParameterError: parameter train.weight_decay=-1: expected a number in [0, 10]'
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == said, done.stderr[-2000:]
    errors = [o for c in json.loads(out_nb.read_text())['cells'] for o in c.get('outputs', []) if o['output_type'] == 'error']
    assert [e['traceback'] for e in errors] == [[said]], errors
    assert not out.exists()
