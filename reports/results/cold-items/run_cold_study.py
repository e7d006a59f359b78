"""Cold-item columns of the transfer table, measured (issue #23 item 4): the transfer study on the paper's four
targets, seed i fine-tuning the shared seed-i pre-training, fine-tunes keeping their last epoch; see README.md.
Usage, from nbs/ (the study runs the notebooks there): python ../reports/results/cold-items/run_cold_study.py
SEEDS [TARGET ...] (default: the four paper targets). The results are copied here only when no run failed."""
import shutil, sys, time
from pathlib import Path
from transrec.study import transfer_study

OUT = Path('/tmp/h3-abl/cold-study')
RESULTS = Path(__file__).resolve().parent
PRETRAINED = [f'/work/sel/reports/selection/pretrain/seed-{seed}/best' for seed in range(3)]
TARGETS = ('qb_text', 'qb_image', 'tn_text', 'tn_mixed')
MODEL = dict(dim=32, n_layers=1, n_heads=1, max_len=10, image_size=32, text_max_tokens=16,
             text_trainable_blocks=0, image_trainable_blocks=0)
FINETUNE = dict(batch_size=16, lr=3e-3, warmup_steps=5, epochs=20, select_on='last', patience=0, amp='none',
                num_workers=0, threads=1, keep_at_end='best')
seeds, targets = int(sys.argv[1]), tuple(sys.argv[2:]) or TARGETS
start = time.time()
summary = transfer_study(OUT, source='qb_mixed', targets=targets, pretrained=PRETRAINED[:seeds],
                         methods=('transrec', 'transrec-pretrained', 'id_sasrec', 'frozen', 'popularity'),
                         target_fraction=0.1, seeds=seeds, progress=False,
                         finetune_params=dict(device='cpu', progress=False, model=MODEL, train=FINETUNE))
print(f'done in {time.time() - start:.0f}s')
if summary['failed']: sys.exit(f"{len(summary['failed'])} runs failed (see {OUT/'summary.json'}); nothing copied")
for name in ('summary.json', 'table.md', 'table.html'): shutil.copy(OUT/name, RESULTS/name)
print((OUT/'table.md').read_text())
