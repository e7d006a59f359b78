"""Browser test of the static dashboard page: headless Chromium renders the exported HTML (offline, file://),
we check the rendered DOM and keep a screenshot in reports/screenshots/dashboard-test.png."""
import os, re, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

from transrec.core import ModelConfig, seed_everything
from transrec.encoders import make_content
from transrec.model import build_model
import transrec.dashboard as dash
from transrec.data import load_dataset, tiny_mom
from test_dashboard import TINY_CFG

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT/'reports'/'screenshots'/'dashboard-test.png'   # git-ignored; dashboard.png is a trained model's page
CHROMIUM = next((p for p in (shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
if CHROMIUM is None and os.environ.get('CI', '').lower() == 'true':   # CI runs the browser tests, never skips them
    pytest.fail('headless Chromium is missing in CI: .ci/setup --browser installs it (apt-get install -y chromium)',
                pytrace=False)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian: apt-get install -y chromium)')]
K = 5


def chromium(url, tmp, *args, timeout=60):       # one page takes about 3 s
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--no-first-run', f'--user-data-dir={tmp}',
           '--virtual-time-budget=10000', *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f'chromium failed ({r.returncode}): {r.stderr[-2000:]}'
    return r.stdout


@pytest.fixture(scope='module')
def page(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('dash-browser')
    ds = load_dataset(tiny_mom(d/'tiny', n_image=9, n_users=8, image_wh=(20, 20), seq_len=(4, 10)))
    cfg = ModelConfig(**TINY_CFG)
    seed_everything(0); a = build_model(cfg, ds)
    seed_everything(1); b = build_model(cfg, ds)
    users = ['u2', 'u5', 'u6']
    out = dash.export_html({'pretrained': a, 'scratch': b}, ds, d/'dashboard.html', users=users, k=K, content=make_content(cfg, ds))
    return dict(dir=d, ds=ds, out=out, users=users)


def sections(dom):
    "{user id: (shown?, section html)} of the rendered DOM."
    parts = re.split(r'(?=<section class="trx-user")', dom)[1:]
    out = {}
    for p in parts:
        tag = p[:p.index('>') + 1]
        out[re.search(r'data-user="([^"]+)"', tag).group(1)] = ('hidden' not in tag, p.split('</section>')[0])
    return out


@pytest.mark.parametrize('pick', [None, 'u5'])
def test_rendered_dom(page, tmp_path, pick):
    url = page['out'].resolve().as_uri() + (f'#user={pick}' if pick else '')
    dom = chromium(url, tmp_path/'profile', '--dump-dom')
    body = re.search(r'<body[^>]*>', dom).group(0)
    assert 'data-rendered="ok"' in body, body
    assert 'data-js-error' not in body and 'data-js-error' not in re.search(r'<html[^>]*>', dom).group(0), body
    ds, shown_user = page['ds'], pick or page['users'][0]
    secs = sections(dom)
    assert [u for u, (on, _) in secs.items() if on] == [shown_user]
    sec = secs[shown_user][1]; u = ds.user_ids.tolist().index(shown_user)
    assert re.findall(r'class="trx-hist-row" data-item="([^"]+)"', sec) == list(ds.item_ids[ds.seqs[u][:-1]])
    for name in ('pretrained', 'scratch'):
        tables = re.findall(rf'<div class="trx-panel trx-recs" data-model="{name}" data-filter="(\w+)"[^>]*?( hidden="")?>'
                            r'(.*?)</table>', sec, re.S)
        visible = [(f, t) for f, hid, t in tables if not hid]
        assert [f for f, _ in visible] == ['all']                   # the modality filter starts at 'all'
        assert len(re.findall(r'class="trx-rec-row', visible[0][1])) == K
    # every figure of the shown user and the overview rendered to SVG by plotly.js
    plots = re.findall(r'<div class="trx-plot[^"]*" id="([^"]+)" data-fig="[^"]+"([^>]*)>', dom)
    done = [i for i, attrs in plots if 'data-done="1"' in attrs]
    i = page['users'].index(shown_user)
    assert set(done) == {'hit-rates'} | {f'{k}-u{i}-m{j}' for k in ('map', 'score') for j in range(2)}
    assert f'data-figures="{len(done)}"' in body
    assert dom.count('class="main-svg"') >= 2 * len(done)


def test_screenshot(page, tmp_path):
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(page['out'].resolve().as_uri(), tmp_path/'profile', f'--screenshot={SCREENSHOT}', '--window-size=1400,2000',
             '--hide-scrollbars')
    img = Image.open(SCREENSHOT).convert('RGB')
    assert img.size == (1400, 2000)
    colours = img.resize((350, 500)).getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, 'the screenshot looks blank'
    top = img.crop((0, 0, 1400, 700)).resize((140, 70)).getcolors(maxcolors=1 << 16)
    assert len(top) > 20, 'the header / hit-rate chart area is blank'
