"Cold-item columns of the transfer table, measured: a reduced transfer study (issue #23 item 4); see README.md."
import json, shutil, sys, time
from pathlib import Path
from transrec.study import transfer_study

OUT = Path('/tmp/h2-track/cold-study')
RESULTS = Path('/work/wt-track/reports/results/cold-items')
MODEL = dict(dim=32, n_layers=1, n_heads=1, max_len=10, image_size=32, text_max_tokens=16,
             text_trainable_blocks=0, image_trainable_blocks=0)
FINETUNE = dict(batch_size=16, lr=3e-3, warmup_steps=5, epochs=20, patience=3, amp='none', num_workers=0, threads=1)
t = time.time()
summary = transfer_study(OUT, source='qb_mixed', targets=('qb_text', 'tn_mixed'),
                         pretrained='/work/sel/reports/selection/pretrain/seed-0/best',
                         methods=('transrec', 'transrec-pretrained', 'id_sasrec', 'frozen', 'popularity'),
                         target_fraction=0.1, seeds=int(sys.argv[1]),
                         finetune_params=dict(device='cpu', progress=False, model=MODEL, train=FINETUNE))
RESULTS.mkdir(parents=True, exist_ok=True)
for name in ('summary.json', 'table.md', 'table.html'): shutil.copy(OUT/name, RESULTS/name)
print(f'done in {time.time() - t:.0f}s')
print((OUT/'table.md').read_text())
