"Cold-start items (issue #23 item 4): test metrics by the test item's training count; ID model vs TransRec."
import json

import numpy as np
import pandas as pd
import pytest

from transrec.core import ModelConfig, TrainConfig
from transrec.data import write_dataset
from transrec.experiment import run_experiment

TOPICS = {'music': 'guitar song band melody', 'sport': 'football goal match team',
          'food': 'pasta recipe kitchen sauce', 'space': 'rocket planet orbit star',
          'garden': 'flower tree seed soil', 'sea': 'boat ocean wave fish', 'law': 'court judge trial lawyer',
          'health': 'doctor hospital medicine nurse'}
WARM_PER_TOPIC, COLD_PER_TOPIC, USERS_PER_TOPIC, HISTORY = 16, 12, 16, 7
SMALL = dict(dim=16, n_layers=1, n_heads=1, max_len=8, dropout=0.0)
TRAIN = TrainConfig(epochs=30, batch_size=16, lr=1e-2, encoder_lr=1e-3, warmup_steps=0, device='cpu',
                    amp='none', threads=1, num_workers=0, log_every=1, patience=30)


def topic_target(path, seed: int = 0):
    """A text-only target: each user clicks `HISTORY` warm items of one topic, then (the test item) a cold item
    of that topic (two users in three) or another warm item of it. Cold items occur only as test items, so
    training never sees them; their text names their topic."""
    rng = np.random.default_rng(seed)
    items, clicks = [], []
    for topic, words in TOPICS.items():
        warm = [f'{topic}-w{i}' for i in range(WARM_PER_TOPIC)]
        cold = [f'{topic}-c{i}' for i in range(COLD_PER_TOPIC)]
        for item in warm + cold:
            text = f"{' '.join(rng.permutation(words.split()))} item {item.split('-')[1]}"
            items.append((item, 'text', text, ''))
        for user in range(USERS_PER_TOPIC):
            seen = list(rng.choice(warm, HISTORY + 1, replace=False))
            last = rng.choice(cold) if user % 3 else seen[-1]
            for step, item in enumerate(seen[:HISTORY] + [last]):
                clicks.append((f'{topic}-u{user}', item, step))
    items = pd.DataFrame(items, columns=['item_id', 'modality', 'text', 'image'])
    clicks = pd.DataFrame(clicks, columns=['user_id', 'item_id', 'timestamp'])
    return write_dataset(path, items, clicks, {'synthetic': True})


def chance_ndcg(candidates: int, k: int = 10) -> float:
    "NDCG@k of a target placed uniformly at random among `candidates` items."
    return sum(1 / np.log2(rank + 1) for rank in range(1, min(k, candidates) + 1)) / candidates


@pytest.fixture(scope='module')
def target(tmp_path_factory):
    return tmp_path_factory.mktemp('cold')/'topics'


def run(target, out, kind, epochs: int = 30, **model):
    if not target.exists(): topic_target(target)
    model_cfg = ModelConfig(kind=kind, **SMALL, **model)
    return run_experiment(str(target), out, model_cfg, TRAIN.replace(epochs=epochs), experiment='train',
                          progress=False)


def test_the_target_has_cold_test_items(target, tmp_path):
    metrics = run(target, tmp_path/'popularity', 'popularity')
    bins = metrics['test']['by_item_count']
    assert metrics['item_count_bins'] == ['0', '1-4', '5+']
    n_topics = len(TOPICS)
    # two users in three end on a cold item (never in training); the rest on a warm one (seen 1-4 or 5+ times)
    assert bins['0']['n_users'] == n_topics * sum(1 for user in range(USERS_PER_TOPIC) if user % 3)
    assert sum(bin_metrics['n_users'] for bin_metrics in bins.values()) == metrics['test']['n_users']
    assert bins['0']['NDCG@10'] == 0.0                   # popularity ranks never-clicked items last
    saved = json.loads((tmp_path/'popularity'/'metrics.json').read_text())
    assert saved['test']['by_item_count'] == bins and saved['test_all']['by_item_count'] == bins


def test_transrec_ranks_cold_items_above_chance_and_an_id_model_cannot(target, tmp_path):
    """A model that knows nothing about cold items orders them at random; at best it puts them all first, which
    gives the target NDCG@10 `chance_ndcg(number of cold items)`: the bound that no uninformed order beats."""
    candidates = len(TOPICS) * (WARM_PER_TOPIC + COLD_PER_TOPIC) - HISTORY       # the test history is masked
    uninformed = chance_ndcg(len(TOPICS) * COLD_PER_TOPIC)
    id_model = run(target, tmp_path/'id', 'id_sasrec')['test']['by_item_count']
    transrec = run(target, tmp_path/'transrec', 'transrec', epochs=6, text_max_tokens=12,
                   text_trainable_blocks=0, text_pooling='mean')['test']['by_item_count']
    # both learned the topics: warm test items are found far above chance
    for bins in (id_model, transrec): assert bins['5+']['NDCG@10'] > 4 * chance_ndcg(candidates)
    # a cold item's ID embedding was never trained: no better than an uninformed order; its text names a topic
    assert id_model['0']['NDCG@10'] <= uninformed
    assert transrec['0']['NDCG@10'] > 1.5 * uninformed
    assert transrec['0']['NDCG@10'] > id_model['0']['NDCG@10'] + uninformed
