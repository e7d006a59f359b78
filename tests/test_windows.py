"""Training windows over whole histories (train_windows='all'): every training interaction after a user's
first is a target exactly once per epoch, no valid/test item is ever a target or in a window, and mid-epoch
resume is exact."""
from collections import Counter
import numpy as np, pandas as pd, pytest, torch

from transrec.core import ModelConfig, TrainConfig
from transrec.data import MoMDataset, tiny_mom, load_dataset
from transrec.batches import train_batches, n_batches_per_epoch, train_part, window_ends
from transrec.model import SequenceRecommender, training_pairs, train_seq_len, train_stride
from transrec.train import fit

torch.set_num_threads(1)
MAX_LEN, N_POS = 4, 2


def dataset(train_lens, n_items=60, seed=0) -> MoMDataset:
    "One user per entry of `train_lens` (+ a valid and a test item each), all items of a user distinct."
    rng = np.random.default_rng(seed)
    seqs = [rng.permutation(n_items)[:n + 2] for n in train_lens]
    ids = [f'i{i}' for i in range(n_items)]
    users = [f'u{u}' for u in range(len(seqs))]
    return MoMDataset(ids, np.zeros(n_items, np.int64), ids, [''] * n_items, users, seqs)


# train parts: 1 item (nothing to predict), shorter than a window, exactly max_len + 1 (one full window), one
# more, exactly two causal windows (1 + 2 * max_len), long ones; causal windows hold 5 items, 'last' ones 6
TRAIN_LENS = [1, 2, 3, MAX_LEN, MAX_LEN + 1, MAX_LEN + 2, 2 * MAX_LEN + 1, 2 * MAX_LEN + 2, 23, 40]


class Probe(SequenceRecommender):
    "A model with no parameters: only its config matters to `training_pairs` (which pairs a window trains)."
    def __init__(self, cfg): super().__init__(); self.cfg = cfg
    def user_states(self, hist_vecs, mask): return torch.zeros_like(hist_vecs)


def epoch_targets(ds, cfg, batch_size=3):
    "Counter of (user, target item) over one epoch, as the loss sees them, and every window's (user, items)."
    model, targets, windows = Probe(cfg), Counter(), []
    for b in train_batches(ds, batch_size, train_seq_len(cfg), 0, seed=1, epoch=0, stride=train_stride(cfg)):
        vecs = torch.zeros(len(b.items), 2)
        _, pos, _, rows = training_pairs(model, vecs, b.seq, b.mask, b.neg)
        targets.update(zip(b.users[rows].tolist(), b.items[pos].tolist()))
        windows += [(u, b.seq_items[r][b.mask[r]].tolist()) for r, u in enumerate(b.users.tolist())]
    return targets, windows


@pytest.mark.parametrize('readout', ['causal', 'last'])
def test_every_train_interaction_is_a_target_exactly_once(readout):
    ds = dataset(TRAIN_LENS)
    cfg = ModelConfig(kind='id_sasrec', readout=readout, max_len=MAX_LEN, n_pos=N_POS, dim=4, n_heads=1,
                      train_windows='all')
    targets, windows = epoch_targets(ds, cfg)
    expected = Counter((u, int(i)) for u, seq in enumerate(ds.seqs) for i in train_part(seq)[1:])
    assert targets == expected                                            # each exactly once, nothing else
    for u, items in windows:                                   # a window: consecutive train items only
        tp = train_part(ds.seqs[u]).tolist()
        start = tp.index(items[0])
        assert tp[start:start + len(items)] == items and 1 < len(items) <= train_seq_len(cfg)
        assert not set(items) & set(ds.seqs[u][-2:].tolist())             # never the valid or the test item
    per_user = Counter(u for u, _ in windows)
    stride = MAX_LEN if readout == 'causal' else N_POS
    assert [per_user[u] for u in range(ds.n_users)] == [-(-(n - 1) // stride) for n in TRAIN_LENS]
    assert per_user[0] == 0                                    # one train item: no window
    assert per_user[4] == (1 if readout == 'causal' else 2)    # max_len + 1 items: one causal window


def test_last_windows_keep_the_reference_behaviour():
    ds = dataset(TRAIN_LENS)
    cfg = ModelConfig(kind='id_sasrec', max_len=MAX_LEN, dim=4, n_heads=1, train_windows='last')
    targets, windows = epoch_targets(ds, cfg)
    assert sorted(u for u, _ in windows) == list(range(ds.n_users))   # one window per user: its newest items
    assert all(items == train_part(ds.seqs[u])[-(MAX_LEN + 1):].tolist() for u, items in windows)
    assert sum(targets.values()) == sum(min(n - 1, MAX_LEN) for n in TRAIN_LENS)
    assert train_stride(ModelConfig.reference()) is None
    assert train_stride(ModelConfig()) == ModelConfig().max_len
    assert train_stride(ModelConfig(readout='last')) is None
    assert train_stride(ModelConfig(readout='last', train_windows='all', n_pos=3)) == 3


def test_windows_epoch_shuffle_skip_and_ranks():
    ds = dataset(TRAIN_LENS)
    n = len(window_ends(ds, 4)[0])
    assert n == sum(-(-(k - 1) // 4) for k in TRAIN_LENS)
    assert n_batches_per_epoch(ds, 4, stride=4) == -(-n // 4)
    full = list(train_batches(ds, 4, 5, 1, seed=0, epoch=0, stride=4))
    again = list(train_batches(ds, 4, 5, 1, seed=0, epoch=0, stride=4, skip=2))   # resume: same later batches
    assert len(again) == len(full) - 2
    for a, b in zip(full[2:], again):
        assert torch.equal(a.seq_items, b.seq_items) and torch.equal(a.neg_items, b.neg_items)
    other = list(train_batches(ds, 4, 5, 1, seed=0, epoch=1, stride=4))
    assert [b.users.tolist() for b in other] != [b.users.tolist() for b in full]     # reshuffled each epoch
    halves = [list(train_batches(ds, 4, 5, 1, seed=0, epoch=0, stride=4, rank=r, world_size=2))
              for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][0].users, halves[1][0].users]), full[0].users)
    for b in full:                                             # negatives: never an item of that user
        for r, u in enumerate(b.users.tolist()):
            assert not np.isin(b.neg_items[r][b.mask[r]].numpy(), ds.seqs[u]).any()
    with pytest.raises(ValueError, match='no training window'):
        train_batches(dataset([1, 1]), 2, 5, 0, 0, 0, stride=4)
    with pytest.raises(ValueError, match='stride=5 must be < seq_len=5'):
        train_batches(ds, 2, 5, 0, 0, 0, stride=5)


def _tiny_folder(path):
    "Ten users of 4-24 distinct text items out of 30: long histories, several windows a user."
    return load_dataset(tiny_mom(path, n_text=30, n_image=0, n_users=10, seq_len=(4, 25)))


def test_fit_trains_all_windows_and_resumes_exactly_mid_epoch(tmp_path):
    "One trainer epoch = one pass over all windows; a run resumed mid-epoch ends like an uninterrupted one."
    from transrec.model import build_model
    from transrec.encoders import make_content
    from safetensors.torch import load_file
    ds = _tiny_folder(tmp_path/'data')
    mcfg = ModelConfig(kind='id_sasrec', loss='softmax', dim=8, n_layers=1, n_heads=2, max_len=4, dropout=0.1)
    n_windows = len(window_ends(ds, train_stride(mcfg))[0])
    assert n_windows > 2 * ds.n_users                          # long histories: several windows a user
    tcfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, device='cpu', amp='none', seed=0, log_every=1)
    def run(out, max_steps=None, seed=0):
        torch.manual_seed(seed); model = build_model(mcfg, ds)
        content = make_content(mcfg, ds)
        return fit(model, ds, tcfg.replace(max_steps=max_steps), out, content=content, progress=False)
    straight = run(tmp_path/'a')
    assert straight.steps == -(-n_windows // 4)
    run(tmp_path/'b', max_steps=3)
    resumed = run(tmp_path/'b', seed=1)
    assert resumed.steps == straight.steps and resumed.resumed_from.endswith('step-000003')
    w1, w2 = (load_file(str(p/'best'/'model.safetensors')) for p in (tmp_path/'a', tmp_path/'b'))
    assert max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1) <= 1e-6
