"Fine-tuning strategies end to end (issue #23): runs with each strategy, costs, small checkpoints, refusals."
import json
from pathlib import Path
import pytest

from transrec.core import ModelConfig, TrainConfig
from transrec.data import tiny_mom
from transrec.experiment import run_experiment
from transrec.params import experiment_params, EXPERIMENT_PARAMS
from transrec.model import load_model
from transrec.strategies import STRATEGY_FILE

MODEL = ModelConfig(dim=16, n_layers=1, n_heads=2, max_len=6, text_trainable_blocks=1, image_size=32)
TRAIN = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=0, device='cpu', amp='none', log_every=1,
                    threads=1)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('strategies')
    tiny_mom(folder/'data', n_text=12, n_image=8, n_users=30, seq_len=(4, 8))
    return folder


@pytest.fixture(scope='module')
def pretrained(tiny):
    metrics = run_experiment(str(tiny/'data'), tiny/'pre', MODEL, TRAIN, experiment='pretrain', progress=False)
    return Path(metrics['best_dir'])


def finetune(tiny, out, init, strategy, **kw):
    from transrec.strategies import StrategyConfig
    return run_experiment(str(tiny/'data'), tiny/out, MODEL, TRAIN, init=init, fraction=0.5,
                          experiment='finetune', progress=False, strategy=StrategyConfig(strategy, **kw))


@pytest.mark.parametrize('strategy', ['user_tower', 'adapters', 'lora', 'none'])
def test_a_strategy_run_records_its_costs_and_its_model_reloads(tiny, pretrained, strategy):
    metrics = finetune(tiny, f'ft-{strategy}', pretrained, strategy)
    cost = metrics['cost']
    assert metrics['strategy']['strategy'] == strategy
    assert 0 <= cost['trainable_parameters'] < cost['total_parameters']
    assert cost['peak_memory_bytes'] > 0
    assert (cost['step_time_s'] is None) == (strategy == 'none')
    events = [json.loads(line) for line in (tiny/f'ft-{strategy}'/'metrics.jsonl').read_text().splitlines()]
    logged = [event for event in events if event['event'] == 'cost'][0]
    assert logged['trainable_parameters'] == cost['trainable_parameters']
    best = Path(metrics['best_dir'])
    small = strategy in ('adapters', 'lora', 'none')
    assert (best/STRATEGY_FILE).is_file() == small
    base_bytes = (pretrained/'model.safetensors').stat().st_size
    if small: assert cost['checkpoint_bytes'] < base_bytes / 5
    if strategy == 'none': assert metrics['test'] == metrics['zero_shot']      # nothing trained
    model = load_model(best)                         # a small checkpoint comes back with its strategy's parts
    trained = sum(param.numel() for param in model.parameters() if param.requires_grad)
    if small: assert trained == cost['trainable_parameters']


def test_strategy_refusals_come_before_any_work(tiny, pretrained):
    with pytest.raises(ValueError, match="init='scratch'"):
        finetune(tiny, 'refused', None, 'adapters')
    assert not (tiny/'refused').exists()
    ns = {**{k: d for k, (d, _) in EXPERIMENT_PARAMS['finetune'].items()}, 'strategy': 'adaptors',
          'init': str(pretrained)}
    with pytest.raises(ValueError, match="did you mean 'adapters'"):
        experiment_params('finetune', ns)


def test_a_changed_base_is_refused_naming_both_hashes(tiny, pretrained):
    import shutil
    finetune(tiny, 'ft-base', pretrained, 'adapters')
    base_copy = tiny/'base-copy'
    shutil.copytree(pretrained, base_copy)
    run = tiny/'ft-base'/'best'
    record = json.loads((run/STRATEGY_FILE).read_text())
    record['base']['path'] = str(base_copy)
    (run/STRATEGY_FILE).write_text(json.dumps(record))
    assert load_model(run) is not None                                   # same bytes elsewhere: accepted
    from safetensors.torch import load_file, save_file
    weights = load_file(str(base_copy/'model.safetensors'))
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_file(weights, str(base_copy/'model.safetensors'))
    with pytest.raises(ValueError, match=record['base']['sha256'][:16]):
        load_model(run)


@pytest.mark.slow
def test_ablation_notebook_runs_the_grid_and_reuses_finished_runs(tiny, pretrained):
    "nbs/ablation.ipynb through papermill: table, chart and summary; a second run reuses every finished run."
    from test_experiments import run
    out = tiny/'ablation'
    params = dict(targets=[str(tiny/'data')], strategies=['full', 'adapters', 'none'],
                  pretrained=[str(pretrained)],
                  seeds=1, finetune_epochs=1, device='cpu', out_dir=str(out), target_fraction=0.5,
                  train=dict(batch_size=8, amp='none', threads=1))
    run('ablation', tiny/'ablation.ipynb', **params)
    summary = json.loads((out/'summary.json').read_text())
    row = summary['table']['data']
    assert set(row) == {'full', 'adapters', 'none'} and 'paired_vs_full' in row['adapters']
    assert row['adapters']['trainable_parameters']['mean'] < row['full']['trainable_parameters']['mean']
    assert '| data | adapters | 1 |' in (out/'table.md').read_text() and (out/'chart.html').is_file()
    stamp = (out/'data'/'full'/'seed-0'/'metrics.json').stat().st_mtime
    run('ablation', tiny/'ablation-again.ipynb', **params)
    assert (out/'data'/'full'/'seed-0'/'metrics.json').stat().st_mtime == stamp
