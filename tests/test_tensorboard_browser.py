"""Browser test of TensorBoard on a study (issue #22 item 5): a tiny 2-run study, `tensorboard --logdir` on its
folder, headless Chromium on the HPARAMS tab: both runs in the table with their settings and test metrics, sorted
by test NDCG@10; the screenshot goes to reports/screenshots/tensorboard-hparams-test.png (git-ignored)."""
import os, shutil, socket, subprocess, sys, time
from pathlib import Path

import pytest

from transrec.core import ModelConfig, TrainConfig
from transrec.data import tiny_mom
from transrec.experiment import run_experiment

pytest.importorskip('tensorboard')
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT/'reports'/'screenshots'/'tensorboard-hparams-test.png'
CHROMIUM = next((p for p in (shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
if CHROMIUM is None and os.environ.get('CI', '').lower() == 'true':   # CI runs the browser tests, never skips them
    pytest.fail('headless Chromium is missing in CI: .ci/setup --browser installs it (apt-get install -y chromium)',
                pytrace=False)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed')]
SHOWN = ('data', 'lr', 'method', 'seed', 'test_users')          # the settings columns the screenshot shows
BOUND_S = 60                                                    # any one wait: the server, the page, a click


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "Two finished ID-SASRec runs (seed and lr differ) in a study folder laid out as target/method/seed-N."
    root = tmp_path_factory.mktemp('tb-study')
    data = tiny_mom(root/'data', n_text=12, n_image=8, n_users=40, seq_len=(4, 10))
    train = TrainConfig(epochs=3, batch_size=8, warmup_steps=0, device='cpu', amp='none', log_every=1, threads=1,
                        num_workers=0)
    runs = {}
    for seed, lr in ((0, 1e-2), (1, 3e-3)):
        out = root/'transfer'/'tiny'/'id_sasrec'/f'seed-{seed}'
        runs[seed] = run_experiment(str(data), out, ModelConfig(kind='id_sasrec', dim=16, n_layers=1, n_heads=1,
                                                                max_len=6),
                                    train.replace(seed=seed, lr=lr), fraction=0.5, experiment='finetune',
                                    progress=False, params=dict(seed=seed, lr=lr))
    return root/'transfer', runs


@pytest.fixture(scope='module')
def board(study):
    port = free_port()
    server = subprocess.Popen([sys.executable, '-m', 'tensorboard.main', '--logdir', str(study[0]),
                               '--host', '127.0.0.1', '--port', str(port), '--load_fast', 'false'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            break
        except OSError: time.sleep(0.5)
    try:
        assert server.poll() is None, f'tensorboard exited: {server.stderr.read()[-2000:]}'
        yield f'http://127.0.0.1:{port}'
    finally:
        server.terminate()
        server.wait(BOUND_S)


def test_hparams_table_shows_both_runs_sorted_by_test_ndcg(study, board):
    from playwright.sync_api import sync_playwright
    runs = study[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        try:
            page = browser.new_page(viewport={'width': 1900, 'height': 700})
            page.set_default_timeout(BOUND_S * 1000)
            page.goto(f'{board}/?darkMode=false#hparams')
            boxes = page.locator('paper-checkbox')
            boxes.filter(has_text='hparam/test_NDCG@10').first.wait_for()
            names = [name.strip() for name in boxes.all_inner_texts()]
            assert {'lr', 'seed', 'method', 'hparam/test_NDCG@10', 'hparam/test_items_0_NDCG@10'} <= set(names)
            for i, name in enumerate(names):                        # the settings first, then the metrics
                if name.startswith('hparam/'): break
                box = boxes.nth(i)
                if (name in SHOWN) != (box.get_attribute('aria-checked') == 'true'): box.click()
            page.locator('paper-dropdown-menu').nth(0).click()                        # Sort by
            page.locator('paper-item:visible', has_text='hparam/test_NDCG@10').first.click()
            page.locator('paper-dropdown-menu').nth(1).click()                        # Direction
            page.locator('paper-item:visible', has_text='Descending').first.click()
            rows = page.locator('vaadin-grid-cell-content', has_text='id_sasrec/seed-')
            expect_order = sorted(runs, key=lambda seed: -runs[seed]['test']['NDCG@10'])
            deadline = time.monotonic() + BOUND_S
            while time.monotonic() < deadline:
                order = [int(text.strip()[-1]) for text in rows.all_inner_texts() if text.strip()[-1].isdigit()]
                if order == expect_order: break
                page.wait_for_timeout(250)
            assert order == expect_order, (order, {seed: run['test']['NDCG@10'] for seed, run in runs.items()})
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            assert SCREENSHOT.stat().st_size > 20_000
        finally:
            browser.close()
