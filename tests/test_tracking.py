"TensorBoard tracking (issue #22 item 5): every training run writes event files that TensorBoard reads back."
import logging, sys

import pytest

from transrec import tracking
from transrec.core import ModelConfig, TrainConfig
from transrec.data import tiny_mom
from transrec.experiment import run_experiment
from transrec.train import read_metrics

ID_MODEL = ModelConfig(kind='id_sasrec', dim=16, n_layers=1, n_heads=1, max_len=6)
TRAIN = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=0, device='cpu', amp='none', log_every=1,
                    threads=1, num_workers=0)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_mom(tmp_path_factory.mktemp('track')/'data', n_text=12, n_image=8, n_users=40, seq_len=(4, 10))


def run(data, out, **params):
    return run_experiment(str(data), out, ID_MODEL, TRAIN, fraction=0.5, experiment='finetune', progress=False,
                          params=params)


def test_a_run_writes_curves_and_an_hparams_session(data, tmp_path):
    metrics = run(data, tmp_path/'run', seed=0)
    read = tracking.read_tensorboard(tmp_path/'run')
    events = read_metrics(tmp_path/'run')
    train_steps = [event['step'] for event in events if event['event'] == 'train']
    epochs = [event for event in events if event['event'] == 'epoch']
    # the training loss at every logged step, the validation metrics at every validated epoch
    assert [step for step, _ in read['scalars']['train/loss']] == train_steps and len(train_steps) > 2
    assert [step for step, _ in read['scalars']['valid/NDCG@10']] == [event['step'] for event in epochs]
    assert read['scalars']['valid/NDCG@10'][-1][1] == pytest.approx(epochs[-1]['valid_NDCG@10'], abs=1e-6)
    assert {'train/lr/head', 'valid/HR@10', 'epoch/train_loss', 'final_test/NDCG@10'} <= set(read['scalars'])
    # the HParams session: the run's settings and its final (held-out users') test metrics
    assert read['hparams']['method'] == 'id_sasrec' and read['hparams']['lr'] == pytest.approx(1e-2)
    assert read['hparams']['seed'] == 0 and read['hparams']['test_users'] == 'cold'
    final = {'hparam/test_NDCG@10', 'hparam/test_HR@10', 'hparam/test_MRR', 'hparam/best_epoch'}
    assert final <= set(read['metrics'])
    assert read['scalars']['hparam/test_NDCG@10'] == [(0, pytest.approx(metrics['test']['NDCG@10'], abs=1e-6))]
    assert any(tag.startswith('hparam/test_items_') for tag in read['metrics'])    # cold-item columns too


def test_a_fresh_run_replaces_the_event_files_of_the_last_one(data, tmp_path):
    run(data, tmp_path/'run', seed=0)
    run_experiment(str(data), tmp_path/'run', ID_MODEL, TRAIN.replace(epochs=1), fraction=0.5,
                   experiment='finetune', progress=False, params=dict(seed=0), resume='fresh')
    read = tracking.read_tensorboard(tmp_path/'run')
    assert len(read['scalars']['valid/NDCG@10']) == 1                 # one epoch: only the new run's curve
    assert len(read['scalars']['hparam/test_NDCG@10']) == 1           # and one session


def test_training_works_without_tensorboard_and_says_how_to_install_it(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)       # `import` fails as when missing
    monkeypatch.setattr(tracking, '_missing_said', [])
    with caplog.at_level(logging.WARNING, logger='transrec'):
        metrics = run(data, tmp_path/'run', seed=0)
    assert metrics['test']['NDCG@10'] >= 0 and (tmp_path/'run'/'metrics.json').exists()
    assert not list((tmp_path/'run').glob(tracking.EVENT_FILE_GLOB))
    said = [message for message in caplog.messages if 'tensorboard is not installed' in message]
    assert len(said) == 1 and "pip install 'transrec[tracking]'" in said[0]          # once, with the command
    with pytest.raises(FileNotFoundError, match='holds no TensorBoard event files'):
        tracking.read_tensorboard(tmp_path/'run')
