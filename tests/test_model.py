"Tests of transrec.model: user tower, losses, cache on/off equality, baselines, model files, transfer, recommend."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import numpy as np
import pytest
import torch
from transrec.core import ModelConfig, seed_everything
from transrec.data import load_dataset, train_batches, Batch
from transrec.encoders import make_content, count_parameters
from transrec.data import tiny_mom as _tiny_mom
from transrec.model import (UserTower, TransRec, IDSASRec, Popularity, SequenceRecommender, build_model, save_model, load_model,
                            recommend, train_seq_len, param_groups, provenance, last_valid)

torch.set_num_threads(min(2, torch.get_num_threads()))
CFG = ModelConfig(dim=16, n_layers=1, n_heads=2, max_len=6, text_trainable_blocks=1, image_size=32, text_max_tokens=12)


def tiny_mom(path, n_text=16, n_image=8, n_users=16, seed=0, prefix=''):
    "This file's tiny data set: four-word captions, 3-10 clicks per user."
    return _tiny_mom(path, n_text, n_image, n_users, seed, prefix, words=4, seq_len=(3, 11))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('model')
    return load_dataset(tiny_mom(d/'tiny')), load_dataset(tiny_mom(d/'other', n_text=6, n_image=10, n_users=6, seed=1, prefix='o'))

@pytest.fixture(scope='module')
def ds(data): return data[0]

@pytest.fixture(scope='module')
def other(data): return data[1]

def first_batch(ds, cfg, batch_size=8, n_neg=None, epoch=0):
    return next(iter(train_batches(ds, batch_size=batch_size, seq_len=train_seq_len(cfg), n_neg=cfg.n_neg if n_neg is None else n_neg,
                                   seed=0, epoch=epoch)))


# ---------------------------------------------------------------- user tower
@pytest.mark.parametrize('readout', ['causal', 'last'])
def test_user_tower_masks(readout):
    cfg = CFG.replace(readout=readout)
    seed_everything(0); ut = UserTower(cfg).eval()
    x, m = torch.randn(2, 5, 16), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        h = ut(x, m)
        x2 = x.clone(); x2[0, :2] = 100.0                                    # padding never matters
        torch.testing.assert_close(ut(x2, m)[0, 2:], h[0, 2:])
        torch.testing.assert_close(ut(x[:1, 2:], m[:1, 2:])[0], h[0, 2:], atol=1e-5, rtol=1e-4)   # right-aligned positions
        x3 = x.clone(); x3[1, 4] += torch.randn(16)                          # change the last item
        changed = (ut(x3, m)[1] - h[1]).abs().sum(-1) > 1e-6
        assert changed[4] and bool(changed[:4].any()) == (readout == 'last')   # causal: earlier states see no future
        assert torch.isfinite(ut(x, torch.zeros_like(m))).all()
    with pytest.raises(ValueError, match='max_len=6'): ut(torch.randn(1, 7, 16), torch.ones(1, 7).bool())
    assert last_valid(torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0]]).bool()).tolist() == [2, 0, 2]


# ---------------------------------------------------------------- losses
class ConstModel(SequenceRecommender):
    "Fixed item vectors and user states: checks the loss arithmetic."
    def __init__(self, cfg, V, S): super().__init__(); self.cfg, self.V, self.S = cfg, V, S
    def item_vectors(self, items, content): return self.V[items]
    def user_states(self, h, m): return self.S[:, -h.shape[1]:]

class UniformQ:
    def __init__(self, n): self.n = n
    def log_q(self): return torch.full((self.n,), -float(np.log(self.n)))

V = torch.tensor([[1., 0], [0, 1], [1, 1], [-1, .5]])
S = torch.tensor([[[2., 0], [0, 3], [1, -1]]])
B1 = Batch(items=torch.arange(4), seq=torch.tensor([[0, 1, 2]]), mask=torch.ones(1, 3).bool(),
           neg=torch.full((1, 3, 1), 3), users=torch.zeros(1).long())

def test_last_readout_pairs():
    cfg = CFG.replace(max_len=2, readout='last', n_pos=2, loss='bce')
    # windows of length max_len + n_pos = 4: row 0 full (2 history + 2 positives), row 1 only 2 items (1 history + 1 positive)
    b = Batch(items=torch.arange(4), seq=torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]]), mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]).bool(),
              neg=torch.zeros(2, 4, 1).long(), users=torch.arange(2))
    seen = []
    class Spy(ConstModel):
        def user_states(self, h, m): seen.append((h.clone(), m.clone())); return h   # state = the item vector itself
    loss, logs = Spy(cfg, V, None).loss(b, UniformQ(4))
    assert logs['n_pairs'] == 3
    h, m = seen[0]
    assert m.tolist() == [[True, True], [False, True]]
    torch.testing.assert_close(h[0], V[[0, 1]]); torch.testing.assert_close(h[1, 1], V[1])   # row 1's history: item 1, right-aligned
    u = torch.stack([V[1], V[1], V[1]]); pos = V[[2, 3, 2]]                                     # last-history state per pair
    expect = torch.nn.functional.softplus(-(u * pos).sum(1)).mean() + torch.nn.functional.softplus((u * V[0]).sum(1)).mean()
    torch.testing.assert_close(loss, expect)

@pytest.mark.parametrize('readout,loss', [('causal', 'bce'), ('causal', 'softmax'), ('last', 'bce'), ('last', 'softmax')])
def test_transrec_losses_backprop(ds, readout, loss):
    cfg = CFG.replace(readout=readout, loss=loss, n_pos=3, n_neg=2)
    seed_everything(0); m = TransRec(cfg).train()
    l, logs = m.loss(first_batch(ds, cfg), make_content(cfg, ds))
    assert torch.isfinite(l) and l.item() > 0 and logs['n_pairs'] > 0
    l.backward()
    tt = m.item_tower.text.backbone.encoder.layer
    assert tt[-1].output.dense.weight.grad.abs().sum() > 0 and tt[0].output.dense.weight.grad is None
    assert m.user_tower.position.weight.grad.abs().sum() > 0


def test_training_learns_a_batch(ds):
    "A few Adam steps on one batch must reduce its loss a lot (the whole pipeline is differentiable and wired right)."
    cfg = CFG.replace(dropout=0.0)
    seed_everything(0); m = TransRec(cfg).train(); c = make_content(cfg, ds)
    opt = torch.optim.Adam(param_groups(m, 1e-3, 1e-4), lr=1e-3)
    b = first_batch(ds, cfg, batch_size=8)
    losses = []
    for _ in range(12):
        l, _ = m.loss(b, c); opt.zero_grad(); l.backward(); opt.step(); losses.append(l.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_cache_on_off_same_losses(ds):
    "Same seed, cache on vs off: the same losses over several optimisation steps (dropout on, encoders training)."
    def run(prefix_cache):
        seed_everything(0); m = TransRec(CFG).train(); c = make_content(CFG, ds, prefix_cache=prefix_cache)
        opt = torch.optim.Adam(param_groups(m, 1e-3, 1e-3), lr=1e-3)
        out = []
        for b in train_batches(ds, batch_size=6, seq_len=train_seq_len(CFG), n_neg=1, seed=0, epoch=0):
            l, _ = m.loss(b, c); opt.zero_grad(); l.backward(); opt.step(); out.append(l.item())
        return out, m, c
    on, m_on, c_on = run(True)
    off, m_off, _ = run(False)
    assert len(on) >= 3
    np.testing.assert_allclose(on, off, rtol=1e-4, atol=1e-5)
    assert any(c is not None and c.n_filled > 0 for c in c_on.caches.values())
    w = lambda m: m.item_tower.text.backbone.encoder.layer[-1].output.dense.weight
    assert (w(m_on) - w(m_off)).abs().mean() < 1e-6       # (Adam amplifies float noise in near-zero gradients: compare the mean)


def test_frozen_parts_do_not_change(ds):
    seed_everything(0); m = TransRec(CFG).train(); c = make_content(CFG, ds)
    low = m.item_tower.text.backbone.encoder.layer[0].output.dense.weight.clone()
    top = m.item_tower.text.backbone.encoder.layer[-1].output.dense.weight.clone()
    bn = m.item_tower.image.resnet.bn1.running_mean.clone()
    opt = torch.optim.AdamW(param_groups(m, 1e-3, 1e-3, 0.1), lr=1e-3)
    for b in train_batches(ds, batch_size=8, seq_len=train_seq_len(CFG), n_neg=1, seed=0, epoch=0):
        l, _ = m.loss(b, c); opt.zero_grad(); l.backward(); opt.step()
    torch.testing.assert_close(m.item_tower.text.backbone.encoder.layer[0].output.dense.weight, low)
    torch.testing.assert_close(m.item_tower.image.resnet.bn1.running_mean, bn)
    assert not torch.allclose(m.item_tower.text.backbone.encoder.layer[-1].output.dense.weight, top)


# ---------------------------------------------------------------- baselines
def test_frozen_kind(ds):
    fz = build_model(CFG.replace(kind='frozen'), ds)
    assert isinstance(fz, TransRec)
    assert count_parameters(fz.item_tower.text.backbone)['trainable'] == 0 and count_parameters(fz.item_tower.image.resnet)['trainable'] == 0
    c = make_content(fz.cfg, ds)
    l, _ = fz.loss(first_batch(ds, fz.cfg), c); l.backward()
    assert fz.item_tower.text.proj.weight.grad is not None
    caches = [x for x in c.caches.values() if x is not None]
    assert caches and all(x.shape[1:] in ((12, 384), (512,)) for x in caches)   # final hidden states / pooled image features


def test_id_sasrec(ds, other):
    m = build_model(CFG.replace(kind='id_sasrec'), ds)
    assert isinstance(m, IDSASRec) and m.cfg.n_items == ds.n_items
    c = make_content(m.cfg, ds)
    l, _ = m.loss(first_batch(ds, m.cfg), c); l.backward()
    assert m.item_embedding.weight.grad.abs().sum() > 0
    assert m.all_item_vectors(c).shape == (ds.n_items, 16)
    m.fit_data(ds.subset_users([0, 1]))
    with pytest.raises(ValueError, match='cannot transfer: item IDs differ'): m.fit_data(other)
    with pytest.raises(ValueError, match='cannot transfer: item IDs differ'): m.all_item_vectors(make_content(m.cfg, other))
    with pytest.raises(ValueError, match='build_model'): IDSASRec(CFG.replace(kind='id_sasrec'))


def test_popularity(ds, other):
    p = build_model(CFG.replace(kind='popularity'), ds)
    assert not p.trainable and count_parameters(p)['total'] == 0
    c = make_content(p.cfg, ds)
    iv = p.all_item_vectors(c)
    np.testing.assert_array_equal(iv[:, 0].numpy(), ds.popularity())
    uv = p.user_vectors(iv[torch.tensor([[0, 1]])], torch.ones(1, 2).bool())
    np.testing.assert_array_equal((iv @ uv[0]).numpy(), ds.popularity())
    idx, sc = recommend(p, c, [], k=3)                    # no history needed: everyone gets the most popular items
    np.testing.assert_array_equal(sc, np.sort(ds.popularity())[::-1][:3]); np.testing.assert_array_equal(ds.popularity()[idx], sc)
    with pytest.raises(ValueError, match='not fitted'): Popularity(CFG.replace(kind='popularity')).all_item_vectors(c)
    p.fit_data(other)
    assert p.all_item_vectors(make_content(p.cfg, other)).shape == (other.n_items, 1)


def test_param_groups(ds):
    m = build_model(CFG)
    gs = {g['name']: g for g in param_groups(m, 1e-3, 1e-4, 0.05)}
    assert set(gs) == {'encoder', 'encoder_no_decay', 'head', 'head_no_decay'}
    assert gs['encoder']['lr'] == 1e-4 and gs['head']['lr'] == 1e-3 and gs['head_no_decay']['weight_decay'] == 0.0
    ids = {id(p) for g in gs.values() for p in g['params']}
    assert ids == {id(p) for p in m.parameters() if p.requires_grad}
    assert {g['name'] for g in param_groups(build_model(CFG.replace(kind='id_sasrec'), ds), 1e-3, 1e-4)} == {'head', 'head_no_decay'}


# ---------------------------------------------------------------- files, transfer, recommend
def test_save_load_transfer_recommend(ds, other, tmp_path, monkeypatch):
    seed_everything(0); m = TransRec(CFG).train(); c = make_content(CFG, ds)
    opt = torch.optim.Adam(param_groups(m, 1e-3, 1e-3), lr=1e-3)
    l, _ = m.loss(first_batch(ds, CFG), c); opt.zero_grad(); l.backward(); opt.step()   # weights differ from the pretrained ones
    d = save_model(m, tmp_path/'m')
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.safetensors']
    assert ModelConfig.load(d/'config.json') == CFG
    import transformers
    def no_pretrained(*a, **k): raise AssertionError('load_model must not read pretrained weights')
    monkeypatch.setattr(transformers.AutoModel, 'from_pretrained', no_pretrained)
    loaded = load_model(d)
    monkeypatch.undo()
    assert provenance(loaded) == dict(kind='transrec', text_model='minilm', image_weights='random-init')
    m.eval(); loaded.eval()
    torch.testing.assert_close(loaded.all_item_vectors(c), m.all_item_vectors(c), atol=1e-5, rtol=1e-4)
    # transfer: a data set the model never saw
    oc = make_content(loaded.cfg, other)
    ov = loaded.all_item_vectors(oc)
    assert ov.shape == (other.n_items, CFG.dim) and torch.isfinite(ov).all()
    hist = other.seqs[0][:-1]
    idx, sc = recommend(loaded, oc, hist, k=4)
    assert len(idx) == 4 and not set(idx) & set(hist) and list(sc) == sorted(sc, reverse=True)
    u = loaded.user_vectors(ov[torch.as_tensor(hist[-CFG.max_len:])][None], torch.ones(1, len(hist[-CFG.max_len:])).bool())[0]
    full = ov @ u; full[torch.as_tensor(hist)] = -float('inf')
    assert list(idx) == full.topk(4).indices.tolist()
    idx2, _ = recommend(loaded, oc, list(other.item_ids[hist]), k=4, item_vecs=ov)
    assert list(idx2) == list(idx)
    inc, _ = recommend(loaded, oc, hist, k=other.n_items, exclude_history=False)
    assert len(inc) == other.n_items
    with pytest.raises(ValueError, match='not items of data set'): recommend(loaded, oc, ['nope'])
    with pytest.raises(ValueError, match='empty history'): recommend(loaded, oc, [])
    with pytest.raises(IndexError): recommend(loaded, oc, [other.n_items])


def test_save_load_baselines_and_errors(ds, other, tmp_path):
    idm = build_model(CFG.replace(kind='id_sasrec'), ds)
    idl = load_model(save_model(idm, tmp_path/'id'))
    assert isinstance(idl, IDSASRec)
    torch.testing.assert_close(idl.item_embedding.weight, idm.item_embedding.weight)
    with pytest.raises(ValueError, match='cannot transfer: item IDs differ'): idl.fit_data(other)
    with pytest.raises(ValueError, match='cannot transfer'): recommend(idl, make_content(idl.cfg, other), [0, 1])
    pop = build_model(CFG.replace(kind='popularity'), ds)
    pl = load_model(save_model(pop, tmp_path/'pop'))
    torch.testing.assert_close(pl.counts, pop.counts)
    with pytest.raises(ValueError, match='config.json is missing'): load_model(tmp_path/'nothing')
    bad = tmp_path/'bad'; save_model(pop, bad)
    cfg = json.loads((bad/'config.json').read_text()); cfg['kind'] = 'id_sasrec'; (bad/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='do not fit the architecture'): load_model(bad)


def test_eval_interface_with_data_eval_batches(ds):
    "user_vectors on eval_batches histories (left-padded, global indices) equals the unpadded computation."
    from transrec.data import eval_batches
    seed_everything(0); m = TransRec(CFG).eval(); c = make_content(CFG, ds)
    iv = m.all_item_vectors(c)
    b = next(iter(eval_batches(ds, 'test', batch_size=4, max_len=CFG.max_len)))
    with torch.no_grad():
        uv = m.user_vectors(iv[b.hist], b.mask)
        for r in range(len(b.users)):
            h = b.hist[r][b.mask[r]]
            torch.testing.assert_close(uv[r], m.user_vectors(iv[h][None], torch.ones(1, len(h)).bool())[0], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compile_parts_same_outputs_and_keys(ds):
    "compile_parts (used by the trainer on CUDA) keeps outputs and state-dict keys (so checkpoints stay loadable)."
    seed_everything(0); m = TransRec(CFG).eval(); c = make_content(CFG, ds)
    keys = sorted(m.state_dict())
    b = first_batch(ds, CFG)
    with torch.no_grad():
        before = m.loss(b, c)[0]
        m.compile_parts()
        after = m.loss(b, c)[0]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert sorted(m.state_dict()) == keys
