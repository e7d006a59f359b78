"Hostile input to runs, checkpoints and parameters (issue #10): each case fails fast with a message that says what to do."
import ast, json, os, sys, shutil
from pathlib import Path
import pytest
import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
sys.path.insert(0, str(Path(__file__).parent))
from tiny_data import tiny_mom

TINY = dict(scale=0.1, epochs=1, dim=16, n_layers=1, n_heads=1, max_len=8, text_trainable_blocks=1,
            image_trainable_blocks=1, image_size=32, text_max_tokens=16, batch_size=64, device='cpu', progress=False)
EXPERIMENTS = ('pretrain', 'finetune', 'transfer', 'scaling')


@pytest.fixture
def env(tmp_path, monkeypatch):
    "Data and reports roots of their own (papermill kernels inherit the environment)."
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'data'))
    monkeypatch.setenv('TRANSREC_REPORTS', str(tmp_path/'reports'))
    return tmp_path


def run(nb, out_nb, **params):
    return pm.execute_notebook(str(NBS/f'{nb}.ipynb'), str(out_nb), parameters={**params, 'PAPERMILL_OUTPUT_PATH': str(out_nb)},
                               kernel_name='python3', progress_bar=False, cwd=str(NBS))


# --- class 9: parameter names and ranges ------------------------------------------------------------------------

@pytest.mark.parametrize('params, msg', [
    (dict(epoch=1), "unknown parameter 'epoch' for the pretrain notebook (-p epoch ...): did you mean 'epochs'?"),
    (dict(epochs=0), 'parameter epochs=0: expected an integer in [1, 100000]'),
    (dict(epochs=-1), 'parameter epochs=-1'),
    (dict(lr=-1), 'parameter lr=-1: expected a number in (0, 10]'),
    (dict(image_size=0), 'parameter image_size=0: expected an integer in [16, 2048]'),
])
def test_class9_bad_parameter_names_and_ranges_fail_before_any_work(env, params, msg):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('pretrain', env/'bad.ipynb', **{**TINY, 'out_dir': str(env/'run'), **params})
    assert msg in str(e.value)
    assert not (env/'data').exists() and not (env/'run').exists()       # no data built, no run folder made


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_class9_parameters_cell_declares_exactly_the_library_parameters(experiment):
    from transrec.experiment import EXPERIMENT_PARAMS, NOTEBOOK_NAMES
    nb = NBS/f'{experiment}.ipynb'
    cell = pm.inspect_notebook(str(nb))
    declared = EXPERIMENT_PARAMS[experiment]
    assert set(cell) == set(declared)
    assert {k: ast.literal_eval(v['default']) for k, v in cell.items()} == {k: d for k, (d, _) in declared.items()}
    # the names the notebook's other cells assign are known to experiment_params, and none is a parameter
    cells = json.loads(nb.read_text())['cells']
    assigned = {t.id for c in cells if c['cell_type'] == 'code' and 'parameters' not in c['metadata'].get('tags', [])
                for node in ast.parse(''.join(c['source'])).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert assigned <= set(NOTEBOOK_NAMES) and not set(NOTEBOOK_NAMES) & set(declared)


def test_class9_transfer_methods_default_is_every_method():
    from transrec.experiment import EXPERIMENT_PARAMS, TRANSFER_METHODS, experiment_params
    assert EXPERIMENT_PARAMS['transfer']['methods'][0] == list(TRANSFER_METHODS)
    ns = {k: d for k, (d, _) in EXPERIMENT_PARAMS['transfer'].items()}
    with pytest.raises(ValueError, match="unknown method 'sasrec'"): experiment_params('transfer', {**ns, 'methods': ['sasrec']})
    with pytest.raises(ValueError, match="did you mean 'targets'"): experiment_params('transfer', {**ns, 'target': 'qb_text'})


# --- class 14: nothing written outside the output folder ---------------------------------------------------------

def test_class14_run_outside_the_reports_folder_leaves_its_index_alone(env):
    out = env/'elsewhere'/'run'
    run('pretrain', env/'pop.ipynb', **{**TINY, 'kind': 'popularity', 'out_dir': str(out)})
    assert (out/'metrics.json').exists()
    assert not (env/'reports'/'index.md').exists() and not (env/'elsewhere'/'index.md').exists()


# --- class 10: a changed data set between a kill and the rerun ----------------------------------------------------

def _tiny_run(data, out, **kw):
    from transrec.core import ModelConfig, TrainConfig
    from transrec.experiment import run_experiment
    mc = ModelConfig(kind='id_sasrec', dim=8, n_layers=1, n_heads=1, max_len=6)
    tc = TrainConfig(epochs=2, batch_size=8, device='cpu', amp='none', warmup_steps=0, **kw)
    return run_experiment(str(data), out, mc, tc, experiment='pretrain', params=dict(source=str(data), epochs=2),
                          progress=False)


def test_class10_resume_refuses_a_replaced_data_folder(tmp_path):
    data, out = tmp_path/'data', tmp_path/'run'
    tiny_mom(data, seed=0, n_users=12)
    first = _tiny_run(data, out, max_steps=2)                     # stands for a run killed after its first checkpoint
    assert json.loads((out/'run.json').read_text())['data']['users'] == 12
    shutil.rmtree(data); tiny_mom(data, seed=1, n_users=14)        # the folder now holds another data set
    with pytest.raises(ValueError) as e: _tiny_run(data, out, max_steps=2)
    msg = str(e.value)
    assert str(out) in msg and str(data.resolve()) in msg and '-p resume fresh' in msg
    assert 'users 12 -> 14' in msg and 'interactions.tsv content' in msg
    assert json.loads((out/'metrics.json').read_text())['data']['users'] == first['data']['users'] == 12   # untouched


# --- class 11: damaged checkpoints, image weights and init models -------------------------------------------------

def test_class11_truncated_checkpoint_falls_back_then_says_resume_fresh(tmp_path, caplog):
    data, out = tmp_path/'data', tmp_path/'run'
    tiny_mom(data, seed=0, n_users=12)
    _tiny_run(data, out)                                           # two epochs: checkpoints step-2 and step-4
    ck = out/'checkpoints'
    steps = sorted(p.name for p in ck.glob('step-*'))
    assert len(steps) == 2
    f = ck/steps[-1]/'model.safetensors'; f.write_bytes(f.read_bytes()[:64])
    m = _tiny_run(data, out)                                       # resumes from the previous good checkpoint
    assert any('cannot be loaded' in r.message and steps[-1] in r.message for r in caplog.records)
    assert len(m['history']) == 2 and any(p.name.startswith(f'broken-{steps[-1]}') for p in ck.iterdir())
    for p in ck.glob('step-*'): (p/'state.pt').write_bytes(b'not a torch file')
    with pytest.raises(ValueError) as e: _tiny_run(data, out)
    assert 'state.pt is unreadable' in str(e.value) and '-p resume fresh' in str(e.value) and str(ck) in str(e.value)


def test_class11_garbage_image_weights_and_corrupt_init_are_named(tmp_path):
    from transrec.core import ModelConfig
    from transrec.encoders import ImageEncoder
    from transrec.experiment import check_init
    from transrec.model import build_model, save_model
    junk = tmp_path/'w.pth'; junk.write_bytes(b'\x80\x02}q\x00garbage')
    with pytest.raises(ValueError) as e: ImageEncoder(ModelConfig(dim=8, image_weights=str(junk)))
    assert str(junk) in str(e.value) and 'state_dict' in str(e.value)
    model_dir = save_model(build_model(ModelConfig(kind='popularity')), tmp_path/'best')
    f = model_dir/'model.safetensors'; f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ValueError) as e: check_init(str(model_dir))
    assert str(f) in str(e.value) and 'init=' in str(e.value)


# --- issue #11: fine-tuning parameters honoured or refused ---------------------------------------------------------

def test_finetune_refuses_an_architecture_parameter_that_differs_from_init(env):
    "`-p dim 32` with a dim-16 checkpoint stops the notebook before any work, naming the parameter."
    from transrec.core import ModelConfig
    from transrec.model import build_model, save_model
    cfg = ModelConfig(kind='id_sasrec', dim=16, n_layers=1, n_heads=1, max_len=8, image_size=32, text_max_tokens=16, n_items=5)
    save_model(build_model(cfg), env/'pre'/'best')
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('finetune', env/'ft.ipynb', **{**TINY, 'init': str(env/'pre'/'best'), 'dim': 32, 'out_dir': str(env/'run')})
    assert 'dim=32 (checkpoint: 16)' in str(e.value) and "init='scratch'" in str(e.value)
    assert 'image_size' not in str(e.value) and 'text_trainable_blocks' not in str(e.value)   # equal or training-time
    assert not (env/'data').exists() and not (env/'run').exists()       # no data built, no run folder made
