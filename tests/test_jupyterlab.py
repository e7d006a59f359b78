"""The live explorer where users run it: a real JupyterLab (headless, 127.0.0.1, token) driven through the DevTools
protocol by Playwright with the system Chromium (nothing is downloaded). It opens nbs/explore.ipynb on a tiny
trained model, runs all cells, picks another user in the widget and checks that the history table, the top-K table
and the plotly figures render and change with the user. Screenshot: reports/screenshots/jupyterlab-test.png."""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
import torch

from transrec.core import ModelConfig, TrainConfig, seed_everything
from transrec.model import build_model
from transrec.train import fit
from transrec.data import load_dataset, tiny_mom
from test_dashboard import TINY_CFG

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT/'reports'/'screenshots'/'jupyterlab-test.png'      # git-ignored (*-test.png)
CHROMIUM = next((p for p in (shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
pytestmark = pytest.mark.browser
if CHROMIUM is None and os.environ.get('CI', '').lower() == 'true':   # CI runs the browser tests, never skips them
    pytest.fail('headless Chromium is missing in CI: .ci/setup --browser installs it (apt-get install -y chromium)',
                pytrace=False)
if CHROMIUM is None: pytest.skip('headless Chromium not installed (Debian: apt-get install -y chromium)',
                                 allow_module_level=True)
if os.environ.get('CI', '').lower() != 'true': pytest.importorskip('playwright.sync_api')   # in CI: an ImportError
MINUTE = 60_000    # Playwright timeouts are in milliseconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    "A folder with a tiny data set, a model trained on it for one epoch, and explore.ipynb set to use them."
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('lab')
    ds = load_dataset(tiny_mom(d/'tiny', n_image=9, n_users=12, image_wh=(20, 20), seq_len=(4, 10)))
    seed_everything(0)
    model = build_model(ModelConfig(**TINY_CFG), ds)
    fit(model, ds, TrainConfig(epochs=1, batch_size=8, patience=0), d/'run', progress=False)
    nb = json.loads((ROOT/'nbs'/'explore.ipynb').read_text())
    at = next(i for i, c in enumerate(nb['cells']) if 'parameters' in c.get('metadata', {}).get('tags', []))
    params = dict(model_dir=str(d/'run'/'best'), data=str(d/'tiny'), n_users=2, k=5, out_html=str(d/'explore.html'))
    nb['cells'].insert(at + 1, dict(cell_type='code', execution_count=None, metadata={}, outputs=[],
                                    source=[f'{k} = {v!r}\n' for k, v in params.items()]))
    (d/'explore.ipynb').write_text(json.dumps(nb))
    # JupyterLab settings of its own: every cell in the DOM (no windowing), nothing from the user's profile
    settings = d/'lab-settings'/'@jupyterlab'/'notebook-extension'
    settings.mkdir(parents=True)
    (settings/'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    return d


@pytest.fixture(scope='module')
def lab(workdir):
    "A headless JupyterLab on 127.0.0.1 with a token, serving `workdir`; yields its base URL and token."
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT/'tests'), os.environ.get('PYTHONPATH', '')]),
               HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', JUPYTER_CONFIG_DIR=str(workdir/'jupyter-config'),
               JUPYTERLAB_SETTINGS_DIR=str(workdir/'lab-settings'), JUPYTERLAB_WORKSPACES_DIR=str(workdir/'lab-ws'),
               JUPYTER_RUNTIME_DIR=str(workdir/'jupyter-runtime'), TRANSREC_REPORTS=str(workdir/'reports'))
    log = open(workdir/'jupyterlab.log', 'w')
    server = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
                               f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={workdir}',
                               '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(240):
            if server.poll() is not None: pytest.fail(f'jupyter lab exited: {(workdir/"jupyterlab.log").read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=5) as r:
                    if r.status == 200: break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f'jupyter lab did not answer: {(workdir/"jupyterlab.log").read_text()[-3000:]}')
        yield dict(base=base, token=token, log=workdir/'jupyterlab.log')
    finally:
        server.terminate()
        try: server.wait(30)
        except subprocess.TimeoutExpired: server.kill()
        log.close()


STATE_JS = """() => {
  const root = document.querySelector('.trx-root');
  if (!root) return null;
  const items = sel => [...root.querySelectorAll(sel)].map(e => e.getAttribute('data-item'));
  const plots = [...root.querySelectorAll('.js-plotly-plot')];
  return {user: (root.querySelector('.trx-status b') || {}).textContent || null,
          history: items('.trx-hist-row'), recs: items('.trx-rec-row'),
          plots: plots.length, svgs: root.querySelectorAll('.js-plotly-plot .main-svg').length,
          traces: plots.map(p => JSON.stringify((p.data || []).map(t => [t.name, t.x, t.y])))};
}"""


STARTED_JS = ("() => [...document.querySelectorAll('.jp-NotebookPanel .jp-InputPrompt')]"
              ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")


def run_all_cells(page, tries: int = 4):
    "Run every cell (Run menu, then the command palette); retried until a cell is queued or has run."
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for attempt in range(tries):
        for dialog_button in page.query_selector_all('.jp-Dialog .jp-mod-accept'): dialog_button.click()
        if attempt % 2 == 0:
            page.click('.lm-MenuBar-itemLabel:text-is("Run")')
            page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
        else:
            page.keyboard.press('Escape')
            page.keyboard.press('Control+Shift+C')
            page.keyboard.type('Run All Cells')
            page.keyboard.press('Enter')
        try:
            page.wait_for_function(STARTED_JS, timeout=MINUTE // 2)
            return
        except PlaywrightTimeout:
            page.keyboard.press('Escape')
    raise AssertionError(f'no cell started after {tries} tries of Run All Cells')


def test_explorer_in_jupyterlab(lab, workdir):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        try:
            page = browser.new_page(viewport={'width': 1500, 'height': 1100})
            page.set_default_timeout(3 * MINUTE)
            errors = []
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.goto(f"{lab['base']}/lab/tree/explore.ipynb?token={lab['token']}")
            page.wait_for_selector('.jp-NotebookPanel .jp-Cell', state='attached')
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', state='attached')
            run_all_cells(page)
            # the last cell prints the static page's path: then every cell has run
            page.wait_for_selector('.jp-OutputArea-output:has-text("explore.html")', timeout=8 * MINUTE)
            page.wait_for_function(f'() => {{ const s = ({STATE_JS})(); return s && s.svgs >= 2 * s.plots && s.plots >= 3; }}')
            before = page.evaluate(STATE_JS)
            assert not page.query_selector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                                           ':has-text("Traceback")')
            assert before['history'] and len(before['recs']) == 5, before
            # the hit-rate bars, the item map and the score distribution, each drawn by plotly in the page
            assert before['plots'] >= 3 and before['svgs'] >= 2 * before['plots'], before
            other = next(f'u{u}' for u in range(12) if f'u{u}' != before['user'])
            box = page.locator('.trx-root input[list]')   # ipywidgets' Combobox: a text input with a datalist
            box.fill(other)
            box.press('Enter')
            page.wait_for_function(f'() => {{ const s = ({STATE_JS})(); return s && s.user === {other!r}; }}')
            page.wait_for_function(f'() => {{ const s = ({STATE_JS})(); return s.svgs >= 2 * s.plots; }}')
            after = page.evaluate(STATE_JS)
            assert after['user'] == other and after['history'] and len(after['recs']) == 5, after
            assert after['history'] != before['history'], (before['history'], after['history'])
            assert after['recs'] != before['recs'], (before['recs'], after['recs'])
            changed = [i for i, (a, b) in enumerate(zip(before['traces'], after['traces'])) if a != b]
            assert changed, 'no plotly figure changed with the user'
            assert after['plots'] == before['plots']
            assert not errors, errors
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            SCREENSHOT.unlink(missing_ok=True)
            page.locator('.trx-root').scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT))
            assert SCREENSHOT.stat().st_size > 20_000
        finally:
            browser.close()
