"""Exact DDP: 2 gloo processes on CPU give the loss and the gradients of one process on the whole global
batch, for both losses (in-batch softmax with all-gathered candidates, BCE) and both readouts."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, pandas as pd, pytest, torch

from transrec.core import ModelConfig, TrainConfig
from transrec.data import tiny_mom, load_dataset
from transrec.batches import train_batches
from transrec.encoders import make_content
from transrec.model import build_model, train_seq_len, train_stride
from transrec import train as T

torch.set_num_threads(1)
TOL = 1e-5
GLOBAL_BATCH = 8
CASES = [(loss, readout) for loss in ('softmax', 'bce') for readout in ('causal', 'last')]


def make_data(path, n_users=12, n_items=40, seed=0):
    "Users of 5-12 distinct items of 40: the halves of a batch share some items (on both ranks), not all."
    return load_dataset(tiny_mom(path, n_text=n_items, n_image=0, n_users=n_users, seed=seed, seq_len=(5, 13)))


def model_cfg(ds, loss, readout):
    return ModelConfig(kind='id_sasrec', loss=loss, readout=readout, dim=16, n_layers=1, n_heads=2, max_len=4,
                       n_pos=2, n_neg=2, dropout=0.0, n_items=ds.n_items)


def first_batch(ds, cfg, rank=0, world_size=1):
    n_neg = cfg.n_neg if cfg.loss == 'bce' else 0
    return next(iter(train_batches(ds, GLOBAL_BATCH, train_seq_len(cfg), n_neg, seed=0, epoch=0, rank=rank,
                                   world_size=world_size, stride=train_stride(cfg))))


def one_step(ds, cfg, di, out_dir, batch) -> dict:
    "The trainer's own optimiser step (DDP, loss weighting, all-gather) on `batch`: loss and every gradient."
    torch.manual_seed(0)
    model = build_model(cfg, ds)
    tcfg = TrainConfig(batch_size=GLOBAL_BATCH, device='cpu', amp='none', clip_grad=None, seed=0,
                       warmup_steps=0)
    mlog = T.MetricsLog(out_dir/'m.jsonl', enabled=False)
    run = T.TrainingRun(model, ds, tcfg, out_dir, make_content(cfg, ds), di, mlog, progress=False)
    run.start(resume=False)
    loss, rows, _ = run.optimiser_step([batch])
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads = {f'grad.{n}': g for n, g in grads.items()}
    return dict(loss=torch.tensor(loss), rows=torch.tensor(rows), **grads)


def _worker(rank, world, init_file, data_path, out, result_file):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        ds, di = load_dataset(data_path), T.init_distributed('cpu')
        results = {}
        for loss, readout in CASES:
            cfg = model_cfg(ds, loss, readout)
            batch = first_batch(ds, cfg, rank, world)
            res = one_step(ds, cfg, di, out/f'{loss}-{readout}-{rank}', batch)
            results.update({f'{loss}/{readout}/{k}': v for k, v in res.items()})
        if rank == 0: torch.save(results, result_file)
        dist.barrier()
    finally: dist.destroy_process_group()


@pytest.fixture(scope='module')
def ds(tmp_path_factory): return make_data(tmp_path_factory.mktemp('ddp')/'tiny')


def test_batch_halves_share_items_and_miss_some(ds):
    "The test below is not trivial: each rank's slice lacks some of the batch's items and the halves overlap."
    for loss, readout in CASES:
        cfg = model_cfg(ds, loss, readout)
        glob, halves = first_batch(ds, cfg), [first_batch(ds, cfg, r, 2) for r in (0, 1)]
        a, b, g = (set(h.items.tolist()) for h in (*halves, glob))
        assert a | b == g and a != g and b != g and a & b


def test_ddp_loss_and_gradients_equal_single_process(ds, tmp_path):
    import torch.multiprocessing as mp
    single = {}
    for loss, readout in CASES:
        cfg = model_cfg(ds, loss, readout)
        out = tmp_path/f'single-{loss}-{readout}'
        single[(loss, readout)] = one_step(ds, cfg, T.DistInfo(), out, first_batch(ds, cfg))
    # fork: the workers inherit the modules imported here already (a spawned one re-imports for ~30 s)
    args = (2, str(tmp_path/'pg'), str(ds.path), tmp_path, str(tmp_path/'r.pt'))
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method='fork')
    ddp = torch.load(tmp_path/'r.pt', weights_only=True)
    worst = {}
    for loss, readout in CASES:
        one = single[(loss, readout)]
        other = {k.split('/', 2)[2]: v for k, v in ddp.items() if k.startswith(f'{loss}/{readout}/')}
        assert set(other) == set(one) and len(one) > 4          # loss, rows and every parameter's gradient
        assert int(other['rows']) == int(one['rows']) == GLOBAL_BATCH
        assert float(one['loss']) > 0
        diffs = {k: float((other[k] - one[k]).abs().max()) for k in one if k != 'rows'}
        worst[(loss, readout)] = max(diffs.values())
        assert max(diffs.values()) < TOL, (loss, readout, sorted(diffs.items(), key=lambda kv: -kv[1])[:3])
    print('max abs difference DDP vs one process:', worst)
