"Tests of the synthetic MoM world (transrec.sim)."
import hashlib, json
from itertools import combinations
import numpy as np
import pytest
from transrec import sim
from transrec.data import load_dataset

SMALL = 0.05   # 100 users / 60 items for qb_mixed, 40 users / 50 items for the targets


def digest(folder):
    "sha256 of every file under `folder`, by relative path."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = sim.build_synthetic('qb_mixed', tmp_path/'a', scale=SMALL, seed=5)
    b = sim.build_synthetic('qb_mixed', tmp_path/'b', scale=SMALL, seed=5)
    da, db = digest(a), digest(b)
    assert da == db
    assert {'items.tsv', 'interactions.tsv', 'meta.json', 'sim_truth.json'} <= set(da)
    assert sum(k.endswith('.png') for k in da) == 30


def test_other_seed_gives_other_data(tmp_path):
    a = sim.build_synthetic('qb_mixed', tmp_path/'a', scale=SMALL, seed=5)
    c = sim.build_synthetic('qb_mixed', tmp_path/'c', scale=SMALL, seed=6)
    da, dc = digest(a), digest(c)
    assert da['interactions.tsv'] != dc['interactions.tsv']
    assert da['items.tsv'] != dc['items.tsv']
    assert not np.array_equal(sim.make_world(seed=5).transition, sim.make_world(seed=6).transition)


def test_domains_are_disjoint_but_share_the_world():
    doms = {n: sim.simulate(n, scale=SMALL, seed=2, render_images=False) for n in sim.SYNTHETIC_DOMAINS}
    assert {'qb_mixed', 'qb_text', 'qb_image', 'tn_mixed', 'tn_text'} <= set(doms)
    for n, d in doms.items():
        assert d.items['item_id'].str.startswith(f'{n}-i').all()
        assert d.interactions['user_id'].str.startswith(f'{n}-u').all()
    for (n1, d1), (n2, d2) in combinations(doms.items(), 2):
        assert not set(d1.items['item_id']) & set(d2.items['item_id']), (n1, n2)
        assert not set(d1.interactions['user_id']) & set(d2.interactions['user_id']), (n1, n2)
        assert d1.world.topics == d2.world.topics
        if d1.spec.transition_divergence == d2.spec.transition_divergence == 0:  # shared transitions ...
            np.testing.assert_array_equal(d1.world.transition, d2.world.transition)
        else:                                                                   # ... unless a dial moves them
            assert not np.allclose(d1.world.transition, d2.world.transition), (n1, n2)


def test_the_shift_dial_is_off_for_the_original_domains():
    for n in ('qb_mixed', 'qb_text', 'qb_image', 'tn_mixed', 'tn_text', 'tn_image'):
        spec = sim.SYNTHETIC_DOMAINS[n]
        dials = (spec.transition_divergence, spec.other_vocab_share, spec.style_shift, spec.topic_overlap,
                 spec.content_link)
        assert dials == (0.0, 0.0, None, 1.0, 1.0), n
        d = sim.simulate(n, scale=SMALL, seed=2, render_images=False)
        np.testing.assert_array_equal(d.world.content_topic, np.arange(16))
        np.testing.assert_array_equal(d.item_content_topic, d.item_topic)


def test_negative_control_moves_every_topic_and_habit():
    d = sim.simulate('nc_mixed', scale=SMALL, seed=2, render_images=False)
    world = sim.make_world(seed=2)
    assert (d.world.content_topic != np.arange(16)).all()
    assert np.diag(d.world.transition).mean() < np.diag(world.transition).mean() / 2
    # each item wears a random topic's content, moved once more by content_topic: not its own topic's
    assert (d.item_content_topic == d.item_topic).mean() < 0.2
    for text, k in zip(d.items['text'], d.item_content_topic):
        if text:
            worn = set(sum(sim.topic_vocabulary(d.world.topics[d.world.content_topic[k]], 'tn'), []))
            assert sum(w in worn for w in text.split()) >= 2
    truth = d.truth()
    assert truth['item_content_topic'] == d.item_content_topic.tolist()


@pytest.mark.parametrize('name', ['qb_mixed', 'tn_text'])
def test_counts_scale_with_scale(name):
    spec = sim.SYNTHETIC_DOMAINS[name]
    sizes = {}
    for scale in (0.1, 0.2, 0.4):
        d = sim.simulate(name, scale=scale, render_images=False)
        assert d.n_users == round(spec.n_users * scale)
        assert d.n_items == max(2 * spec.seq_max, round(spec.n_items * scale))
        sizes[scale] = (d.n_users, d.n_items, len(d.interactions))
    assert sizes[0.4][0] == 4 * sizes[0.1][0]
    assert 3 < sizes[0.4][2] / sizes[0.1][2] < 5     # interactions grow with users
    with pytest.raises(ValueError, match='scale=0'):
        sim.simulate(name, scale=0)


def test_modality_mix_per_domain():
    share = {n: (sim.simulate(n, scale=0.2, render_images=False).items['modality'] == 'text').mean()
             for n in ('qb_mixed', 'qb_text', 'qb_image', 'tn_mixed', 'tn_text')}
    assert share['qb_mixed'] == pytest.approx(0.5, abs=0.01)
    assert share['qb_text'] == 1.0 and share['tn_text'] == 1.0 and share['qb_image'] == 0.0
    assert share['tn_mixed'] == pytest.approx(0.3, abs=0.01)


def test_written_folder_loads_and_matches_the_simulation(tmp_path):
    p = sim.build_synthetic('tn_mixed', tmp_path/'tn', scale=0.1, seed=1)
    d = sim.simulate('tn_mixed', scale=0.1, seed=1, render_images=False)
    ds = load_dataset(p)
    assert ds.synthetic and ds.problems == [] and ds.meta['name'] == 'tn_mixed'
    assert (ds.n_users, ds.n_items) == (d.n_users, d.n_items)
    for u in (0, 7, d.n_users - 1):
        np.testing.assert_array_equal(ds.item_ids[ds.seqs[ds.user_ids.tolist().index(f'tn_mixed-u{u:05d}')]],
                                      d.items['item_id'].values[d.seqs[u]])
    lens = np.array([len(s) for s in ds.seqs])
    assert lens.min() >= 5 and lens.max() <= 25
    img = ds.load_image(int(np.flatnonzero(ds.modality == 1)[0]))
    assert img.size == (64, 64) and img.mode == 'RGB'
    meta = json.loads((p/'meta.json').read_text())
    assert meta['synthetic'] is True and 'synthetic stand-in' in meta['description'].lower()
    assert meta['generator'] == sim.generator_params(sim.domain_spec('tn_mixed'), 0.1, 1)
    truth = sim.load_truth(p)
    np.testing.assert_array_equal(truth['item_topic'], d.item_topic)


def test_lmdb_store_and_image_size(tmp_path):
    p = sim.build_synthetic('qb_image', tmp_path/'qi', scale=SMALL, image_store='lmdb', image_size=32)
    ds = load_dataset(p)
    assert not (p/'images').exists() and (p/'images.lmdb').exists()
    assert ds.load_image(0).size == (32, 32)


def test_captions_use_the_topic_words_of_their_family():
    for name, other in (('qb_text', 'tn'), ('tn_text', 'qb')):
        d = sim.simulate(name, scale=0.2, render_images=False)
        fam = sim.SYNTHETIC_DOMAINS[name].family
        for text, k in zip(d.items['text'], d.item_topic):
            words = text.split()
            assert 8 <= len(words) <= 20
            own = set(sum(sim.topic_vocabulary(d.world.topics[k], fam), []))
            foreign = {w for t in sim.TOPICS for g in sim.topic_vocabulary(t, other) for w in g}
            assert sum(w in own for w in words) >= 2
            assert not set(words) & foreign
