"Unit tests of transrec.dashboard: drive the explorer's widgets through their Python API and check what they show."
import html, json, re
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from transrec.core import ModelConfig, seed_everything
from transrec.data import write_dataset, load_dataset, history_items
from transrec.encoders import make_content
from transrec.model import build_model, save_model
from transrec.metrics import topk_items, target_ranks, evaluate
import transrec.dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = dict(dim=32, text_trainable_blocks=1, image_trainable_blocks=1, image_size=32, n_layers=1, n_heads=2,
                max_len=8, text_max_tokens=16)
K = 4


def make_tiny(path, n_users=10, n_text=12, n_image=9, seed=0):
    "A tiny MoM data set: news-like titles and small coloured images."
    rng = np.random.default_rng(seed)
    words = 'storm market election football vaccine rocket concert recipe museum bridge river festival'.split()
    items, images = [], {}
    for i in range(n_text):
        items.append(dict(item_id=f'news{i}', modality='text', text=' '.join(rng.choice(words, 12)) + f' story {i}', image=''))
    for i in range(n_image):
        img = Image.new('RGB', (20, 20), tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(img).rectangle((5, 5, 14, 14), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images[f'images/cover{i}.png'] = img
        items.append(dict(item_id=f'cover{i}', modality='image', text='', image=f'images/cover{i}.png'))
    items = pd.DataFrame(items)
    rows = []
    for u in range(n_users):
        seq = rng.choice(len(items), int(rng.integers(4, 10)), replace=False)
        rows += [dict(user_id=f'user{u}', item_id=items.item_id[j], timestamp=t) for t, j in enumerate(seq)]
    write_dataset(path, items, pd.DataFrame(rows), {'synthetic': True, 'description': 'dashboard tests'}, images=images)
    return load_dataset(path)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('dash')
    ds = make_tiny(d/'tiny')
    cfg = ModelConfig(**TINY_CFG)
    seed_everything(0); a = build_model(cfg, ds)
    seed_everything(1); b = build_model(cfg, ds)
    content = make_content(cfg, ds)
    return dict(dir=d, ds=ds, cfg=cfg, models={'pretrained': a, 'scratch': b}, content=content)


@pytest.fixture(scope='module')
def ex(world):
    return dash.Explorer(world['models'], world['ds'], content=world['content'], k=K)


def hist_ids(h): return re.findall(r'class="trx-hist-row" data-item="([^"]+)"', h)
def rec_rows(h): return re.findall(r'<tr class="trx-rec-row[^"]*" data-item="([^"]+)" data-rank="(\d+)" data-score="([^"]+)" '
                                   r'data-modality="(\w+)" data-hit="(\d)"', h)
def rec_ids(h): return [r[0] for r in rec_rows(h)]


def reset(ex):
    ex.side_by_side.value = True; ex.modality_buttons.value = 'all'; ex.k_slider.value = K


def expected_top(world, ex, name, u, k, modality=None):
    "The top-k item ids computed independently with transrec.metrics.topk_items."
    ds, view = world['ds'], ex.views[name]
    ex_items = history_items(ds, 'test', users=[u])
    if modality is not None:
        other = np.flatnonzero(ds.modality != ['text', 'image'].index(modality))
        ex_items = [np.union1d(ex_items[0], other)]
    uv = view.user_vector(u)[None]
    n_cand = ds.n_items - len(ex_items[0])
    idx, sc = topk_items(uv, view.item_vecs, ex_items, min(k, n_cand))
    return list(ds.item_ids[idx[0].numpy()]), sc[0].numpy()


def test_select_user_shows_history_and_recommendations(world, ex):
    ds = world['ds']; reset(ex)
    ex.user_box.value = 'user3'
    assert ex.user == 3
    assert hist_ids(ex.history_html.value) == list(ds.item_ids[ds.seqs[3][:-1]])
    assert f'data-item="{ds.item_ids[ds.seqs[3][-1]]}"' in ex.history_html.value          # held-out item shown
    for name in world['models']:
        ids, scores = expected_top(world, ex, name, 3, K)
        rows = rec_rows(ex.recs_html[name].value)
        assert [r[0] for r in rows] == ids
        assert [int(r[1]) for r in rows] == list(range(1, K + 1))
        np.testing.assert_allclose([float(r[2]) for r in rows], scores, rtol=1e-4, atol=1e-5)
        assert [r[3] for r in rows] == [('text', 'image')[ds.modality[ds.item_index[i]]] for i in ids]
    assert len(ex.models_box.children) == 2          # two models side by side
    assert 'user3' in ex.status.value


def test_text_truncated_full_text_on_hover_and_thumbnails(world, ex):
    ds = world['ds']; reset(ex)
    u = next(u for u in range(ds.n_users) if {0, 1} <= set(ds.modality[ds.seqs[u][:-1]]))
    ex.select_user(u)
    h = ex.history_html.value
    t = next(i for i in ds.seqs[u][:-1] if ds.modality[i] == 0)
    full = ds.texts[t]
    assert len(full) > 80 and f'title="{full}"' in h and full not in re.sub(r'title="[^"]*"', '', h)
    assert len(re.findall(r'<img class="trx-thumb" src="data:image/png;base64,', h)) == int((ds.modality[ds.seqs[u][:-1]] == 1).sum())


def test_change_k(world, ex):
    reset(ex); ex.select_user('user5')
    for k in (1, 3, 7):
        ex.k_slider.value = k
        for name in world['models']:
            assert rec_ids(ex.recs_html[name].value) == expected_top(world, ex, name, 5, k)[0]
            assert f'data-k="{k}"' in ex.recs_html[name].value


def test_filter_by_modality(world, ex):
    ds = world['ds']; reset(ex); ex.select_user('user2'); ex.k_slider.value = 5
    for m, code in (('image', 1), ('text', 0)):
        ex.modality_buttons.value = m
        for name in world['models']:
            rows = rec_rows(ex.recs_html[name].value)
            assert len(rows) == 5 and {r[3] for r in rows} == {m}
            assert {int(ds.modality[ds.item_index[r[0]]]) for r in rows} == {code}
            assert [r[0] for r in rows] == expected_top(world, ex, name, 2, 5, m)[0]
    ex.modality_buttons.value = 'all'
    ex.k_slider.value = ex.k_slider.max                  # everything: both modalities appear
    assert {r[3] for r in rec_rows(ex.recs_html['pretrained'].value)} == {'text', 'image'}


def test_filter_fewer_candidates_than_k(world, ex):
    ds = world['ds']; reset(ex); ex.select_user(0)
    ex.modality_buttons.value = 'image'; ex.k_slider.value = 15
    n_img = int((ds.modality == 1).sum()) - len(set(history_items(ds, 'test', [0])[0]) & set(np.flatnonzero(ds.modality == 1)))
    assert len(rec_rows(ex.recs_html['pretrained'].value)) == n_img < 15
    assert f'only {n_img} image candidates' in ex.recs_html['pretrained'].value


def test_switch_model(world, ex):
    reset(ex); ex.select_user('user4')
    ex.side_by_side.value = False
    ex.model_dropdown.value = 'scratch'
    assert ex.models_box.children == (ex.columns['scratch'],) and list(ex.recs) == ['scratch']
    b = rec_rows(ex.recs_html['scratch'].value)
    assert [r[0] for r in b] == expected_top(world, ex, 'scratch', 4, K)[0]
    ex.model_dropdown.value = 'pretrained'
    assert ex.models_box.children == (ex.columns['pretrained'],)
    a = rec_rows(ex.recs_html['pretrained'].value)
    assert [r[2] for r in a] != [r[2] for r in b]         # two different models, different scores
    assert ex.model_dropdown.disabled is False
    ex.side_by_side.value = True
    assert ex.model_dropdown.disabled is True and len(ex.models_box.children) == 2


def test_held_out_item_marked_when_hit(world, ex):
    ds = world['ds']; reset(ex); ex.select_user('user6')
    ex.k_slider.value = ex.k_slider.max                  # K = all items: the held-out item must be in it
    target = ds.item_ids[ds.seqs[6][-1]]
    for name in world['models']:
        h = ex.recs_html[name].value
        hits = [r for r in rec_rows(h) if r[4] == '1']
        assert [r[0] for r in hits] == [target] and 'trx-hit-row' in h and ': hit' in h
        r = ex.recs[name]
        assert int(hits[0][1]) == r.target_rank == int(target_ranks(ex.views[name].user_vector(6)[None], ex.views[name].item_vecs,
                                                                 [ds.seqs[6][-1]], history_items(ds, 'test', [6]))[0])
    ex.k_slider.value = 1
    r = ex.recs['pretrained']
    assert r.hit == (r.target_rank == 1)
    if not r.hit: assert 'not in the top 1' in ex.recs_html['pretrained'].value


def test_target_filtered_out(world, ex):
    ds = world['ds']; reset(ex)
    u = next(u for u in range(ds.n_users) if ds.modality[ds.seqs[u][-1]] == 0)
    ex.select_user(u); ex.modality_buttons.value = 'image'
    assert 'held-out item is a text item: filtered out' in ex.recs_html['pretrained'].value
    assert ex.recs['pretrained'].target_rank is None and not ex.recs['pretrained'].hit


def test_random_user_and_unknown_user(world, ex):
    ds = world['ds']; reset(ex)
    seen = set()
    for _ in range(6):
        ex.random_button.click()
        assert ex.user_box.value == ds.user_ids[ex.user]
        assert hist_ids(ex.history_html.value) == list(ds.item_ids[ds.seqs[ex.user][:-1]])
        seen.add(ex.user)
    assert len(seen) > 1
    before = ex.user
    ex.user_box.value = 'nobody'
    assert ex.user == before and "'nobody' is not in data set" in html.unescape(ex.status.value)
    with pytest.raises(ValueError, match='out of range'): ex.select_user(999)


def figure(out):
    (o,) = out.outputs
    return o['data']['application/vnd.plotly.v1+json']


def test_figures_show_the_user(world, ex):
    ds = world['ds']; reset(ex); ex.select_user('user1')
    for name in world['models']:
        f = figure(ex.map_out[name]); tr = {t['name']: t for t in f['data']}
        r = ex.recs[name]
        assert tr[f"top {K}: the user vector's neighbourhood"]['customdata'] == list(ds.item_ids[r.items])
        assert tr['history (1 = oldest)']['customdata'] == list(ds.item_ids[ds.seqs[1][:-1]])
        assert tr['held-out item']['customdata'] == [ds.item_ids[ds.seqs[1][-1]]]
        assert tr['user vector']['customdata'] == ['user1']
        assert len(tr['text items']['x']) + len(tr['image items']['x']) == ds.n_items
        xy = ex.views[name].projection.transform(ex.views[name].user_vector(1))[0]
        np.testing.assert_allclose([tr['user vector']['x'][0], tr['user vector']['y'][0]], xy, rtol=1e-5)
        json.dumps(f)                                          # JSON-ready (what the frontend receives)
        s = figure(ex.score_out[name])
        assert sum(s['data'][0]['y']) == len(r.candidate_scores) == ds.n_items - len(history_items(ds, 'test', [1])[0])
        np.testing.assert_allclose(s['data'][1]['x'], r.scores, rtol=1e-6)
    h = figure(ex.hit_rate_out)
    res = evaluate(world['models']['pretrained'], ds, world['content'], split='test')
    bar = next(t for t in h['data'] if t['name'] == 'pretrained' and t['visible'] is True)
    assert bar['y'][0] == pytest.approx(res[h['layout']['yaxis']['title']['text']], abs=1e-6)


def test_widget_state_is_serialisable(world, ex):
    "What JupyterLab receives: the whole widget tree's state, including the plotly bundles in the Output widgets."
    from ipywidgets.embed import embed_data
    reset(ex); ex.select_user('user8')
    state = json.loads(json.dumps(embed_data(views=[ex.widget])['manager_state']))
    outs = [m['state'] for m in state['state'].values() if m['model_name'] == 'OutputModel' and m['state'].get('outputs')]
    assert len(outs) == 2 * 2 + 1                          # map + scores per model, hit rates
    assert all('application/vnd.plotly.v1+json' in o['outputs'][0]['data'] for o in outs)
    htmls = [m['state']['value'] for m in state['state'].values() if m['model_name'] == 'HTMLModel']
    assert any(hist_ids(h) == list(world['ds'].item_ids[world['ds'].seqs[8][:-1]]) for h in htmls)


def test_export_html_self_contained(world, ex, tmp_path):
    ds = world['ds']
    out = dash.export_html(world['models'], ds, tmp_path/'page.html', users=['user1', 'user7'], k=3, content=world['content'])
    s = out.read_text()
    from plotly.offline import get_plotlyjs
    assert get_plotlyjs()[-2000:] in s                                   # plotly.js inlined, nothing from a network:
    assert not re.search(r'<(script|link|img|iframe)\b[^>]*\b(src|href)="(https?:)?//', s)
    secs = re.split(r'<section class="trx-user"', s)[1:]
    assert [re.match(r' data-user="([^"]+)"', x).group(1) for x in secs] == ['user1', 'user7']
    for u, sec in zip((1, 7), secs):
        assert hist_ids(sec) == list(ds.item_ids[ds.seqs[u][:-1]])
        for name in world['models']:
            for f in ('all', 'text', 'image'):
                t = re.search(rf'data-model="{name}" data-filter="{f}" data-k="3".*?</table>', sec).group(0)
                rows = rec_rows(t)
                assert [r[0] for r in rows] == expected_top(world, ex, name, u, 3, None if f == 'all' else f)[0]
    spec = json.loads(re.search(r'<script type="application/json" id="trx-figures">(.*?)</script>', s, re.S).group(1))
    assert set(spec['figs']) == {'hit-rates'} | {f'{k}-u{i}-m{j}' for k in ('map', 'score') for i in range(2) for j in range(2)}
    assert all(f'data-fig="{f}"' in s for f in spec['figs'])
    assert 'SYNTHETIC' in s


def test_export_from_explorer_and_bad_input(world, ex, tmp_path):
    out = ex.export_html(tmp_path/'e.html', users=2, k=2)
    assert len(re.findall(r'<section class="trx-user"', out.read_text())) == 2
    with pytest.raises(ValueError, match='export at least one user'): ex.export_html(tmp_path/'x.html', users=0)
    with pytest.raises(ValueError, match="'ghost' is not in data set"): ex.export_html(tmp_path/'x.html', users=['ghost'])
    with pytest.raises(ValueError, match='at least one model'): dash.export_html({}, world['ds'], tmp_path/'x.html')
    with pytest.raises(ValueError, match="use 'all' or one of"): ex.views['pretrained'].recommend(0, 3, 'audio')


def test_cli_export_two_models(world, tmp_path, capsys):
    a, b = tmp_path/'pretrain-x'/'best', tmp_path/'scratch-x'/'best'
    save_model(world['models']['pretrained'], a); save_model(world['models']['scratch'], b)
    assert dash.main(['export', '--model', str(a.parent), '--model-b', str(b), '--data', str(world['dir']/'tiny'),
                      '--users', '3', '--k', '5', '--out', str(tmp_path/'cli.html')]) == 0
    s = (tmp_path/'cli.html').read_text()
    assert len(re.findall(r'<section class="trx-user"', s)) == 3
    assert 'data-model="pretrain-x" data-filter="all" data-k="5"' in s and 'data-model="scratch-x"' in s
    assert dash.main(['--model', str(tmp_path), '--data', str(world['dir']/'tiny'), '--out', str(tmp_path/'y.html')]) == 2
    assert 'no saved model there' in capsys.readouterr().err and not (tmp_path/'y.html').exists()
    with pytest.raises(SystemExit): dash.main(['export', '--data', 'x', '--out', 'y.html'])     # --model is required


def test_explore_notebook_runs(world, tmp_path):
    pm = pytest.importorskip('papermill')
    a = tmp_path/'m'/'best'; save_model(world['models']['pretrained'], a)
    out = tmp_path/'explore.html'
    pm.execute_notebook(str(ROOT/'nbs'/'explore.ipynb'), str(tmp_path/'explore.ipynb'), kernel_name='python3',
                        progress_bar=False, cwd=str(ROOT/'nbs'),
                        parameters=dict(model_dir=str(a.parent), data=str(world['dir']/'tiny'), n_users=2, k=3, out_html=str(out)))
    assert len(re.findall(r'<section class="trx-user"', out.read_text())) == 2
    nb = json.loads((tmp_path/'explore.ipynb').read_text())
    text = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'user switch over' in text and 'median' in text
