"""The README's first command, `bash .ci/quickstart`, run as a user runs it (tiny: a tenth of the data, one
epoch) in a copy of the project, so that the front door cannot break without a test failing. It reuses this
checkout's `.venv` (the setup step finds it installed and returns at once)."""
import json, os, shutil, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_copy(dest: Path) -> Path:
    "The files git tracks (or would track), mtimes kept, and a link to this checkout's .venv."
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        source = ROOT/name
        if source.is_file():
            (dest/name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest/name)
    (dest/'.venv').symlink_to(ROOT/'.venv')
    return dest


def installed_package_dir() -> Path:
    "Where this checkout's .venv imports `transrec` from (an editable install points at one project folder)."
    found = subprocess.run([str(ROOT/'.venv'/'bin'/'python'), '-c', 'import transrec; print(transrec.__file__)'],
                           cwd='/', capture_output=True, text=True, check=True).stdout
    return Path(found.strip()).parent


def test_quickstart_trains_the_default_model_and_reports_progress(tmp_path):
    # The copy shares this checkout's .venv. Bring it up to date here first (at once when it is), so that the
    # copy's setup step finds it installed: installing from the copy would point the editable install and the
    # kernelspec at a folder that is deleted after the test.
    subprocess.run(['bash', '.ci/setup'], cwd=ROOT, check=True, capture_output=True)
    project = project_copy(tmp_path/'project')
    env = {**os.environ, 'TRANSREC_DATA': str(project/'data'), 'TRANSREC_REPORTS': str(project/'reports'),
           'QUICKSTART_EVERY': '5'}
    done = subprocess.run(['bash', '.ci/quickstart', '-p', 'scale', '0.1', '-y', 'train: {epochs: 1}'],
                          cwd=project, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert '[quickstart] pre-training on qb_mixed' in output and 'Done: see reports/pretrain-qb_mixed/' in output
    assert '[quickstart]' in output.split('pre-training on qb_mixed', 1)[1]      # the watcher spoke while it ran
    metrics = json.loads((project/'reports'/'pretrain-qb_mixed'/'metrics.json').read_text())
    assert metrics['params']['source'] == 'qb_mixed' and metrics['test']['NDCG@10'] >= 0
    assert (project/'reports'/'pretrain-qb_mixed.ipynb').exists() and (project/'reports'/'index.md').exists()
    assert installed_package_dir() == ROOT/'transrec'                           # the .venv is still ours
