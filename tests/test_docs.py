"""The documentation: README.md is generated from nbs/index.ipynb, and the site built from the chapters documents
the exported API; headless Chromium opens the model chapter's page and finds `UserTower` documented there."""
import os, re, shutil, subprocess, sys
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


@pytest.mark.browser
def test_model_page_documents_user_tower(tmp_path):
    if CHROMIUM is None:
        if os.environ.get('CI', '').lower() == 'true': pytest.fail('headless Chromium is missing in CI (.ci/setup --browser)')
        pytest.skip('headless Chromium not installed (Debian: apt-get install -y chromium)')
    site = tmp_path/'site'
    r = subprocess.run([sys.executable, str(BUILD), '--only', '06_model', '--out', str(site)], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site/'index.html').exists()
    dom = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                          f'--user-data-dir={tmp_path/"profile"}', '--dump-dom', (site/'06_model.html').as_uri()],
                         capture_output=True, text=True, timeout=60).stdout   # about 3 s
    heading = re.search(r'<h3[^>]*id="UserTower"[^>]*>UserTower', dom)
    assert heading, 'no API heading for UserTower on the model page'
    after = dom[heading.end():heading.end() + 4000]
    assert 'cfg:ModelConfig' in re.sub(r'<[^>]+>', '', after), after             # the signature, rendered by show_doc
    assert 'left-padded history' in after and 'position embeddings' in after         # the docstring
    assert re.search(r'<a href="index.html"[^>]*>TransRec Workbench</a>', dom)      # navigation to the front page
