"A tiny mixture-of-modality data set on disk, shared by the encoder and model tests."
import numpy as np
import pandas as pd
from PIL import Image
from transrec.data import write_dataset

WORDS = 'football tennis recipe oven guitar piano flight beach stocks bank physics gene movie comedy dress shoes'.split()


def tiny_mom(path, n_text=12, n_image=8, n_users=10, seed=0, prefix='', image_wh=(16, 16), words=None, seq_len=(3, 8)):
    "`n_text` captions (`words` words each, else 1-8 at random), `n_image` random PNGs and `n_users` users of `seq_len` clicks."
    rng = np.random.default_rng(seed)
    ids = [f'{prefix}t{i}' for i in range(n_text)] + [f'{prefix}v{i}' for i in range(n_image)]
    texts = [' '.join(rng.choice(WORDS, words or int(rng.integers(1, 9)))) for _ in range(n_text)] + [''] * n_image
    refs = [''] * n_text + [f'images/v{i}.png' for i in range(n_image)]
    w, h = image_wh
    images = {r: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for r in refs if r}
    items = pd.DataFrame({'item_id': ids, 'modality': ['text'] * n_text + ['image'] * n_image, 'text': texts, 'image': refs})
    rows = [(f'{prefix}u{u}', ids[i], t) for u in range(n_users)
            for t, i in enumerate(rng.choice(len(ids), int(rng.integers(*seq_len)), replace=False))]
    return write_dataset(path, items, pd.DataFrame(rows, columns=['user_id', 'item_id', 'timestamp']), {'synthetic': True}, images=images)
