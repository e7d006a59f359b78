"""The documentation: README.md is generated from nbs/index.ipynb, and the site built from the chapters documents
the exported API; headless Chromium opens the model chapter's page and finds `UserTower` documented there. Chapters
executed for the site show their outputs, and their plotly figures draw with no network."""
import html, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT/'.ci'/'build_docs.py'
CHROMIUM = next((p for p in (shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome')) if p), None)


def test_readme_is_generated_from_index():
    assert (ROOT/'nbs'/'index.ipynb').exists()
    r = subprocess.run([sys.executable, str(BUILD), '--check-readme'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    readme = (ROOT/'README.md').read_text()
    assert readme.startswith('# TransRec Workbench\n') and '## Quick start' in readme and 'transrec-explore' in readme


def chromium_dom(page: Path, profile: Path) -> str:
    "The page's DOM after its scripts ran, with the network shut off (every host unresolvable, a dead proxy)."
    return subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                           f'--user-data-dir={profile}', '--host-resolver-rules=MAP * ~NOTFOUND',
                           '--proxy-server=127.0.0.1:9', '--virtual-time-budget=10000', '--dump-dom', page.as_uri()],
                          capture_output=True, text=True, timeout=60).stdout   # about 4 s


@pytest.mark.browser
def test_site_documents_the_api_and_renders_formulas_offline(tmp_path):
    if CHROMIUM is None:
        if os.environ.get('CI', '').lower() == 'true': pytest.fail('headless Chromium is missing in CI (.ci/setup --browser)')
        pytest.skip('headless Chromium not installed (Debian: apt-get install -y chromium)')
    site, readme = tmp_path/'site', (ROOT/'README.md').read_bytes()
    r = subprocess.run([sys.executable, str(BUILD), '--only', '06_model', '07_metrics', '--out', str(site), '--no-execute'],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site/'index.html').exists() and (site/'mathjax'/'MathJax.js').exists()
    assert (ROOT/'README.md').read_bytes() == readme                                 # --out leaves README.md alone
    for page in site.glob('*.html'):                                                 # nothing from the web
        assert not re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//', page.read_text()), page
    dom = chromium_dom(site/'06_model.html', tmp_path/'profile')
    heading = re.search(r'<h3[^>]*id="UserTower"[^>]*>UserTower', dom)
    assert heading, 'no API heading for UserTower on the model page'
    after = dom[heading.end():heading.end() + 4000]
    assert 'cfg:ModelConfig' in re.sub(r'<[^>]+>', '', after), after             # the signature, rendered by show_doc
    assert 'left-padded history' in after and 'position embeddings' in after         # the docstring
    nav = re.search(r'<nav class="trx-docs-nav".*?</nav>', dom, re.S).group(0)
    assert re.search(r'<a href="index.html"[^>]*><b>TransRec Workbench</b></a>', nav)  # the front page, by its title
    assert nav.count('TransRec Workbench') == 1 and nav.count('>Metrics<') == 1, nav   # each title once
    # the metrics chapter's formulas (a displayed rank formula, inline ones), typeset by MathJax with no network
    math = chromium_dom(site/'07_metrics.html', tmp_path/'profile2')
    sources = len(re.findall(r'<script type="math/tex', math))
    rendered = len(re.findall(r'<span class="MathJax" id="MathJax-Element-\d+-Frame"', math))
    assert sources >= 5 and rendered == sources, (sources, rendered)
    assert 'class="MathJax_Display"' in math and 'class="MathJax_Error"' not in math
    assert 'Math Processing Error' not in math


@pytest.fixture(scope='module')
def executed_site(tmp_path_factory):
    "The metrics and dashboard chapters executed and built (about a minute): printed values, tables, plotly figures."
    site = tmp_path_factory.mktemp('executed')/'site'
    r = subprocess.run([sys.executable, str(BUILD), '--only', '07_metrics', '10_dashboard', '--out', str(site)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '[docs] executed 07_metrics.ipynb' in r.stdout and '[docs] executed 10_dashboard.ipynb' in r.stdout, r.stdout
    return site


def rendered_texts(page: Path) -> list[str]:
    "The text outputs (printed values, reprs) a page shows under its cells."
    return [html.unescape(text) for text in
            re.findall(r'<div class="jp-RenderedText[^"]*"[^>]*>\s*<pre>(.*?)</pre>', page.read_text(), re.S)]


def test_executed_chapters_show_their_outputs(executed_site):
    texts = rendered_texts(executed_site/'07_metrics.html')
    # the chapter's worked example: metrics of a list of ranks, printed as a dict (stored notebooks hold no outputs)
    assert any(text.startswith("{'HR@5': ") and "'NDCG@10': " in text for text in texts), texts[:5]
    dashboard = (executed_site/'10_dashboard.html').read_text()
    assert dashboard.count('Plotly.newPlot') >= 1 and '<script src="plotly.min.js"></script>' in dashboard
    assert (executed_site/'plotly.min.js').stat().st_size > 1_000_000                   # the library, in the site
    assert 'application/vnd.jupyter.widget-view+json' not in dashboard                   # widgets: their text form
    for page in executed_site.glob('*.html'):                                             # nothing from the web
        assert not re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//', page.read_text()), page


@pytest.mark.browser
def test_executed_plotly_figures_draw_offline(executed_site, tmp_path):
    if CHROMIUM is None:
        if os.environ.get('CI', '').lower() == 'true': pytest.fail('headless Chromium is missing in CI (.ci/setup --browser)')
        pytest.skip('headless Chromium not installed (Debian: apt-get install -y chromium)')
    dom = chromium_dom(executed_site/'10_dashboard.html', tmp_path/'profile')
    figures = len(re.findall(r'class="[^"]*plotly-graph-div', dom))
    assert figures >= 1 and dom.count('class="main-svg"') >= figures, figures           # plotly drew each figure
