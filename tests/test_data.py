"""Integration tests of transrec.data: loading, validation (one test per kind of bad input), split, batches, CLI.

Every test writes its own files into pytest's tmp_path. Row numbers in problems are 1-based data rows
(header not counted); the rendered text also gives the spreadsheet row (= row + 1).
"""
import io, json, multiprocessing as mp, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from transrec.datafiles import MODALITIES, DataError, Problem
from transrec.batches import (Batch, EvalBatch, eval_batches, history_and_target, history_items,
    n_batches_per_epoch, sample_negatives, split_targets, train_batches, train_part)
from transrec.data import MoMDataset, ValidationReport, load_dataset, main, validate, write_dataset

ITEMS_HEADER = 'item_id\tmodality\ttext\timage\n'
INTER_HEADER = 'user_id\titem_id\ttimestamp\n'
GOOD_ITEMS = ('n1\ttext\tred apples\t\n'
              'n2\ttext\tgreen pears\t\n'
              'n3\ttext\tblue sky\t\n'
              'v1\timage\t\timages/v1.png\n'
              'v2\timage\t\timages/v2.png\n')
GOOD_INTER = ('u1\tn1\t1\n'
              'u1\tv1\t2\n'
              'u1\tn2\t3\n'
              'u2\tv2\t1\n'
              'u2\tn3\t2\n'
              'u2\tn1\t3\n')


def png_bytes(color='red', size=(4, 4)):
    buf = io.BytesIO(); Image.new('RGB', size, color).save(buf, format='PNG'); return buf.getvalue()


def write_raw(root: Path, items=GOOD_ITEMS, inter=GOOD_INTER, items_header=ITEMS_HEADER, inter_header=INTER_HEADER,
              images=None, meta=None) -> Path:
    "Write a MoM folder from raw text/bytes, so that tests can put any bad content into it."
    root.mkdir(parents=True, exist_ok=True)
    for name, header, body in (('items.tsv', items_header, items), ('interactions.tsv', inter_header, inter)):
        data = body if isinstance(body, bytes) else body.encode('utf-8')
        (root/name).write_bytes(header.encode('utf-8') + data)
    images = {'images/v1.png': png_bytes('red'), 'images/v2.png': png_bytes('green')} if images is None else images
    for key, data in images.items():
        (root/key).parent.mkdir(parents=True, exist_ok=True); (root/key).write_bytes(data)
    (root/'meta.json').write_text(json.dumps({'name': root.name, 'synthetic': True, 'image_store': 'files'} if meta is None else meta)
                                  if not isinstance(meta, str) else meta)
    return root


def kinds(problems):
    return sorted({p.kind for p in problems})


def fatal_problem(path, kind) -> Problem:
    "load_dataset must raise DataError; return its (first) problem of `kind`, checking the message names it."
    with pytest.raises(DataError) as ei:
        load_dataset(path)
    found = [p for p in ei.value.problems if p.kind == kind]
    assert found, f'no {kind} problem in {ei.value}'
    assert isinstance(ei.value, ValueError)
    assert str(found[0]) in str(ei.value) or len([p for p in ei.value.problems if p.fatal]) > 20
    return found[0]


# ---------------------------------------------------------------- good data

def test_load_good_dataset(tmp_path):
    ds = load_dataset(write_raw(tmp_path/'good'))
    assert isinstance(ds, MoMDataset)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 5, 6)
    assert list(ds.item_ids) == ['n1', 'n2', 'n3', 'v1', 'v2'] and ds.item_index['v1'] == 3
    assert ds.modality.dtype == np.int64 and list(ds.modality) == [0, 0, 0, 1, 1]
    assert ds.texts[1] == 'green pears' and ds.image_refs[4] == 'images/v2.png' and ds.image_refs[0] == ''
    assert list(ds.user_ids) == ['u1', 'u2']
    assert [s.tolist() for s in ds.seqs] == [[0, 3, 1], [4, 2, 0]]
    assert all(s.dtype == np.int64 for s in ds.seqs)
    assert ds.synthetic is True and ds.name == 'good' and ds.problems == []
    img = ds.load_image(3)
    assert img.mode == 'RGB' and img.getpixel((0, 0)) == (255, 0, 0)


def test_chronological_order_ties_and_file_order(tmp_path):
    inter = ('u1\tn3\t30\n'
             'u1\tn1\t10\n'
             'u1\tv2\t20\n'
             'u1\tv1\t20\n'     # tie with the row above: file order kept (v2 then v1)
             'u2\tn2\t\n'       # u2 has no timestamps (the column is partly empty -> a warning): file order
             'u2\tn1\t\n'
             'u2\tv1\t\n')
    ds = load_dataset(write_raw(tmp_path/'ties', inter=inter))
    assert ds.item_ids[ds.seqs[0]].tolist() == ['n1', 'v2', 'v1', 'n3']
    assert ds.item_ids[ds.seqs[1]].tolist() == ['n2', 'n1', 'v1']
    assert [p.kind for p in ds.problems] == ['partial_timestamps'] and not ds.problems[0].fatal
    # no timestamp column at all: pure file order
    ds2 = load_dataset(write_raw(tmp_path/'nots', inter_header='user_id\titem_id\n',
                                 inter='u1\tv2\nu1\tn1\nu1\tn3\n'))
    assert ds2.item_ids[ds2.seqs[0]].tolist() == ['v2', 'n1', 'n3']
    # ISO-8601 date-times sort chronologically
    ds3 = load_dataset(write_raw(tmp_path/'iso', inter='u1\tn1\t2024-03-01T00:00:00\nu1\tn2\t2024-01-01\nu1\tn3\t2024-02-01T12:00:00\n'))
    assert ds3.item_ids[ds3.seqs[0]].tolist() == ['n2', 'n3', 'n1']


def test_partial_timestamps_follow_their_predecessor(tmp_path):
    inter = 'u1\tn1\t5\nu1\tn2\t\nu1\tv1\t1\nu1\tn3\t9\n'   # n2 has no timestamp: stays right after n1
    ds = load_dataset(write_raw(tmp_path/'p', inter=inter))
    assert ds.item_ids[ds.seqs[0]].tolist() == ['v1', 'n1', 'n2', 'n3']


def test_write_dataset_roundtrip_and_lmdb(tmp_path):
    items = pd.DataFrame({'item_id': ['a', 'NA', 'c'], 'modality': ['text', 'text', 'image'],
                          'text': ['tab\tinside "q"', 'line\nbreak', ''], 'image': ['', '', 'img/c']})
    inter = pd.DataFrame({'user_id': ['x'] * 3 + ['007'] * 3, 'item_id': ['a', 'NA', 'c', 'c', 'a', 'NA'],
                          'timestamp': [1, 2, 3, 1, 2, 3]})
    for store in ('files', 'lmdb'):
        p = write_dataset(tmp_path/store, items, inter, {'synthetic': False}, images={'img/c': Image.new('RGB', (5, 3), 'blue')},
                          image_store=store)
        ds = load_dataset(p)
        assert ds.texts[:2] == ['tab\tinside "q"', 'line\nbreak'] and list(ds.item_ids) == ['a', 'NA', 'c']
        assert list(ds.user_ids) == ['x', '007'] and ds.image_store == store and ds.synthetic is False
        assert ds.load_image(2).size == (5, 3) and ds.load_image(2).getpixel((0, 0)) == (0, 0, 255)
        with pytest.raises(DataError, match=r"items.tsv row 1 .*is a text item"):
            ds.load_image(0)


def _child_reads(ds, q):
    q.put([ds.load_image(i).getpixel((0, 0)) for i in (3, 4)])


def test_lmdb_is_lazy_and_fork_safe(tmp_path):
    items = pd.read_csv(io.StringIO(ITEMS_HEADER + GOOD_ITEMS), sep='\t', dtype=str, keep_default_na=False)
    inter = pd.read_csv(io.StringIO(INTER_HEADER + GOOD_INTER), sep='\t', dtype=str, keep_default_na=False)
    p = write_dataset(tmp_path/'lm', items, inter, {}, image_store='lmdb',
                      images={'images/v1.png': png_bytes('red'), 'images/v2.png': png_bytes('green')})
    assert not (p/'images').exists()
    from transrec import datafiles
    key = str((p/'images.lmdb').resolve())
    ds = load_dataset(p)
    assert key not in datafiles._LMDB_ENVS                    # loading leaves no environment open
    assert ds.load_image(3).getpixel((0, 0)) == (255, 0, 0)
    assert key in datafiles._LMDB_ENVS
    sub = ds.subset_users([1])                           # a copy shares the one environment of this process
    assert sub.load_image(4).getpixel((0, 0)) == (0, 128, 0)
    ctx = mp.get_context('fork'); q = ctx.Queue()
    proc = ctx.Process(target=_child_reads, args=(ds, q)); proc.start()
    got = q.get(timeout=60); proc.join(60)
    assert proc.exitcode == 0 and got == [(255, 0, 0), (0, 128, 0)]
    assert ds.load_image(4).getpixel((0, 0)) == (0, 128, 0)   # parent still fine after the child used its own env


# ---------------------------------------------------------------- bad input: one test per kind

def test_unknown_item_in_interactions(tmp_path):
    p = write_raw(tmp_path/'d', inter=GOOD_INTER + 'u2\tnope\t4\n')
    pr = fatal_problem(p, 'unknown_item')
    assert (pr.file, pr.row) == ('interactions.tsv', 7) and "'nope'" in pr.message and pr.fix
    assert 'interactions.tsv row 7 (spreadsheet row 8)' in str(pr)
    rep = validate(p)
    assert not rep.ok and rep.counts['invalid_interactions'] == 1


def test_empty_text_is_a_warning(tmp_path):
    p = write_raw(tmp_path/'d', items=GOOD_ITEMS.replace('green pears', '  '))
    ds = load_dataset(p)                                 # usable: the item stays, with its (empty) text
    assert ds.n_items == 5
    (pr,) = [q for q in ds.problems if q.kind == 'empty_text']
    assert (pr.file, pr.row, pr.fatal) == ('items.tsv', 2, False) and "'n2'" in pr.message
    rep = validate(p)
    assert rep.ok and 'items.tsv row 2 (spreadsheet row 3)' in rep.render()


def test_missing_image_file(tmp_path):
    p = write_raw(tmp_path/'d', images={'images/v1.png': png_bytes()})   # v2's file is absent
    pr = fatal_problem(p, 'missing_image')
    assert (pr.file, pr.row) == ('items.tsv', 5) and 'images/v2.png' in pr.message
    # an image item with an empty image column
    p2 = write_raw(tmp_path/'e', items=GOOD_ITEMS.replace('\timages/v1.png', '\t'))
    pr2 = fatal_problem(p2, 'missing_image')
    assert (pr2.file, pr2.row) == ('items.tsv', 4) and 'empty image column' in pr2.message


def test_corrupt_image_file(tmp_path):
    good = png_bytes()
    p = write_raw(tmp_path/'d', images={'images/v1.png': good, 'images/v2.png': good[:len(good) // 2]})   # truncated PNG
    rep = validate(p)                                   # validate decodes every image
    (pr,) = [q for q in rep.problems if q.kind == 'corrupt_image']
    assert not rep.ok and (pr.file, pr.row) == ('items.tsv', 5) and 'images/v2.png' in pr.message
    assert validate(p, check_images=False).ok           # existence only: decoding is validate's job
    ds = load_dataset(p)                                # load checks existence only (documented)
    with pytest.raises(DataError, match=r"items.tsv row 5 \(spreadsheet row 6\).*'v2'.*cannot be decoded"):
        ds.load_image(4)
    p2 = write_raw(tmp_path/'e', images={'images/v1.png': b'not an image at all', 'images/v2.png': good})
    assert [(q.row, q.kind) for q in validate(p2).problems] == [(4, 'corrupt_image')]


def test_missing_and_corrupt_image_in_lmdb(tmp_path):
    import lmdb
    p = write_raw(tmp_path/'d', images={}, meta={'name': 'd', 'image_store': 'lmdb'})
    env = lmdb.open(str(p/'images.lmdb'), map_size=1 << 22, subdir=True, lock=False)
    with env.begin(write=True) as txn: txn.put(b'images/v1.png', b'\x89PNG garbage')   # v2 missing, v1 corrupt
    env.close()
    pr = fatal_problem(p, 'missing_image')
    assert (pr.file, pr.row) == ('items.tsv', 5) and 'images.lmdb key' in pr.message
    rep = validate(p)
    assert sorted((q.row, q.kind) for q in rep.problems) == [(4, 'corrupt_image'), (5, 'missing_image')]
    p2 = write_raw(tmp_path/'e', images={}, meta={'name': 'e', 'image_store': 'lmdb'})   # no images.lmdb at all
    assert fatal_problem(p2, 'missing_file').file == 'images.lmdb'


def test_unknown_modality(tmp_path):
    p = write_raw(tmp_path/'d', items=GOOD_ITEMS.replace('v2\timage', 'v2\tvideo'))
    pr = fatal_problem(p, 'unknown_modality')
    assert (pr.file, pr.row) == ('items.tsv', 5) and "'video'" in pr.message and "'text', 'image' or 'both'" in pr.fix
    assert 'items.tsv row 5 (spreadsheet row 6)' in str(pr)


def test_duplicate_item_id_is_fatal(tmp_path):
    p = write_raw(tmp_path/'d', items=GOOD_ITEMS + 'n2\ttext\tother pears\t\n')
    pr = fatal_problem(p, 'duplicate_item')
    assert (pr.file, pr.row) == ('items.tsv', 6) and "'n2'" in pr.message and 'row 2' in pr.message


def test_duplicate_interaction_rows_are_reported(tmp_path):
    p = write_raw(tmp_path/'d', inter=GOOD_INTER + 'u1\tv1\t2\n')
    ds = load_dataset(p)                                 # kept as a repeated interaction, reported
    (pr,) = [q for q in ds.problems if q.kind == 'duplicate_interaction']
    assert (pr.file, pr.row, pr.fatal) == ('interactions.tsv', 7, False) and 'row 2' in pr.message
    assert ds.item_ids[ds.seqs[0]].tolist() == ['n1', 'v1', 'v1', 'n2']
    assert 'interactions.tsv row 7 (spreadsheet row 8)' in validate(p).render()


@pytest.mark.parametrize('which,header,missing', [('items', 'item_id\ttext\timage\n', 'modality'),
                                                  ('interactions', 'user\titem_id\ttimestamp\n', 'user_id'),
                                                  ('items', 'item_id\tmodality\ttext\n', 'image')])
def test_missing_columns(tmp_path, which, header, missing):
    body = {'items': GOOD_ITEMS, 'interactions': GOOD_INTER}[which]
    body = '\n'.join('\t'.join(l.split('\t')[:header.count('\t') + 1]) for l in body.splitlines()) + '\n'
    kw = {'items_header': header, 'items': body} if which == 'items' else {'inter_header': header, 'inter': body}
    p = write_raw(tmp_path/'d', **kw)
    pr = fatal_problem(p, 'missing_column')
    assert pr.file == f'{which}.tsv' and pr.row is None and missing in pr.message and missing in pr.fix


def test_non_utf8_text(tmp_path):
    items = ('n1\ttext\tred apples\t\n'
             'n2\ttext\tcaf\xe9 cr\xe8me\t\n'        # latin-1 bytes, not UTF-8
             'n3\ttext\tblue sky\t\n'
             'v1\timage\t\timages/v1.png\n'
             'v2\timage\t\timages/v2.png\n').encode('latin-1')
    p = write_raw(tmp_path/'d', items=items)
    pr = fatal_problem(p, 'not_utf8')
    offset = (p/'items.tsv').read_bytes().index(b'\xe9')
    assert (pr.file, pr.row) == ('items.tsv', 2) and "column 'text'" in pr.message
    assert f'byte offset {offset} ' in pr.message and '0xE9' in pr.message and 'UTF-8' in pr.fix
    rep = validate(p)
    assert [(q.row, q.kind) for q in rep.problems] == [(2, 'not_utf8')]
    # a UTF-8 byte-order mark is fine
    p2 = write_raw(tmp_path/'bom', items=GOOD_ITEMS, items_header='\ufeff' + ITEMS_HEADER)
    assert load_dataset(p2).n_items == 5


def test_users_too_short_to_split(tmp_path):
    inter = GOOD_INTER + 'u3\tn1\t1\nu3\tn2\t2\nu4\tv1\t1\nu5\tv2\t7\n'   # u3: 2 items, u4 and u5: 1 item
    p = write_raw(tmp_path/'d', inter=inter)
    with pytest.raises(DataError) as ei:
        load_dataset(p)
    msg = str(ei.value)
    assert 'interactions.tsv' in msg and '3 of 5 users' in msg and '1 item: 2 users, 2 items: 1 user' in msg
    assert 'min_seq_len=3' in msg and "user 'u3' on rows 7, 8" in msg
    ds = load_dataset(p, min_seq_len=3)                  # explicit: excluded and reported
    assert list(ds.user_ids) == ['u1', 'u2']
    (pr,) = ds.problems
    assert pr.kind == 'short_user' and not pr.fatal and 'excluded' in pr.message and '3 of 5' in pr.message
    with pytest.raises(DataError, match='no user has >= 4'):
        load_dataset(p, min_seq_len=4)
    with pytest.raises(ValueError, match='min_seq_len=2'):
        load_dataset(p, min_seq_len=2)
    rep = validate(p)
    assert not rep.ok and rep.counts['users'] == 5
    rep3 = validate(p, min_seq_len=3)
    assert rep3.ok and rep3.counts['users'] == 2 and rep3.counts['users_excluded'] == 3


def test_malformed_row(tmp_path):
    p = write_raw(tmp_path/'d', inter=GOOD_INTER + 'u2\tv1\t4\textra\n')
    pr = fatal_problem(p, 'malformed_row')
    assert (pr.file, pr.row) == ('interactions.tsv', 7) and 'tab-separated' in pr.fix


def test_bad_timestamp(tmp_path):
    p = write_raw(tmp_path/'d', inter=GOOD_INTER.replace('u2\tn3\t2', 'u2\tn3\tyesterday'))
    pr = fatal_problem(p, 'bad_timestamp')
    assert (pr.file, pr.row) == ('interactions.tsv', 5) and "'yesterday'" in pr.message


def test_empty_ids(tmp_path):
    p = write_raw(tmp_path/'d', items=GOOD_ITEMS + '\ttext\tno id\t\n', inter=GOOD_INTER + '\tn1\t9\n')
    with pytest.raises(DataError) as ei:
        load_dataset(p)
    got = {(q.file, q.row) for q in ei.value.problems if q.kind == 'empty_id'}
    assert got == {('items.tsv', 6), ('interactions.tsv', 7)}


def test_missing_files_and_bad_meta(tmp_path):
    p = write_raw(tmp_path/'d'); (p/'items.tsv').unlink()
    assert fatal_problem(p, 'missing_file').file == 'items.tsv'
    with pytest.raises(DataError, match='is not a folder'):
        load_dataset(tmp_path/'nowhere')
    p2 = write_raw(tmp_path/'m', meta='{"name": "m",\n "synthetic": tru}')
    pr = fatal_problem(p2, 'bad_meta')
    assert pr.file == 'meta.json' and pr.row == 2
    p3 = write_raw(tmp_path/'n'); (p3/'meta.json').unlink()
    ds = load_dataset(p3)                                # meta.json is optional: a warning
    assert [q.kind for q in ds.problems] == ['missing_meta'] and ds.name == 'n' and ds.synthetic is False


def test_parquet_tables(tmp_path):
    p = write_raw(tmp_path/'d')
    items = pd.read_csv(p/'items.tsv', sep='\t', dtype=str, keep_default_na=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:   # no parquet engine here: a parquet-only data set must say what to install
        (p/'items.tsv').unlink(); (p/'items.parquet').write_bytes(b'PAR1 not really')
        pr = fatal_problem(p, 'missing_file')
        assert pr.file == 'items.parquet' and 'pyarrow' in pr.fix
        return
    items.to_parquet(p/'items.parquet'); (p/'items.tsv').unlink()
    ds = load_dataset(p)
    assert list(ds.item_ids) == ['n1', 'n2', 'n3', 'v1', 'v2'] and [s.tolist() for s in ds.seqs] == [[0, 3, 1], [4, 2, 0]]


def test_many_bad_rows_are_all_counted(tmp_path, monkeypatch):
    from transrec import datafiles
    monkeypatch.setattr(datafiles, 'MAX_ROWS_PER_KIND', 3)
    p = write_raw(tmp_path/'d', inter=GOOD_INTER + ''.join(f'u1\tghost{k}\t{k}\n' for k in range(5)))
    rep = validate(p)
    unk = [q for q in rep.problems if q.kind == 'unknown_item']
    assert [q.row for q in unk] == [7, 8, 9, None] and '2 more rows' in unk[-1].message and '5 in all' in unk[-1].message


# ---------------------------------------------------------------- split, popularity, subsets

@pytest.fixture
def random_ds(tmp_path):
    "A larger random data set (300 users, 120 items, text+image) written and loaded through the public path."
    rng = np.random.default_rng(1)
    n_items, n_users = 120, 300
    items = pd.DataFrame({'item_id': [f'i{k}' for k in range(n_items)],
                          'modality': ['text' if k % 3 else 'image' for k in range(n_items)],
                          'text': [f'title {k}' for k in range(n_items)],
                          'image': [f'images/{k}.png' if k % 3 == 0 else '' for k in range(n_items)]})
    lens = rng.integers(3, 40, n_users)
    u = np.repeat(np.arange(n_users), lens)
    inter = pd.DataFrame({'user_id': [f'u{x}' for x in u], 'item_id': [f'i{k}' for k in rng.integers(0, n_items, len(u))],
                          'timestamp': np.arange(len(u))})
    img = png_bytes()
    p = write_dataset(tmp_path/'rand', items, inter, {}, images={f'images/{k}.png': img for k in range(0, n_items, 3)})
    return load_dataset(p)


def test_split_helpers_and_popularity(random_ds):
    ds = random_ds
    for u in (0, 7, 299):
        s = ds.seqs[u]
        assert np.array_equal(train_part(s), s[:-2])
        h, t = history_and_target(s, 'valid'); assert np.array_equal(h, s[:-2]) and t == s[-2]
        h, t = history_and_target(s, 'test'); assert np.array_equal(h, s[:-1]) and t == s[-1]
    assert np.array_equal(split_targets(ds, 'valid'), [s[-2] for s in ds.seqs])
    assert np.array_equal(split_targets(ds, 'test', users=[5, 3]), [ds.seqs[5][-1], ds.seqs[3][-1]])
    pop = ds.popularity()
    assert pop.dtype == np.float64 and pop.shape == (ds.n_items,)
    assert np.array_equal(pop, np.bincount(np.concatenate([s[:-2] for s in ds.seqs]), minlength=ds.n_items))
    for split, k in (('valid', 2), ('test', 1)):
        hs = history_items(ds, split)
        for u in (0, 11, 150):
            s = ds.seqs[u]; t = s[-k]
            assert np.array_equal(hs[u], np.setdiff1d(s[:-k], [t]))
    with pytest.raises(ValueError, match="split='train'"):
        history_items(ds, 'train')


def test_subset_users(random_ds):
    ds = random_ds
    sub = ds.subset_users([10, 2, 299])
    assert sub.n_items == ds.n_items and np.array_equal(sub.item_ids, ds.item_ids) and sub.texts == ds.texts
    assert list(sub.user_ids) == [ds.user_ids[10], ds.user_ids[2], ds.user_ids[299]]
    assert all(np.array_equal(a, ds.seqs[b]) for a, b in zip(sub.seqs, [10, 2, 299]))
    assert np.array_equal(sub.popularity(), sum(np.bincount(ds.seqs[u][:-2], minlength=ds.n_items) for u in (10, 2, 299)))
    half = ds.subset_users(np.arange(ds.n_users) % 2 == 0)
    assert half.n_users == 150 and half.path == ds.path
    with pytest.raises(IndexError):
        ds.subset_users([ds.n_users])


# ---------------------------------------------------------------- batches

def test_train_batches_contract(random_ds):
    ds = random_ds; T, n_neg, B = 12, 4, 32
    batches = list(train_batches(ds, B, T, n_neg, seed=3, epoch=0))
    assert len(batches) == n_batches_per_epoch(ds, B) == 10
    assert len(train_batches(ds, B, T, n_neg, seed=3, epoch=0)) == 10
    seen = torch.cat([b.users for b in batches])
    assert sorted(seen.tolist()) == list(range(ds.n_users))          # one window per user per epoch
    for b in batches:
        assert isinstance(b, Batch)
        assert b.items.dtype == b.seq.dtype == b.neg.dtype == b.users.dtype == torch.int64 and b.mask.dtype == torch.bool
        assert b.seq.shape == b.mask.shape == (len(b), T) and b.neg.shape == (len(b), T, n_neg)
        assert torch.equal(b.items, torch.unique(b.items))           # sorted, unique
        used = torch.cat([b.seq[b.mask], b.neg[b.mask].reshape(-1)]).unique()
        assert torch.equal(used, torch.arange(len(b.items)))          # every item is used, none twice
        assert (b.seq[~b.mask] == 0).all() and (b.neg[~b.mask] == 0).all()
        for r, u in enumerate(b.users.tolist()):
            tp = ds.seqs[u][:-2][-T:]
            m = b.mask[r]
            assert m.sum() == len(tp) and m[-len(tp):].all()            # left-padded
            assert np.array_equal(b.items[b.seq[r][m]].numpy(), tp)
            assert not np.isin(b.items[b.neg[r][m]].numpy(), ds.seqs[u]).any()   # never a touched item
    # determinism in (seed, epoch), skip = resume
    again = list(train_batches(ds, B, T, n_neg, seed=3, epoch=0, skip=7))
    assert len(again) == 3
    for x, y in zip(again, batches[7:]):
        assert torch.equal(x.users, y.users) and torch.equal(x.items, y.items) and torch.equal(x.neg, y.neg)
    other = next(iter(train_batches(ds, B, T, n_neg, seed=3, epoch=1)))
    assert not torch.equal(other.users, batches[0].users)
    # ranks: contiguous slices of each global batch, same number of batches on every rank
    ranks = [list(train_batches(ds, B, T, n_neg, seed=3, epoch=0, rank=r, world_size=4)) for r in range(4)]
    assert [len(r) for r in ranks] == [10] * 4 and all(len(b) == 8 for r in ranks for b in r)
    for k in range(9):
        glob = batches[k]
        assert torch.equal(torch.cat([ranks[r][k].users for r in range(4)]), glob.users)
        for r in range(4):
            part = ranks[r][k]; rows = slice(8 * r, 8 * (r + 1))
            assert torch.equal(part.items[part.seq][part.mask], glob.items[glob.seq[rows]][glob.mask[rows]])
            assert torch.equal(part.items[part.neg][part.mask], glob.items[glob.neg[rows]][glob.mask[rows]])
    last = torch.cat([ranks[r][9].users for r in range(4)])
    assert torch.equal(last[:12], batches[9].users)                   # 300 = 9 * 32 + 12: topped up for DDP
    moved = batches[0].to('cpu')
    assert isinstance(moved, Batch) and torch.equal(moved.seq, batches[0].seq)


def test_train_batches_bad_arguments(random_ds, tmp_path):
    with pytest.raises(ValueError, match='divisible by world_size'):
        train_batches(random_ds, 30, 5, 1, 0, 0, world_size=4)
    with pytest.raises(ValueError, match='rank=4'):
        train_batches(random_ds, 32, 5, 1, 0, 0, rank=4, world_size=4)
    with pytest.raises(ValueError, match='seq_len=0'):
        train_batches(random_ds, 32, 0, 1, 0, 0)
    b = next(iter(train_batches(random_ds, 8, 5, 0, 0, 0)))
    assert b.neg.shape == (8, 5, 0)
    full = MoMDataset(['a', 'b', 'c'], [0, 0, 0], ['a', 'b', 'c'], ['', '', ''], ['u', 'w'], [np.array([0, 1, 2]), np.array([0, 1, 0])])
    with pytest.raises(ValueError, match="'u'.*interacted with all 3 items"):
        list(train_batches(full, 2, 3, 1, 0, 0))


def test_negative_sampling_is_uniform_over_untouched(random_ds):
    ds = random_ds; rng = np.random.default_rng(0)
    users = np.full(20000, 5)
    neg = sample_negatives(ds, users, rng)
    allowed = np.setdiff1d(np.arange(ds.n_items), ds.seqs[5])
    assert set(np.unique(neg)) == set(allowed)
    counts = np.bincount(neg, minlength=ds.n_items)[allowed]
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_eval_batches(random_ds):
    ds = random_ds
    ebs = list(eval_batches(ds, 'test', batch_size=64, max_len=10))
    assert len(ebs) == 5 and sum(len(e) for e in ebs) == ds.n_users
    assert len(eval_batches(ds, 'valid', batch_size=64)) == 5
    e = ebs[1]
    assert isinstance(e, EvalBatch) and e.hist.shape == e.mask.shape == (len(e), 10)
    for r, u in enumerate(e.users.tolist()):
        h, t = history_and_target(ds.seqs[u], 'test')
        assert e.target[r] == t and np.array_equal(e.hist[r][e.mask[r]].numpy(), h[-10:])
        assert (e.hist[r][~e.mask[r]] == 0).all() and e.mask[r][-1]
    v = next(iter(eval_batches(ds, 'valid', users=[4, 1])))
    assert v.users.tolist() == [4, 1] and v.target.tolist() == [ds.seqs[4][-2], ds.seqs[1][-2]]


# ---------------------------------------------------------------- speed and CLI

def test_load_10k_users(tmp_path):
    "A 10k-user data set loads whole and batches into one full epoch (its speed is measured by the bench)."
    rng = np.random.default_rng(0)
    n_items, n_users = 5000, 10000
    items = pd.DataFrame({'item_id': [f'i{k}' for k in range(n_items)], 'modality': 'text',
                          'text': [f'title {k}' for k in range(n_items)], 'image': ''})
    lens = rng.integers(3, 40, n_users)
    user_rows = np.repeat(np.arange(n_users), lens)
    inter = pd.DataFrame({'user_id': [f'u{x}' for x in user_rows],
                          'item_id': [f'i{k}' for k in rng.integers(0, n_items, len(user_rows))],
                          'timestamp': rng.integers(0, 10**9, len(user_rows))})
    ds = load_dataset(write_dataset(tmp_path/'big', items, inter, {}))
    assert ds.n_users == n_users and ds.n_interactions == len(inter)
    assert sum(1 for _ in train_batches(ds, 64, 21, 5, 0, 0)) == 157


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, '-m', 'transrec.data', *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_validate(tmp_path):
    good = write_raw(tmp_path/'good')
    r = run_cli('validate', str(good))
    assert r.returncode == 0, r.stderr
    assert 'items: 5  (text 3, image 2)' in r.stdout and 'interactions: 6  (text 4, image 2)' in r.stdout
    assert 'min 3  median 3  mean 3.00  max 3' in r.stdout and 'OK: usable' in r.stdout
    bad = write_raw(tmp_path/'bad', items=GOOD_ITEMS.replace('v2\timage', 'v2\tvideo'), inter=GOOD_INTER + 'u3\tn1\t1\n')
    r = run_cli('validate', str(bad))
    assert r.returncode == 1
    assert 'ERROR [unknown_modality] items.tsv row 5 (spreadsheet row 6)' in r.stdout and 'Fix:' in r.stdout
    assert 'ERROR [short_user] interactions.tsv' in r.stdout and 'NOT USABLE' in r.stdout


def test_cli_main_in_process(tmp_path, capsys):
    good = write_raw(tmp_path/'good')
    bad = write_raw(tmp_path/'bad', inter=GOOD_INTER + 'u3\tn1\t1\n')
    assert main(['validate', str(good), '--skip-image-decode']) == 0
    assert main(['validate', str(bad)]) == 1
    assert main(['validate', str(bad), '--min-seq-len', '3']) == 0
    out = capsys.readouterr().out
    assert 'WARNING [short_user]' in out and '1 excluded by min_seq_len' in out
    assert main(['validate', str(bad), '--min-seq-len', '2']) == 2 and '--min-seq-len 2 (min_seq_len=2 in Python)' in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(['nonsense'])
    assert ei.value.code != 0
