"Copy the both-parts study's results into reports/results/both/transfer/ (summary, table, held-out users' ranks)."
import json, shutil, sys
from pathlib import Path
import numpy as np
study, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
for name in ('summary.json', 'table.md'): shutil.copy(study/name, dest/name)
ranks = {}
for f in sorted(study.rglob('per_user.npz')):
    key = str(f.parent.relative_to(study))
    if key.startswith('pretrain-'): continue
    with np.load(f, allow_pickle=False) as a:
        cold = a['group'] == 'cold'
        ranks[key] = dict(user=a['user'][cold].tolist(), rank=a['rank'][cold].tolist())
(dest/'heldout_ranks.json').write_text(json.dumps(ranks, separators=(',', ':')) + '\n')
print(len(ranks), 'runs;', (dest/'heldout_ranks.json').stat().st_size // 1024, 'KiB')
