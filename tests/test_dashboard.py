"""Integration tests of transrec.dashboard: the console command end to end on saved models (model.save_model ->
the CLI loads both folders and the data set -> the static page), and the live explorer's notebook
(nbs/explore.ipynb) run by papermill. Unit behaviour of the explorer and the page is tested in
nbs/10_dashboard.ipynb."""
import json, re
from pathlib import Path
import pytest
import torch

from transrec.core import ModelConfig, seed_everything
from transrec.data import load_dataset, tiny_mom
from transrec.model import build_model, save_model
import transrec.dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = dict(dim=32, text_trainable_blocks=1, image_trainable_blocks=1, image_size=32, n_layers=1, n_heads=2,
                max_len=8, text_max_tokens=16)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('dash')
    ds = load_dataset(tiny_mom(d/'tiny', n_image=9, image_wh=(20, 20), seq_len=(4, 10)))
    cfg = ModelConfig(**TINY_CFG)
    seed_everything(0)
    a = build_model(cfg, ds)
    seed_everything(1)
    b = build_model(cfg, ds)
    return dict(dir=d, models={'pretrained': a, 'scratch': b})


def test_cli_export_two_models(world, tmp_path, capsys):
    a, b = tmp_path/'pretrain-x'/'best', tmp_path/'scratch-x'/'best'
    save_model(world['models']['pretrained'], a)
    save_model(world['models']['scratch'], b)
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
    a = tmp_path/'m'/'best'
    save_model(world['models']['pretrained'], a)
    out = tmp_path/'explore.html'
    pm.execute_notebook(str(ROOT/'nbs'/'explore.ipynb'), str(tmp_path/'explore.ipynb'), kernel_name='python3',
                        progress_bar=False, cwd=str(ROOT/'nbs'),
                        parameters=dict(model_dir=str(a.parent), data=str(world['dir']/'tiny'), n_users=2, k=3, out_html=str(out)))
    assert len(re.findall(r'<section class="trx-user"', out.read_text())) == 2
    nb = json.loads((tmp_path/'explore.ipynb').read_text())
    text = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'user switch over' in text and 'median' in text
