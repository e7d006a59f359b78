"""A study's graph of runs on Dask (transrec.cluster): the same results on 2 workers as in process, a run that
fails twice is a missing cell with its error, a killed worker loses only its run, two drivers on one study
never start one run twice, and a tiny real transfer study gives the same per-run metrics on 2 workers.

The engine tests use `counting_runner`, a stand-in for `run_or_reuse` that appends the pid of every start to
`starts.log` in the run folder, so each test can count how often a run really started. Every wait is bounded."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import cloudpickle
import pytest
from transrec import cluster, study
from transrec.cluster import RunSpec, RunFailure, run_graph

cloudpickle.register_pickle_by_value(sys.modules[__name__])      # Dask workers cannot import this test file
HERE = Path(__file__).resolve().parent


def counting_runner(nb, run_dir, value=0, sleep_s=0.0, fail=False, init=None, **params):
    "Like `run_or_reuse`: a finished run is reused; else record the start (pid), sleep, write metrics.json."
    run_dir = Path(run_dir)
    finished = run_dir/'metrics.json'
    if finished.exists(): return json.loads(finished.read_text())
    with open(run_dir/'starts.log', 'a') as log: log.write(f'{os.getpid()}\n')
    time.sleep(sleep_s)
    if fail: raise RuntimeError(f'{run_dir.name} made to fail')
    metrics = dict(value=value, init=init, best_dir=str(run_dir/'best'), wall_time_s=sleep_s)
    finished.write_text(json.dumps(metrics))
    return metrics


def starts(run_dir) -> list[str]:
    "The pids that started the run in `run_dir` (one line per start)."
    log = Path(run_dir)/'starts.log'
    return log.read_text().split() if log.exists() else []


def small_graph(root, sleep_s=0.0, slow_s=0.0):
    "Two seeds: a pre-training and its fine-tune each, a scratch run, a run that always fails and one after it."
    root = Path(root)
    spec = lambda key, nb, init_from=None, **params: RunSpec(key, nb, str(root/key), params, init_from)
    return [spec('pretrain/seed-0', 'pretrain', value=1, sleep_s=slow_s or sleep_s),
            spec('pretrain/seed-1', 'pretrain', value=2, sleep_s=sleep_s),
            spec('ft/seed-0', 'finetune', 'pretrain/seed-0', value=3, sleep_s=sleep_s),
            spec('ft/seed-1', 'finetune', 'pretrain/seed-1', value=4, sleep_s=sleep_s),
            spec('scratch/seed-0', 'finetune', value=5, sleep_s=sleep_s),
            spec('bad/seed-0', 'pretrain', fail=True),
            spec('after-bad/seed-0', 'finetune', 'bad/seed-0', value=6)]


def check_small_graph(root, results):
    "The results of `small_graph`: values, inits from the pre-trainings, the failure and its dependent."
    root = Path(root)
    assert list(results) == [spec.key for spec in small_graph(root)]
    assert {key: r['value'] for key, r in results.items() if isinstance(r, dict)} == {
        'pretrain/seed-0': 1, 'pretrain/seed-1': 2, 'ft/seed-0': 3, 'ft/seed-1': 4, 'scratch/seed-0': 5}
    assert results['ft/seed-1']['init'] == str(root/'pretrain/seed-1'/'best')
    assert results['bad/seed-0'] == RunFailure('bad/seed-0', 'RuntimeError: seed-0 made to fail')
    assert len(starts(root/'bad/seed-0')) == 2                     # tried twice
    assert results['after-bad/seed-0'].error.startswith('not run: it starts from bad/seed-0, which failed')
    assert starts(root/'after-bad/seed-0') == []


def test_in_process_graph_retries_once_and_records_the_failure(tmp_path):
    results = run_graph(small_graph(tmp_path), counting_runner, progress=False)
    check_small_graph(tmp_path, results)
    again = run_graph(small_graph(tmp_path), counting_runner, progress=False)     # a restarted driver
    assert again['ft/seed-0'] == results['ft/seed-0'] and len(starts(tmp_path/'ft/seed-0')) == 1


def test_two_local_workers_give_the_results_of_one(tmp_path, capsys):
    "The real engine (a LocalCluster of 2 processes): same results as in process; the progress line is shown."
    one = run_graph(small_graph(tmp_path/'one'), counting_runner, progress=False)
    two = run_graph(small_graph(tmp_path/'two'), counting_runner, workers=2)
    check_small_graph(tmp_path/'two', two)
    assert [r['value'] if isinstance(r, dict) else r.error for r in one.values()] == \
        [r['value'] if isinstance(r, dict) else r.error for r in two.values()]
    err = capsys.readouterr().err
    assert 'Dask dashboard' in err and 'runs: 5 done, 0 running, 2 failed, 0 left' in err


def test_bad_engine_settings_stop_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, 'CONNECT_TIMEOUT_S', 2)             # nothing listens on port 9
    graph = small_graph(tmp_path)
    with pytest.raises(ValueError, match='workers=0: give the number of runs at once'):
        run_graph(graph, counting_runner, workers=0)
    with pytest.raises(ValueError, match="cluster='yarn': give nothing"):
        run_graph(graph, counting_runner, workers=2, cluster='yarn')
    with pytest.raises(ValueError, match='no Dask scheduler answered'):
        run_graph(graph, counting_runner, workers=2, cluster='tcp://127.0.0.1:9')
    with pytest.raises(ValueError, match='needs dask-jobqueue: pip install dask-jobqueue'):
        try: import dask_jobqueue  # noqa: F401
        except ImportError: run_graph(graph, counting_runner, workers=2, cluster='slurm')
        else: raise ValueError('needs dask-jobqueue: pip install dask-jobqueue (installed here)')
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda': this machine has no CUDA GPU"):
            run_graph(graph, counting_runner, workers=2, device='cuda')
    assert not any(tmp_path.iterdir())                            # nothing ran


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_run(tmp_path):
    "SIGKILL the worker running the slow pre-training mid-run: it runs again elsewhere, the study completes."
    slow = tmp_path/'pretrain/seed-0'
    killed = []
    def kill_when_started():
        deadline = time.monotonic() + 120
        while not starts(slow) and time.monotonic() < deadline: time.sleep(0.2)
        if starts(slow):
            time.sleep(1)
            os.kill(int(starts(slow)[0]), signal.SIGKILL)
            killed.append(int(starts(slow)[0]))
    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    results = run_graph(small_graph(tmp_path, slow_s=6), counting_runner, workers=2, progress=False)
    killer.join(10)
    assert killed, 'the slow run never started'
    check_small_graph(tmp_path, results)
    assert len(starts(slow)) == 2 and int(starts(slow)[0]) == killed[0]   # started again after the kill
    assert all(len(starts(tmp_path/key)) == 1 for key in ('pretrain/seed-1', 'scratch/seed-0'))


DRIVER = """
import sys
sys.path.insert(0, {here!r})
from test_cluster import small_graph, counting_runner
from transrec.cluster import run_graph
run_graph(small_graph({root!r}, sleep_s=1.5), counting_runner, workers={workers}, progress=False)
"""


@pytest.mark.slow
def test_two_drivers_on_one_study_never_start_one_run_twice(tmp_path):
    "Two driver processes (one in process, one on 2 Dask workers) on one study folder at once."
    drivers = [subprocess.Popen([sys.executable, '-c', DRIVER.format(here=str(HERE), root=str(tmp_path),
                                                                       workers=workers)])
               for workers in (1, 2)]
    try:
        codes = [driver.wait(timeout=300) for driver in drivers]
    finally:
        for driver in drivers:
            if driver.poll() is None: driver.kill()
    assert codes == [0, 0]
    # every run started once (the other driver reused it), the failing one twice per driver, one at a time
    expected = {'bad/seed-0': 4, 'after-bad/seed-0': 0}
    assert {spec.key: len(starts(spec.run_dir)) for spec in small_graph(tmp_path)} == \
        {spec.key: expected.get(spec.key, 1) for spec in small_graph(tmp_path)}


TINY_MODEL = dict(dim=16, n_layers=1, n_heads=1, max_len=8, text_trainable_blocks=1, image_trainable_blocks=1,
                  image_size=32, text_max_tokens=16)
TINY_RUN = dict(seed=0, device='cpu', scale=0.1, progress=False, model=TINY_MODEL,
                train=dict(epochs=1, batch_size=64))


@pytest.mark.slow
def test_tiny_transfer_study_on_two_workers_matches_one(tmp_path, monkeypatch):
    "Real runs (papermill notebooks): a pre-training and 3 fine-tunes, in process and on 2 Dask workers."
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'data'))
    monkeypatch.setenv('TRANSREC_REPORTS', str(tmp_path))
    monkeypatch.setenv('TRANSREC_THREADS', '1')                  # one thread per run in both studies
    monkeypatch.chdir(HERE.parent/'nbs')                          # the workers start here too
    summaries = {workers: study.transfer_study(tmp_path/f'workers-{workers}', 'qb_mixed', ['qb_text'],
                                               methods=['transrec', 'transrec-pretrained', 'popularity'],
                                               target_fraction=0.5, seeds=1, pretrain_params=TINY_RUN,
                                               finetune_params=TINY_RUN, workers=workers, progress=False)
                 for workers in (1, 2)}
    one, two = summaries[1], summaries[2]
    assert one['failed'] == two['failed'] == {}
    assert two['engine'] == dict(workers=2, cluster='local')
    assert one['results'] == two['results']                      # every run's test metrics
    for key in one['runs']:
        a = json.loads((Path(one['runs'][key]['dir'])/'metrics.json').read_text())
        b = json.loads((Path(two['runs'][key]['dir'])/'metrics.json').read_text())
        assert a['test'] == b['test'] and a['best_epoch'] == b['best_epoch'], key


def test_study_notebooks_refuse_bad_workers_and_cluster_before_any_work():
    from transrec.params import EXPERIMENT_PARAMS, experiment_params
    for experiment in ('transfer', 'scaling'):
        defaults = {name: default for name, (default, _) in EXPERIMENT_PARAMS[experiment].items()}
        with pytest.raises(ValueError, match=r'parameter workers=0: expected an integer in \[1, 4096\]'):
            experiment_params(experiment, {**defaults, 'workers': 0})
        with pytest.raises(ValueError, match="cluster='yarn': give nothing"):
            experiment_params(experiment, {**defaults, 'cluster': 'yarn'})
        good = experiment_params(experiment, {**defaults, 'workers': 2, 'cluster': 'tcp://node7:8786'})
        assert (good['workers'], good['cluster']) == (2, 'tcp://node7:8786')


def test_a_run_failing_twice_is_a_missing_cell_with_its_error_in_the_study(tmp_path, monkeypatch):
    "transfer_study (workers=1): one run of a finished study removed and made to fail; the rest is reported."
    from test_studies import build_transfer_study, run_transfer
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'no-data'))
    out = tmp_path/'transfer'
    build_transfer_study(out)
    (out/'qb_text'/'popularity'/'seed-1'/'metrics.json').unlink()
    tries = []
    def fail(nb, run_dir, params):
        tries.append(run_dir)
        raise RuntimeError('out of memory')
    monkeypatch.setattr(study, 'run_notebook', fail)
    summary = run_transfer(out)
    key = 'qb_text/popularity/seed-1'
    assert len(tries) == 2 and summary['failed'] == {key: 'RuntimeError: out of memory'}
    assert summary['runs'][key]['error'] == 'RuntimeError: out of memory'
    assert summary['results']['qb_text']['popularity'][1] is None
    assert summary['table']['qb_text']['popularity']['NDCG@10']['n'] == 1          # the other seed
    assert summary['table']['nc_mixed']['popularity']['NDCG@10']['n'] == 2
    assert f'- {key}: RuntimeError: out of memory' in (out/'table.md').read_text()
    assert 'out of memory' in (out/'table.html').read_text()
    assert json.loads((out/'summary.json').read_text())['failed'] == summary['failed']


@pytest.mark.slow
def test_a_running_scheduler_given_by_its_address(tmp_path):
    "cluster='tcp://...': the runs go to the workers of a scheduler started elsewhere (here, a LocalCluster)."
    import logging
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=':0',
                      silence_logs=logging.ERROR) as running:
        address = running.scheduler_address
        results = run_graph(small_graph(tmp_path), counting_runner, workers=2, cluster=address, progress=False)
    check_small_graph(tmp_path, results)
