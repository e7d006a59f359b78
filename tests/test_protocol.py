"The fine-tune protocol (issue #11): parameters honoured or refused with init, presets, warm/cold users, epoch 0."
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from transrec.core import ModelConfig, TrainConfig
from transrec.data import load_dataset, tiny_mom, write_dataset
from transrec.params import EXPERIMENT_PARAMS, experiment_params, experiment_configs, preset_configs
from transrec.experiment import run_experiment, split_users
from transrec.metrics import metrics_from_ranks

ID_MODEL = ModelConfig(kind='id_sasrec', dim=16, n_layers=1, n_heads=1, max_len=6)
TRAIN = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=0, device='cpu', amp='none', log_every=1)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('proto')
    tiny_mom(d/'data', n_text=12, n_image=8, n_users=40, seq_len=(4, 10))
    return d


@pytest.fixture(scope='module')
def pretrained(tiny):
    m = run_experiment(str(tiny/'data'), tiny/'pre', ID_MODEL, TRAIN, experiment='pretrain', progress=False)
    return Path(m['best_dir'])


def finetune(data, out, init, model_cfg=None, train_cfg=TRAIN, fraction=0.5, **kw):
    return run_experiment(str(data), out, model_cfg or ID_MODEL, train_cfg, init=init, fraction=fraction,
                          experiment='finetune', progress=False, **kw)


def test_init_refuses_a_differing_architecture_parameter_before_any_work(tiny, pretrained):
    with pytest.raises(ValueError, match=r"architecture parameter\(s\) differ from the checkpoint: dim=32 \(checkpoint: 16\)"):
        experiment_configs('finetune', dict(dim=32, n_layers=None, dropout=0.3), pretrained)
    out = tiny/'refused'
    with pytest.raises(ValueError, match=r"n_layers=2 \(checkpoint: 1\)"):
        finetune(tiny/'no-such-data', out, pretrained, model_cfg=ID_MODEL.replace(n_layers=2))
    assert not out.exists()                                          # refused before the run folder or the data


def test_init_applies_training_time_parameters(tiny, pretrained):
    model_cfg, train_cfg = experiment_configs('finetune', dict(dropout=0.3, loss='bce', n_neg=3, readout='last',
                                                               lr=5e-3, epochs=1, device='cpu'), pretrained)
    assert (model_cfg.dim, model_cfg.dropout, model_cfg.loss, model_cfg.readout) == (16, 0.3, 'bce', 'last')
    m = finetune(tiny/'data', tiny/'applied', pretrained, model_cfg, train_cfg,
                 params=dict(dropout=0.3, loss='bce', n_neg=3, readout='last', lr=5e-3, dim=None))
    used = m['model_config']
    assert (used['dropout'], used['loss'], used['n_neg'], used['readout']) == (0.3, 'bce', 3, 'last')
    assert m['params']['dim'] == 16 and m['params']['loss'] == 'bce' and m['params_given']['dim'] is None
    assert m['train_config']['lr'] == 5e-3
    from transrec.model import load_model
    from transrec.train import read_metrics
    model = load_model(m['best_dir'])
    assert {mod.p for mod in model.modules() if isinstance(mod, torch.nn.Dropout)} == {0.3}
    start = read_metrics(tiny/'applied')[0]
    assert start['event'] == 'start' and start['model_config']['loss'] == 'bce'   # the loop trained with BCE
    assert not model.user_tower.causal                                             # readout 'last' in the tower


def test_presets_and_overrides():
    ns = {k: d for k, (d, _) in EXPERIMENT_PARAMS['pretrain'].items()}
    params = experiment_params('pretrain', {**ns, 'preset': 'reference'})
    model_cfg, train_cfg = experiment_configs('pretrain', params)
    assert model_cfg == ModelConfig.reference() and train_cfg == TrainConfig.reference()
    model_cfg, train_cfg = experiment_configs('pretrain', experiment_params('pretrain', {**ns, 'preset': 'reference',
                                                                                         'epochs': 2, 'dim': 64}))
    assert (train_cfg.epochs, train_cfg.lr, model_cfg.dim, model_cfg.loss) == (2, 1e-4, 64, 'bce')
    model_cfg, train_cfg = experiment_configs('finetune', experiment_params('finetune', {
        **{k: d for k, (d, _) in EXPERIMENT_PARAMS['finetune'].items()}, 'init': 'scratch'}))
    assert model_cfg == ModelConfig() and (train_cfg.epochs, train_cfg.select_on, train_cfg.patience) == (30, 'last', 0)
    assert preset_configs('workbench', 'pretrain')[1].epochs == 20


def test_split_is_disjoint_seeded_and_trains_on_fine_tune_users_only(tiny, pretrained):
    a, b = split_users(40, 0.25, seed=3), split_users(40, 0.25, seed=3)
    assert np.array_equal(a[0], b[0]) and not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 40
    assert not np.array_equal(split_users(40, 0.25, seed=4)[0], a[0])
    m = finetune(tiny/'data', tiny/'split', pretrained, fraction=0.25)
    with np.load(tiny/'split'/'per_user.npz', allow_pickle=False) as z:
        users, group = z['user'], z['group']
    warm, cold = set(users[group == 'warm']), set(users[group == 'cold'])
    assert not warm & cold and len(warm) == m['users']['fine_tune'] == m['train_data']['users'] == 10
    assert len(cold) == m['users']['held_out'] == 30
    ds = load_dataset(tiny/'data')
    assert warm == set(ds.user_ids[split_users(40, 0.25, TRAIN.seed)[0]])


def _with_changed_user(src: Path, dst: Path, user: str):
    "A copy of the data set in `src` where `user` clicked other items (the same number)."
    items = pd.read_csv(src/'items.tsv', sep='\t', keep_default_na=False)
    inter = pd.read_csv(src/'interactions.tsv', sep='\t', keep_default_na=False)
    rows = inter['user_id'] == user
    inter.loc[rows, 'item_id'] = list(items['item_id'][-int(rows.sum()):])
    from PIL import Image
    images = {r: Image.open(src/r).copy() for r in items['image'] if r}
    write_dataset(dst, items, inter, {'synthetic': True}, images=images)


def test_logq_and_popularity_come_from_fine_tune_users_only(tiny, pretrained):
    ds = load_dataset(tiny/'data')
    held = split_users(ds.n_users, 0.5, TRAIN.seed)[1]
    _with_changed_user(tiny/'data', tiny/'data2', str(ds.user_ids[held[0]]))
    assert load_dataset(tiny/'data2').popularity().tolist() != ds.popularity().tolist()
    soft = ID_MODEL.replace(loss='softmax')                            # the softmax loss uses the logQ correction
    for name, init, cfg in (('soft', pretrained, soft), ('pop', None, ModelConfig(kind='popularity'))):
        runs = [finetune(tiny/data, tiny/f'{name}-{data}', init, model_cfg=cfg, train_cfg=TRAIN.replace(epochs=1))
                for data in ('data', 'data2')]
        from safetensors.torch import load_file
        w1, w2 = (load_file(str(Path(r['best_dir'])/'model.safetensors')) for r in runs)
        assert all(torch.equal(w1[k], w2[k]) for k in w1), name     # the held-out user changed nothing learned
        assert runs[0]['test_warm'] == runs[1]['test_warm']


def test_epoch_0_is_kept_when_training_only_hurts(tiny, pretrained, monkeypatch):
    "A corrupted objective whose every step wipes the item table: every epoch ranks worse than the pre-trained start."
    from transrec.model import IDSASRec
    def wiping(self, batch, content, group=None):
        with torch.no_grad(): self.item_embedding.weight.zero_()            # all scores tie: ranked last
        return sum(p.sum() for p in self.parameters()) * 0.0, {}
    monkeypatch.setattr(IDSASRec, 'loss', wiping)
    m = finetune(tiny/'data', tiny/'wreck', pretrained, train_cfg=TRAIN.replace(epochs=2, patience=0))
    h = m['history']
    assert [r['epoch'] for r in h] == [0, 1, 2]
    assert all(r["valid_NDCG@10"] < h[0]["valid_NDCG@10"] for r in h[1:]), [r["valid_NDCG@10"] for r in h]
    assert m['best_epoch'] == 0
    assert m['test_all'] == m['zero_shot_all'] and m['test'] == m['zero_shot']   # the pre-trained weights were kept


def test_metrics_report_cold_warm_all_and_per_user_ranks_reproduce_them(tiny, pretrained):
    m = finetune(tiny/'data', tiny/'layout', pretrained, fraction=0.5)
    assert m['test_users'] == 'cold' and m['test'] == m['test_cold']
    for key in ('test_cold', 'test_warm', 'test_all', 'zero_shot_cold', 'zero_shot_warm', 'zero_shot_all'):
        assert set(m[key]['by_modality']) == {'text', 'image'}, key
    assert m['test_cold']['n_users'] + m['test_warm']['n_users'] == m['test_all']['n_users'] == 40
    on_disk = json.loads((tiny/'layout'/'metrics.json').read_text())
    with np.load(tiny/'layout'/'per_user.npz', allow_pickle=False) as z:
        rank, group = z['rank'], z['group']
    for g, key in (('cold', 'test_cold'), ('warm', 'test_warm')):
        assert abs(metrics_from_ranks(rank[group == g])['NDCG@10'] - on_disk[key]['NDCG@10']) < 1e-9
    assert abs(metrics_from_ranks(rank)['NDCG@10'] - on_disk['test_all']['NDCG@10']) < 1e-9
    full = finetune(tiny/'data', tiny/'layout-all', pretrained, fraction=1.0)
    assert full['test_users'] == 'all' and full['test_cold'] is None and full['test'] == full['test_all']


def test_tracked_held_out_users_start_at_the_zero_shot_score_and_change_nothing(tiny, pretrained):
    "Issue #26: epoch 0's held-out score is the zero-shot one, the kept epoch's the reported one; same run."
    cfg = TRAIN.replace(epochs=3, patience=0, ema_decay=0.5)
    tracked = finetune(tiny/'data', tiny/'tracked', pretrained, train_cfg=cfg.replace(track_heldout=True))
    plain = finetune(tiny/'data', tiny/'untracked', pretrained, train_cfg=cfg)
    history = tracked['history']
    assert history[0]['epoch'] == 0
    assert history[0]['heldout_NDCG@10'] == pytest.approx(tracked['zero_shot']['NDCG@10'])
    assert history[0]['heldout_n_users'] == tracked['users']['held_out']
    kept = next(row for row in history if row['epoch'] == tracked['best_epoch'])
    assert kept['heldout_NDCG@10'] == pytest.approx(tracked['test']['NDCG@10'])
    selection = tracked['selection']
    assert selection['chosen_epoch'] == tracked['best_epoch'] and selection['regret'] == pytest.approx(
        max(row['heldout_NDCG@10'] for row in history) - kept['heldout_NDCG@10'])
    assert (plain['best_epoch'], plain['test']) == (tracked['best_epoch'], tracked['test'])
    assert plain['selection'] is None
    assert all('heldout_NDCG@10' not in row for row in plain['history'])
