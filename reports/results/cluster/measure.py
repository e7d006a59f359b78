"""Wall time of a small transfer study with workers=1 and workers=2 (transrec.cluster), and the projected wall
time of the full 3-seed study on G GPUs from its measured per-run times.

    cd /work/wt-dask && OMP_NUM_THREADS=1 nice -n 15 python reports/results/cluster/measure.py OUT_ROOT

OUT_ROOT receives the study folders and the synthetic worlds; this folder receives wall_times.json,
progress-2-workers.txt and projection.json. Every run uses one thread (train threads=1), so workers=2 uses
two cores where workers=1 uses one; the machine is shared (load averages are recorded)."""
import contextlib, io, json, os, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODEL = dict(dim=32, n_layers=1, n_heads=1, max_len=10, image_size=32, text_max_tokens=16,
             text_trainable_blocks=0, image_trainable_blocks=0)     # the shared small models' settings
PRETRAIN = dict(seed=0, device='cpu', scale=1.0, data_seed=0, preset='workbench', progress=False, model=MODEL,
                train=dict(batch_size=64, warmup_steps=10, amp='none', num_workers=0, threads=1, epochs=3,
                           patience=3))
FINETUNE = dict(PRETRAIN, train=dict(batch_size=16, lr=3e-3, warmup_steps=5, epochs=3, amp='none',
                                     num_workers=0, threads=1))
GRID = dict(targets=['qb_text', 'nc_mixed'],
            methods=['transrec', 'transrec-pretrained', 'id_sasrec', 'frozen', 'popularity'],
            target_fraction=0.1, seeds=2)


def study(out, workers, **grid):
    from transrec.study import transfer_study
    return transfer_study(out, 'qb_mixed', pretrain_params=PRETRAIN, finetune_params=FINETUNE,
                          workers=workers, **{**GRID, **grid})


def pretrain_times(summary) -> dict:
    "{seed: wall time} of a transfer study's own pre-trainings (their metrics.json next to best/)."
    return {seed: json.loads((Path(best).parent/'metrics.json').read_text())['wall_time_s']
            for seed, best in summary['pretrained'].items()}


def list_schedule(pretrain_s: dict, finetune_s: dict, gpus: int) -> float:
    """Wall time of the transfer graph on `gpus` machines, one run each, greedy in the study's order: a seed's
    fine-tunes start after its pre-training (`finetune_s`: {(seed, key): seconds})."""
    free = [0.0] * gpus
    ready = {}
    for seed, seconds in pretrain_s.items():
        i = min(range(gpus), key=free.__getitem__)
        free[i] += seconds
        ready[seed] = free[i]
    for (seed, _), seconds in finetune_s.items():
        i = min(range(gpus), key=free.__getitem__)
        free[i] = max(free[i], ready.get(seed, 0.0)) + seconds
    return max(free)


def projection() -> dict:
    "The full 3-seed transfer study (reports/results/transfer) on G GPUs from its runs' measured times."
    summary = json.loads((ROOT/'reports/results/transfer/summary.json').read_text())
    pretrain_s = {seed: json.loads((ROOT/f'reports/results/pretrain/workbench-seed-{seed}.metrics.json')
                                   .read_text())['wall_time_s'] for seed in summary['seeds']}
    finetune_s = {(int(key.rsplit('seed-', 1)[1]), key): run['wall_time_s']
                  for key, run in summary['runs'].items()}
    total = sum(pretrain_s.values()) + sum(finetune_s.values())
    return dict(runs=len(pretrain_s) + len(finetune_s), run_hours=total / 3600,
                pretrain_s=pretrain_s, longest_finetune_s=max(finetune_s.values()),
                projected_hours={gpus: list_schedule(pretrain_s, finetune_s, gpus) / 3600
                                 for gpus in (1, 2, 4, 8, 16)})


def main(out_root):
    out_root = Path(out_root)
    os.environ['TRANSREC_DATA'] = str(out_root/'data')
    os.environ['TRANSREC_REPORTS'] = str(out_root)
    os.chdir(ROOT/'nbs')                             # run_or_reuse finds the experiment notebooks here
    warm = time.time()                               # builds the synthetic worlds outside the timings
    study(out_root/'warm-up', 1, methods=['transrec-pretrained', 'popularity'], seeds=1)
    record = dict(grid=GRID, pretrain=PRETRAIN, finetune=FINETUNE, warm_up_s=time.time() - warm,
                  cores=os.cpu_count(), studies={})
    for workers in (1, 2):
        load_before = os.getloadavg()
        start, err = time.time(), io.StringIO()
        with contextlib.redirect_stderr(err): summary = study(out_root/f'workers-{workers}', workers)
        wall = time.time() - start
        run_s = {key: run['wall_time_s'] for key, run in summary['runs'].items()}
        record['studies'][workers] = dict(wall_time_s=wall, load_before=load_before,
                                          load_after=os.getloadavg(),
                                          runs=len(run_s) + len(summary['pretrained']),
                                          finetune_run_s=run_s, pretrain_run_s=pretrain_times(summary),
                                          failed=summary['failed'])
        if workers == 2:
            (HERE/'progress-2-workers.txt').write_text(err.getvalue().replace('\r', '\n'))
        print(f'workers={workers}: {wall:.0f} s', flush=True)
    one, two = record['studies'][1], record['studies'][2]
    record['speedup'] = one['wall_time_s'] / two['wall_time_s']
    test_of = lambda workers, key: json.loads(
        (out_root/f'workers-{workers}'/key/'metrics.json').read_text())['test']
    same = all(test_of(1, key) == test_of(2, key) for key in summary['runs'])
    record['same_test_metrics'] = same
    (HERE/'wall_times.json').write_text(json.dumps(record, indent=2))
    (HERE/'projection.json').write_text(json.dumps(projection(), indent=2))
    print(f"speed-up {record['speedup']:.2f}, same test metrics: {same}")


if __name__ == '__main__':
    main(sys.argv[1])
