"Tests of transrec.metrics against brute-force references (plain Python sorting per user)."
import math
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from transrec import metrics as M
from transrec.metrics import full_rank_metrics, target_ranks, topk_items, evaluate
from transrec.core import ModelConfig
from transrec.data import write_dataset, load_dataset, MODALITIES

torch.set_num_threads(1)
KS = (5, 10, 20)


def reference_rank(scores, target, excluded):
    "Position of the target when candidates are sorted by descending score, the target after every tie."
    excluded = set(int(e) for e in excluded) - {int(target)}
    cands = [j for j in range(len(scores)) if j not in excluded]
    order = sorted(cands, key=lambda j: (-scores[j], j == target))
    return order.index(target) + 1


def reference_metrics(S, targets, exclude, ks=KS):
    r = np.array([reference_rank(S[u], t, exclude[u] if exclude is not None else [])
                  for u, t in enumerate(targets)], float)
    out = {}
    for k in ks:
        out[f'HR@{k}'] = float(np.mean(r <= k))
        out[f'NDCG@{k}'] = float(np.mean([1 / math.log2(x + 1) if x <= k else 0.0 for x in r]))
    out['MRR'] = float(np.mean(1 / r))
    out['n_users'] = len(r)
    return out, r


def random_case(seed, U=70, N=45, ties=True, dense_every=4):
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 5, (U, N)).astype(np.float64) if ties else rng.standard_normal((U, N))
    targets = rng.integers(0, N, U)
    exclude = []
    for u in range(U):
        n = int(rng.integers(N - 3, N + 1)) if u % dense_every == 0 else int(rng.integers(0, 8))
        ex = rng.choice(N, size=min(n, N), replace=False)
        if u % 7 == 0:                               # the target also in the history (must stay ranked)
            ex = np.append(ex, targets[u])
        exclude.append(ex)
    return S, targets, exclude


def test_real_dot_products_with_ties():
    "Integer-valued vectors give exact integer scores (many ties) through a real matmul."
    rng = np.random.default_rng(5)
    U, N, d = 40, 60, 3
    uv, iv = rng.integers(-2, 3, (U, d)).astype(np.float32), rng.integers(-2, 3, (N, d)).astype(np.float32)
    S = uv.astype(np.float64) @ iv.T.astype(np.float64)
    targets = rng.integers(0, N, U)
    exclude = [rng.choice(N, size=int(rng.integers(0, 55)), replace=False) for _ in range(U)]
    ours = full_rank_metrics(torch.from_numpy(uv), torch.from_numpy(iv), targets, exclude, chunk_size=9)
    ref, _ = reference_metrics(S, targets, exclude)
    for k, v in ref.items(): assert ours[k] == pytest.approx(v, abs=1e-12), k


def test_by_modality_breakdown():
    S, targets, exclude = random_case(8)
    N = S.shape[1]
    modality = np.arange(N) % 3 == 0                       # 1/3 image items
    modality = modality.astype(np.int64)
    ours = full_rank_metrics(torch.from_numpy(S), torch.eye(N, dtype=torch.float64), targets, exclude,
                             item_modality=modality)
    assert set(ours['by_modality']) == {'text', 'image'}
    for code, name in enumerate(MODALITIES):
        sel = np.flatnonzero(modality[targets] == code)
        ref, _ = reference_metrics(S[sel], targets[sel], [exclude[i] for i in sel])
        for k, v in ref.items(): assert ours['by_modality'][name][k] == pytest.approx(v, abs=1e-12), (name, k)
    assert sum(v['n_users'] for v in ours['by_modality'].values()) == ours['n_users']
    # a modality with no target is left out instead of reported as NaN
    only_text = full_rank_metrics(torch.from_numpy(S), torch.eye(N, dtype=torch.float64), targets, exclude,
                                  item_modality=np.zeros(N, np.int64))
    assert list(only_text['by_modality']) == ['text']


def test_memory_is_bounded_by_chunks_and_tiles(monkeypatch):
    shapes, real = [], M._scores_tile
    def spy(user_vecs, item_vecs, start, stop, out=None):
        scores = real(user_vecs, item_vecs, start, stop, out)
        shapes.append(tuple(scores.shape))
        return scores
    monkeypatch.setattr(M, '_scores_tile', spy)
    uv, iv = torch.randn(103, 8), torch.randn(57, 8)
    for fn in (lambda: full_rank_metrics(uv, iv, np.zeros(103, np.int64), None, chunk_size=25, tile_items=10),
               lambda: topk_items(uv, iv, None, k=5, chunk_size=25, tile_items=10)):
        shapes.clear()
        fn()
        assert {c for _, c in shapes} == {10} and max(r for r, _ in shapes) == 25   # every matmul is one tile
        assert sum(r for r, _ in shapes) >= 103 * 6              # 6 tiles (the last overlapping) per chunk


def test_ranks_are_exact_when_the_threshold_kernel_disagrees(monkeypatch):
    "If a threshold differs from its target's score in the tile, the chunk is recounted with the tiles' own."
    rng = np.random.default_rng(3)
    U, N = 40, 300
    uv = torch.from_numpy(rng.standard_normal((U, 16))).float()
    iv = torch.from_numpy(rng.standard_normal((N, 16))).float()
    iv[150:200] = iv[100:150]                       # exact duplicates: ties that rounding could break
    targets = rng.integers(100, 200, U)
    exclude = [rng.choice(N, 5, replace=False) for _ in range(U)]
    S = (uv @ iv.T).numpy()                                    # the scores the tiles compute (one kernel)
    want = target_ranks(uv, iv, targets, exclude, tile_items=N)
    real = M._target_scores
    monkeypatch.setattr(M, '_target_scores', lambda u, iv_, t, tile: real(u, iv_, t, tile) * (1 + 1e-6))
    for tile in (N, 64, 7):
        ranks = target_ranks(uv, iv, targets, exclude, chunk_size=16, tile_items=tile)
        assert ranks.tolist() == want.tolist()
    monkeypatch.undo()
    for tile, chunk in ((64, 16), (7, 40), (299, 1)):                # and without the nudge, any tiling
        ranks = target_ranks(uv, iv, targets, exclude, chunk_size=chunk, tile_items=tile)
        assert ranks.tolist() == want.tolist()
    for u in range(U):                              # and `want` is the brute-force pessimistic rank
        ex = set(exclude[u].tolist()) - {targets[u]}
        assert want[u] == sum(1 for j in range(N) if j not in ex and S[u, j] >= S[u, targets[u]])


# ---------------------------------------------------------------- evaluate() on a real model and data set
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    rng = np.random.default_rng(0)
    n_items, n_users = 25, 18
    items = pd.DataFrame(dict(item_id=[f'i{i}' for i in range(n_items)],
                              modality=['text' if i % 2 == 0 else 'image' for i in range(n_items)],
                              text=[f'item {i}' if i % 2 == 0 else '' for i in range(n_items)],
                              image=['' if i % 2 == 0 else f'images/i{i}.png' for i in range(n_items)]))
    images = {f'images/i{i}.png': Image.new('RGB', (8, 8), (i * 9, 0, 0)) for i in range(1, n_items, 2)}
    rows = []
    for u in range(n_users):
        seq = rng.choice(n_items, size=int(rng.integers(3, 12)), replace=u % 3 == 0)   # some re-consumption
        rows += [dict(user_id=f'u{u}', item_id=f'i{i}', timestamp=t) for t, i in enumerate(seq)]
    path = tmp_path_factory.mktemp('m')/'tiny'
    write_dataset(path, items, pd.DataFrame(rows), dict(name='tiny', synthetic=True), images=images)
    ds = load_dataset(path)
    from transrec.model import build_model
    from transrec.encoders import make_content
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind='id_sasrec', dim=8, n_layers=1, max_len=4, dropout=0.2), ds)
    return ds, model, make_content(model.cfg, ds)


@pytest.mark.parametrize('split', ['valid', 'test'])
def test_evaluate_matches_a_per_user_brute_force(tiny, split):
    ds, model, content = tiny
    model.train()
    m = evaluate(model, ds, content, split, batch_size=5, chunk_size=4)
    assert model.training                                   # the mode is restored
    model.eval()
    with torch.no_grad():
        iv = model.all_item_vectors(content).double()
        k = 2 if split == 'valid' else 1
        ranks, target_modality = [], []
        for seq in ds.seqs:
            hist, target = seq[:-k], int(seq[-k])
            h = torch.as_tensor(hist[-model.cfg.max_len:])
            u = model.user_vectors(iv.float()[h][None], torch.ones(1, len(h), dtype=torch.bool))[0].double()
            scores = (iv @ u).numpy()
            ranks.append(reference_rank(scores, target, hist))
            target_modality.append(ds.modality[target])
    model.train()
    r = np.array(ranks, float)
    assert m['n_users'] == ds.n_users
    assert m['HR@10'] == pytest.approx(np.mean(r <= 10)) and m['MRR'] == pytest.approx(np.mean(1 / r))
    assert m['NDCG@5'] == pytest.approx(np.mean([1 / math.log2(x + 1) if x <= 5 else 0 for x in r]))
    img = np.array(target_modality) == 1
    assert m['by_modality']['image']['n_users'] == img.sum()
    assert m['by_modality']['image']['MRR'] == pytest.approx(np.mean(1 / r[img]))


def test_evaluate_on_a_subset_of_users_and_with_given_item_vectors(tiny):
    ds, model, content = tiny
    full = evaluate(model, ds, content, 'test', return_ranks=True)
    rank_of = dict(zip(full['users'].tolist(), full['ranks'].tolist()))
    users = np.array([3, 0, 7])
    sub = evaluate(model, ds, content, 'test', users=users, item_vecs=model.all_item_vectors(content))
    assert sub['n_users'] == 3
    for u in users:                                     # one user: its own rank in the full evaluation
        one = evaluate(model, ds, content, 'test', users=[u])
        assert one['MRR'] == pytest.approx(1 / rank_of[u])
        assert one['HR@5'] == float(rank_of[u] <= 5)
    assert sub['MRR'] == pytest.approx(np.mean([1 / rank_of[u] for u in users]))
    assert full['n_users'] == ds.n_users
    with pytest.raises(ValueError, match='scores 3 items but data set'):
        evaluate(model, ds, content, 'test', item_vecs=torch.randn(3, 8))
    with pytest.raises(ValueError, match="split='train'"):
        evaluate(model, ds, content, 'train')
