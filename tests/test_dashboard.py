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


def test_cli_warns_when_the_named_data_set_is_other_data(tmp_path, monkeypatch, capsys):
    "The issue's case: a model trained on qb_mixed at one scale, explored on qb_mixed built at another."
    from transrec.data import write_data_record
    from transrec.sources import load_source
    torch.set_num_threads(1)
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'data'))
    trained_on = load_source('qb_mixed', scale=0.05)
    seed_everything(0)
    best = tmp_path/'pretrain-qb_mixed'/'best'
    save_model(build_model(ModelConfig(**TINY_CFG), trained_on), best)
    write_data_record(best, trained_on, 'qb_mixed')
    page = tmp_path/'page.html'
    common = ['--model', str(best.parent), '--data', 'qb_mixed', '--users', '2', '--k', '3',
              '--out', str(page)]
    assert dash.main([*common, '--scale', '0.05']) == 0                  # the same build: not a word
    assert 'warning' not in capsys.readouterr().err and 'WARNING' not in page.read_text()
    assert dash.main([*common, '--scale', '0.02']) == 0                  # another build of the same name
    err = capsys.readouterr().err
    assert 'transrec-explore: warning: pretrain-qb_mixed: the model in' in err, err
    assert 'synthetic scale 0.05 -> 0.02' in err and 'qb_mixed-scale0.05-seed0' in err, err
    assert 'qb_mixed-scale0.02-seed0' in err, err
    assert 'WARNING: pretrain-qb_mixed: the model in' in page.read_text()


def test_cli_shows_held_out_users_of_a_fine_tuned_run(world, tmp_path, capsys):
    from transrec.experiment import write_per_user
    ds = load_dataset(world['dir']/'tiny')
    run = tmp_path/'finetune-tiny'
    save_model(world['models']['scratch'], run/'best')
    held_out = [str(u) for u in ds.user_ids[:2]]
    write_per_user(run, ds.user_ids, [1] * ds.n_users, ['cold'] * 2 + ['warm'] * (ds.n_users - 2))
    def shown(*extra):
        out = tmp_path/'users.html'
        assert dash.main(['--model', str(run/'best'), '--data', str(world['dir']/'tiny'), '--users', '50',
                          '--out', str(out), *extra]) == 0
        return re.findall(r'<section class="trx-user" data-user="([^"]+)"', out.read_text())
    assert shown() == held_out                                           # held-out users by default
    assert sorted(shown('--show-users', 'fine-tune')) == sorted(set(map(str, ds.user_ids)) - set(held_out))
    assert len(shown('--show-users', 'all')) == ds.n_users
