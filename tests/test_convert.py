"""Tests of transrec.convert: every converter on tiny fixture files written here in the original layout,
read back with transrec.data.load_dataset (plain pandas where the loader is not available)."""
import gzip, json, os, pickle, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transrec import data as tdata
from transrec.convert import (CONVERTERS, ConversionError, IMAGE_OPTIONS, convert, converter_options, from_amazon,
                              from_mind, from_ninerec, from_pixelrec, from_recbole, from_reference, main)
from transrec.core import cli_flag

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- reading a converted folder back
class Loaded:
    "What the tests check, from load_dataset when it exists, else from the TSV files with pandas."
    def __init__(self, path):
        self.path = Path(path)
        self.meta = json.loads((self.path/'meta.json').read_text())
        if hasattr(tdata, 'load_dataset'):
            ds = tdata.load_dataset(self.path, min_seq_len=3)
            self.ds = ds
            self.items = {i: (tdata.MODALITIES[m], t) for i, m, t in zip(ds.item_ids, ds.modality, ds.texts)}
            self.seqs = {u: [str(ds.item_ids[i]) for i in s] for u, s in zip(ds.user_ids, ds.seqs)}
            self.image = lambda iid: ds.load_image(ds.item_index[iid])
        else:   # pragma: no cover - before transrec.data.load_dataset existed
            it = pd.read_csv(self.path/'items.tsv', sep='\t', dtype=str, keep_default_na=False)
            ia = pd.read_csv(self.path/'interactions.tsv', sep='\t', dtype=str, keep_default_na=False)
            self.items = {r.item_id: (r.modality, r.text) for r in it.itertuples()}
            self.seqs = {u: list(g.item_id) for u, g in ia.groupby('user_id', sort=False)}
            refs = dict(zip(it.item_id, it.image))
            self.image = lambda iid: Image.open(self.path/refs[iid]).convert('RGB')
        if hasattr(tdata, 'validate'):
            rep = tdata.validate(self.path, min_seq_len=3)
            assert rep.ok, rep.render()

    def modality(self, iid): return self.items[iid][0]
    def text(self, iid): return self.items[iid][1]
    def problems(self, kind=None):
        return {e['kind']: e for e in self.meta['conversion_problems'] if kind is None or e['kind'] == kind}


def jpg(path, colour, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)
    return path


# ---------------------------------------------------------------- NineRec
def ninerec(root, behaviour='u1\tv1 v2 v3 v4\nu2\tv4 v3 v1\n', items=None, covers=('v2', 'v4')):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root/'QB_behaviour.tsv').write_text(behaviour, encoding='utf-8')
    items = items if items is not None else ('v1,韩国电影,Korean movie\nv2,"猫, 狗",Cats and dogs\n'
                                               'v3,新闻,"News, ""quoted"""\nv4,音乐,Music\n')
    (root/'QB_item.csv').write_bytes(items.encode('utf-8') if isinstance(items, str) else items)
    for c, col in zip(covers, ['red', 'green', 'blue']): jpg(root/'QB_cover'/f'{c}.jpg', col)
    return root


def test_ninerec_default_both_items_order_and_meta(tmp_path):
    d = Loaded(from_ninerec(ninerec(tmp_path/'src'), tmp_path/'out'))
    assert d.seqs == {'u1': ['v1', 'v2', 'v3', 'v4'], 'u2': ['v4', 'v3', 'v1']}
    assert {i: d.modality(i) for i in d.items} == {'v1': 'text', 'v2': 'both', 'v3': 'text', 'v4': 'both'}
    assert d.text('v2') == '猫, 狗' and d.text('v3') == '新闻'
    assert d.image('v2').size == (8, 6) and d.image('v2').getpixel((0, 0))[0] > 200   # red cover, decodable
    m = d.meta
    assert m['synthetic'] is False and m['provenance']['format'] == 'ninerec'
    assert {f['path'] for f in m['provenance']['files']} == {'QB_behaviour.tsv', 'QB_item.csv', 'QB_cover'}
    assert m['provenance']['options']['modality'] == 'both'              # what the default chose
    assert m['conversion_notes']['modality'] == 'both: the default, as some item has a text and a cover'
    assert m['counts'] == dict(users=2, items=4, interactions=7, text_items=2, image_items=0, both_items=2)
    assert [(p['kind'], p['count']) for p in m['conversion_problems']] == [('text_only_item', 2)]


def test_ninerec_auto_modality_is_the_papers_mom(tmp_path):
    d = Loaded(from_ninerec(ninerec(tmp_path/'src'), tmp_path/'out', modality='auto'))
    assert {i: d.modality(i) for i in d.items} == {'v1': 'text', 'v2': 'image', 'v3': 'text', 'v4': 'image'}
    assert d.text('v2') == '猫, 狗'                                      # image items keep their text
    assert d.meta['counts'] == dict(users=2, items=4, interactions=7, text_items=2, image_items=2)
    assert d.meta['conversion_problems'] == [] and 'modality' not in d.meta['conversion_notes']


def test_ninerec_space_separated_english_and_header(tmp_path):
    src = ninerec(tmp_path/'src', behaviour='u1 v1 v2 v3\n\nu2 v3 v2 v1\n',
                  items='item_id,title_zh,title_en\nv1,一,One\nv2,二,Two\nv3,三,Three\nv4,四,Four\n')
    d = Loaded(from_ninerec(src, tmp_path/'out', text_columns=(2,), modality='text'))
    assert d.seqs == {'u1': ['v1', 'v2', 'v3'], 'u2': ['v3', 'v2', 'v1']}
    assert d.text('v2') == 'Two' and set(m for m, _ in d.items.values()) == {'text'}
    assert not (d.path/'images').exists()
    d = Loaded(from_ninerec(src, tmp_path/'out2', text_columns=('title_zh', 'title_en')))
    assert d.text('v1') == '一 One'


def test_ninerec_modality_image_drops_items_without_cover_and_reports(tmp_path):
    src = ninerec(tmp_path/'src', behaviour='u1\tv1 v2 v3 v4 v2\nu2\tv4 v2 v4\n')
    d = Loaded(from_ninerec(src, tmp_path/'out', modality='image'))
    assert set(d.items) == {'v2', 'v4'} and d.seqs['u1'] == ['v2', 'v4', 'v2']
    p = d.problems()['missing_cover']
    assert p['count'] == 2 and p['file'] == 'QB_item.csv' and {e['row'] for e in p['examples']} == {1, 3}
    assert d.meta['conversion_notes']['interactions_dropped_with_items'] == 2
    with pytest.raises(ConversionError, match=r"QB_item.csv, line 1: .*v1"):
        from_ninerec(src, tmp_path/'out3', modality='image', on_problem='error')


def test_ninerec_malformed_line(tmp_path):
    src = ninerec(tmp_path/'src', behaviour='u1\tv1 v2 v3\nu2\t\nu3\tv1 v2 v3\n')
    with pytest.raises(ConversionError,
                       match=r'QB_behaviour.tsv, line 2: .*without items.*user_id<TAB>item1'):
        from_ninerec(src, tmp_path/'out')
    assert not (tmp_path/'out').exists()               # nothing half-written
    d = Loaded(from_ninerec(src, tmp_path/'out', bad_rows='report'))
    assert set(d.seqs) == {'u1', 'u3'}
    assert d.problems()['malformed_row']['examples'][0]['row'] == 2


def test_ninerec_unknown_item_reported_or_error(tmp_path):
    src = ninerec(tmp_path/'src', behaviour='u1\tv1 v2 v9 v3\nu2\tv3 v8 v2 v1 v9\n')
    d = Loaded(from_ninerec(src, tmp_path/'out'))
    assert d.seqs == {'u1': ['v1', 'v2', 'v3'], 'u2': ['v3', 'v2', 'v1']}
    p = d.problems()['unknown_item']
    assert p['count'] == 3 and p['file'] == 'QB_behaviour.tsv'
    assert [e['row'] for e in p['examples']] == [1, 2, 2] and "'v9'" in p['examples'][0]['detail']
    with pytest.raises(ConversionError, match=r"QB_behaviour.tsv, line 1: .*'v9'"):
        from_ninerec(src, tmp_path/'out2', on_problem='error')


def test_ninerec_missing_files_listed(tmp_path):
    (tmp_path/'src').mkdir()
    (tmp_path/'src'/'notes.txt').write_text('x')
    with pytest.raises(ConversionError) as e:
        from_ninerec(tmp_path/'src', tmp_path/'out')
    msg = str(e.value)
    assert '*_behaviour.tsv' in msg and 'behaviour=PATH' in msg and 'notes.txt' in msg
    (tmp_path/'src'/'QB_behaviour.tsv').write_text('u1\tv1 v2 v3\n')
    with pytest.raises(ConversionError, match=r'no item content.*_item.csv.*_cover'):
        from_ninerec(tmp_path/'src', tmp_path/'out')
    with pytest.raises(ConversionError, match=r'not an existing file'):
        from_ninerec(tmp_path/'src', tmp_path/'out', items='nope.csv')
    with pytest.raises(ConversionError, match=r'does not exist'):
        from_ninerec(tmp_path/'nowhere', tmp_path/'out')


def test_ninerec_non_utf8(tmp_path):
    bad = 'v1,一,One\nv2,二,Two\n'.encode('utf-8') + 'v3,'.encode() + 'café'.encode('latin-1') + b',Three\nv4,x,y\n'
    src = ninerec(tmp_path/'src', items=bad)
    with pytest.raises(ConversionError,
                       match=r"QB_item.csv, line 3: bytes .* not UTF-8.*encoding_errors='replace'"):
        from_ninerec(src, tmp_path/'out')
    d = Loaded(from_ninerec(src, tmp_path/'out', encoding_errors='replace'))
    assert d.text('v3') == 'caf\ufffd'
    assert d.problems()['non_utf8']['count'] == 1 and d.problems()['non_utf8']['examples'][0]['row'] == 3


def test_ninerec_corrupt_cover_falls_back_to_text(tmp_path):
    src = ninerec(tmp_path/'src')
    (src/'QB_cover'/'v2.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    d = Loaded(from_ninerec(src, tmp_path/'out'))
    assert d.modality('v2') == 'text' and d.modality('v4') == 'both'
    assert d.problems()['corrupt_image']['count'] == 1 and d.problems()['text_only_item']['count'] == 3
    # not checked: copied, and the validator objects
    out = from_ninerec(src, tmp_path/'out2', check_images=False)
    if hasattr(tdata, 'validate'):
        rep = tdata.validate(out)
        assert not rep.ok and [p.kind for p in rep.errors] == ['corrupt_image']


def test_overwrite_rules(tmp_path):
    src = ninerec(tmp_path/'src')
    out = from_ninerec(src, tmp_path/'out')
    with pytest.raises(ConversionError, match='overwrite=True'):
        from_ninerec(src, out)
    from_ninerec(src, out, overwrite=True, modality='text')
    assert Loaded(out).modality('v2') == 'text' and not (out/'images').exists()
    (tmp_path/'precious').mkdir()
    (tmp_path/'precious'/'thesis.tex').write_text('x')
    with pytest.raises(ConversionError, match='not a MoM data set'):
        from_ninerec(src, tmp_path/'precious', overwrite=True)
    assert (tmp_path/'precious'/'thesis.tex').exists()
    with pytest.raises(ConversionError, match=r'unknown option.*colour.*text_columns'):
        from_ninerec(src, tmp_path/'o4', colour='red')
    with pytest.raises(ConversionError, match=r"modality='video'"):
        from_ninerec(src, tmp_path/'o5', modality='video')


def test_lmdb_image_store(tmp_path):
    d = Loaded(from_ninerec(ninerec(tmp_path/'src'), tmp_path/'out', image_store='lmdb'))
    assert (d.path/'images.lmdb').is_dir() and not (d.path/'images').exists()
    assert d.image('v4').size == (8, 6)


# ---------------------------------------------------------------- PixelRec / MicroLens
def test_pixelrec_layout(tmp_path):
    src = tmp_path/'Pixel200K'
    src.mkdir()
    (src/'Pixel200K.csv').write_text('item_id,user_id,timestamp\ni1,u1,30\ni2,u1,10\ni3,u1,20\ni1,u2,1\ni3,u2,2\ni2,u2,3\n'
                                     'i4,u1,40\ni4,u2,4\ni1,u1,50\n')
    (src/'item_info.csv').write_text('item_id,view_number,comment_number,title,tag,description\n'
                                     'i1,10,1,Cute cat,pets,"a cat, '
                                     'sleeping"\ni2,5,0,Cooking,food,pasta\ni3,7,2,,none,\n'
                                     'i4,1,1,Skiing,sport,snow\n')
    for i, c in [('i1', 'red'), ('i3', 'blue')]: jpg(src/'covers'/f'{i}.jpg', c)
    d = Loaded(from_pixelrec(src, tmp_path/'out'))
    assert d.seqs == {'u1': ['i2', 'i3', 'i1', 'i4', 'i1'], 'u2': ['i1', 'i3', 'i2', 'i4']}
    assert (d.modality('i1'), d.modality('i2'), d.modality('i3')) == ('both', 'text', 'image')
    assert d.text('i1') == 'Cute cat' and d.text('i3') == ''
    assert d.image('i3').getpixel((0, 0))[2] > 100
    ia = pd.read_csv(d.path/'interactions.tsv', sep='\t', dtype=str)
    assert list(ia.timestamp[:3]) == ['10', '20', '30']
    d = Loaded(from_pixelrec(src, tmp_path/'out2', text_fields=('title', 'description'), text_sep=' - ',
                             modality='text',
                             dedup=True))
    assert d.text('i1') == 'Cute cat - a cat, sleeping'
    assert 'i3' not in d.items and d.problems()['empty_text']['count'] == 1
    assert d.seqs == {'u1': ['i2', 'i1', 'i4'], 'u2': ['i1', 'i2', 'i4']}
    assert d.meta['conversion_notes'] == dict(duplicates_removed=1, interactions_dropped_with_items=2,
                                              unused_catalog_items_dropped=0)


def test_microlens_layout_and_dates(tmp_path):
    src = tmp_path/'MicroLens-50k'
    src.mkdir()
    (src/'MicroLens-50k_pairs.csv').write_text('user,item,timestamp\n7,100,2023-01-03\n7,101,2023-01-01\n7,102,2023-01-02\n'
                                               '8,101,2023-02-01\n8,100,2023-02-02\n8,102,2023-02-03\n')
    (src/'MicroLens-50k_titles.csv').write_text('item,title\n100,Funny dog\n101,News today\n102,Dance\n')
    for i in ('100', '102'): jpg(src/'MicroLens-50k_covers'/f'{i}.jpg', 'white')
    d = Loaded(convert('microlens', src, tmp_path/'out'))
    assert d.seqs == {'7': ['101', '102', '100'], '8': ['101', '100', '102']}
    assert d.modality('100') == 'both' and d.modality('101') == 'text' and d.text('100') == 'Funny dog'
    ia = pd.read_csv(d.path/'interactions.tsv', sep='\t', dtype=str)
    assert ia.timestamp[0] == str(int(pd.Timestamp('2023-01-01', tz='UTC').timestamp()))


def test_pixelrec_headerless_and_column_errors(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    (src/'inter.csv').write_text('a,x,3\na,y,1\na,z,2\n')
    jpg(src/'covers'/'x.jpg', 'red')
    jpg(src/'covers'/'y.jpg', 'red')
    jpg(src/'covers'/'z.jpg', 'red')
    with pytest.raises(ConversionError, match=r'interaction CSV.*interactions=PATH'):
        from_pixelrec(src, tmp_path/'out')
    d = Loaded(from_pixelrec(src, tmp_path/'out', interactions='inter.csv', header=False))
    assert d.seqs == {'a': ['y', 'z', 'x']}
    (src/'inter2.csv').write_text('uid,iid,when\na,x,bad-date\na,y,1\na,z,2\n')
    with pytest.raises(ConversionError, match=r"no timestamp column named 'time'.*\['uid', 'iid', 'when'\]"):
        from_pixelrec(src, tmp_path/'o2', interactions='inter2.csv', columns=dict(timestamp='time'))
    with pytest.raises(ConversionError,
                       match=r"inter2.csv, line 2: timestamp 'bad-date' is not a finite number.*ISO 8601 date"):
        from_pixelrec(src, tmp_path/'o2', interactions='inter2.csv', columns=dict(timestamp='when'))
    with pytest.raises(ConversionError, match=r'--header false \(header=False in Python\) needs 0-based column'):
        from_pixelrec(src, tmp_path/'o2', interactions='inter.csv', header=False, columns=dict(user='uid'))


# ---------------------------------------------------------------- MIND
def mind(root):
    news = ('N1\tsports\tsoccer\tGoal!\tA late goal.\thttps://x/1\t[]\t[]\n'
            'N2\tnews\tworld\tElection day\tVotes counted.\thttps://x/2\t[]\t[]\n'
            'N3\tfood\trecipes\tPasta tips\t\thttps://x/3\t[]\t[]\n'
            'N4\tweather\tus\tStorm ahead\tRain.\thttps://x/4\t[]\t[]\n')
    tr, dv = Path(root)/'MINDsmall_train', Path(root)/'MINDsmall_dev'
    tr.mkdir(parents=True)
    dv.mkdir(parents=True)
    (tr/'news.tsv').write_text(news)
    (dv/'news.tsv').write_text(news.splitlines(True)[1]
                               + 'N5\tauto\tcars\tNew EV\tFast.\thttps://x/5\t[]\t[]\n')
    (tr/'behaviors.tsv').write_text('1\tU1\t11/12/2019 8:55:22 AM\tN1 N2\tN3-1 N4-0\n'
                                    '2\tU2\t11/11/2019 9:00:00 PM\tN4\tN1-0 N2-1 N3-1\n'
                                    '3\tU1\t11/11/2019 1:00:00 PM\tN1 N2\tN4-1 N3-0\n')
    (dv/'behaviors.tsv').write_text('4\tU1\t11/15/2019 10:00:00 AM\tN1 N2\tN5-1 N3-1\n'
                                    '5\tU3\t11/15/2019 11:00:00 AM\tN5 N4\tN1-1 N2\n')
    return Path(root)


def test_mind_merges_splits_history_first_dedup(tmp_path):
    d = Loaded(from_mind(mind(tmp_path/'src'), tmp_path/'out'))
    # U1: history N1 N2, then clicks by impression time: N4 (11/11), N3 (11/12), N5 (11/15; N3 again deduplicated)
    assert d.seqs == {'U1': ['N1', 'N2', 'N4', 'N3', 'N5'], 'U2': ['N4', 'N2', 'N3'],
                      'U3': ['N5', 'N4', 'N1']}
    assert d.text('N1') == 'Goal!' and d.text('N5') == 'New EV'
    assert set(m for m, _ in d.items.values()) == {'text'}
    notes = d.meta['conversion_notes']
    assert notes['unlabeled_impressions'] == 1 and notes['duplicates_removed'] == 5   # repeated histories + N3
    assert len(d.meta['provenance']['files']) == 4
    ia = pd.read_csv(d.path/'interactions.tsv', sep='\t', dtype=str)
    u1 = ia[ia.user_id == 'U1'].timestamp.astype(int).tolist()
    assert u1 == sorted(u1) and u1[0] == u1[1] == u1[2]           # history dated at the first impression


def test_mind_text_fields_and_errors(tmp_path):
    src = mind(tmp_path/'src')
    d = Loaded(from_mind(src/'MINDsmall_train', tmp_path/'out',
                         text_fields=('category', 'title', 'abstract')))
    assert d.text('N1') == 'sports | Goal! | A late goal.' and d.text('N3') == 'food | Pasta tips'
    with pytest.raises(ConversionError, match='not MIND news fields'):
        from_mind(src, tmp_path/'o2', text_fields=('body',))
    with open(src/'MINDsmall_dev'/'behaviors.tsv', 'a') as f:
        f.write('6\tU4\t11/15/2019 11:00:00 AM\tN1\tN2-x\n')
    with pytest.raises(ConversionError,
                       match=r"MINDsmall_dev/behaviors.tsv, line 3: impression token.*'N2-x'"):
        from_mind(src, tmp_path/'o3')
    with pytest.raises(ConversionError, match=r'news.tsv'):
        from_mind(src/'MINDsmall_train', tmp_path/'o4', news=[])
    with pytest.raises(ConversionError, match='mind has no images'):
        from_mind(src, tmp_path/'o5', modality='image')


# ---------------------------------------------------------------- Amazon
def write_jsonl(path, rows, gz=False):
    text = ''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows).encode('utf-8')
    path.write_bytes(gzip.compress(text) if gz else text)


def test_amazon_2014_python_literal_meta_gz(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    write_jsonl(src/'reviews_Toys_5.json.gz', [dict(reviewerID='A1', asin='B2', unixReviewTime=200),
                                               dict(reviewerID='A1', asin='B1', unixReviewTime=100),
                                               dict(reviewerID='A1', asin='B3', unixReviewTime=300),
                                               dict(reviewerID='A2', asin='B3', unixReviewTime=5),
                                               dict(reviewerID='A2', asin='B2', unixReviewTime=6),
                                               dict(reviewerID='A2', asin='B1', unixReviewTime=7)], gz=True)
    write_jsonl(src/'meta_Toys.json.gz',
                ["{'asin': 'B1', 'title': 'Yo-yo', 'categories': [['Toys', 'Classic']]}",
                                          "{'asin': 'B2', 'title': 'Kite &amp; string', 'imUrl': "
                                          "'http://x/I/kite.jpg'}",
                                          "{'asin': 'B3', 'title': 'Ball'}"], gz=True)
    d = Loaded(from_amazon(src, tmp_path/'out', text_fields=('title', 'categories')))
    assert d.seqs == {'A1': ['B1', 'B2', 'B3'], 'A2': ['B3', 'B2', 'B1']}
    assert d.text('B1') == 'Yo-yo | Toys, Classic' and d.text('B2') == 'Kite & string'
    assert d.meta['conversion_notes']['timestamp_unit'] == 's'
    # a local image folder: by item id, or by the file name of an image URL
    jpg(tmp_path/'imgs'/'B1.jpg', 'red')
    jpg(tmp_path/'imgs'/'kite.jpg', 'blue')
    d = Loaded(from_amazon(src, tmp_path/'out2', images=tmp_path/'imgs'))
    assert (d.modality('B1'), d.modality('B2'), d.modality('B3')) == ('both', 'both', 'text')
    d = Loaded(from_amazon(src, tmp_path/'out3', images=tmp_path/'imgs', modality='auto'))
    assert (d.modality('B1'), d.modality('B2'), d.modality('B3')) == ('image', 'image', 'text')
    assert d.image('B2').getpixel((1, 1))[2] > 100


def test_amazon_2023_fields_unknown_item_and_bad_json(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    revs = [dict(user_id='U', asin='X1', parent_asin='P1', timestamp=1_600_000_003_000),
            dict(user_id='U', asin='X2', parent_asin='P2', timestamp=1_600_000_001_000),
            dict(user_id='U', asin='X9', parent_asin='P9', timestamp=1_600_000_004_000),
            dict(user_id='U', asin='X3', parent_asin='P3', timestamp=1_600_000_002_000)]
    write_jsonl(src/'Toys_and_Games.jsonl', revs)
    write_jsonl(src/'meta_Toys_and_Games.jsonl',
                [dict(parent_asin=p, title=t, images=[dict(large=f'https://m/{p}.jpg')])
                                                  for p,
                                                  t in [('P1', 'Robot'), ('P2', 'Blocks'), ('P3', 'Doll')]])
    d = Loaded(from_amazon(src, tmp_path/'out'))
    assert d.seqs == {'U': ['P2', 'P3', 'P1']} and d.text('P3') == 'Doll'
    p = d.problems()['unknown_item']
    assert p['count'] == 1 and p['file'] == 'Toys_and_Games.jsonl' and p['examples'][0]['row'] == 3
    assert d.meta['conversion_notes']['timestamp_unit'] == 'ms'
    with open(src/'Toys_and_Games.jsonl', 'a') as f: f.write('{"user_id": "U", "parent_asin": \n')
    with pytest.raises(ConversionError,
                       match=r'Toys_and_Games.jsonl, line 5: review line is not a JSON object'):
        from_amazon(src, tmp_path/'o2')
    (src/'more_reviews.jsonl').write_text('')
    with pytest.raises(ConversionError, match=r'several review files.*reviews=PATH'):
        from_amazon(src, tmp_path/'o3')
    with pytest.raises(ConversionError, match=r"images=FOLDER"):
        from_amazon(src, tmp_path/'o4', reviews='Toys_and_Games.jsonl', modality='image', bad_rows='report')


# ---------------------------------------------------------------- RecBole
def recbole(root):
    root = Path(root)
    root.mkdir(parents=True)
    (root/'ml.inter').write_text('user_id:token\titem_id:token\trating:float\ttimestamp:float\n'
                                 '1\t10\t5\t978300760\n1\t11\t3\t978300700\n1\t12\t4\t978300800\n'
                                 '2\t12\t4\t1\n2\t10\t4\t2\n2\t11\t4\t3\n')
    (root/'ml.item').write_text('item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\tscore:float\n'
                                '10\tToy Story\t1995\tAnimation '
                                'Comedy\t8.1\n11\tJumanji\t1995\tAdventure\t6.9\n'
                                '12\tHeat\t1995\tAction Crime\t8.2\n')
    return root


def test_recbole_default_text_order_and_explicit_fields(tmp_path):
    d = Loaded(from_recbole(recbole(tmp_path/'src'), tmp_path/'out'))
    assert d.seqs == {'1': ['11', '10', '12'], '2': ['12', '10', '11']}
    assert d.text('10') == 'Toy Story | 1995 | Animation Comedy'           # token/token_seq fields in header order
    assert d.meta['provenance']['options']['text_fields'] == ['movie_title', 'release_year', 'genre']
    d = Loaded(from_recbole(tmp_path/'src', tmp_path/'out2', text_fields=('genre', 'movie_title'),
                            text_sep='; '))
    assert d.text('12') == 'Action Crime; Heat'


def test_recbole_errors(tmp_path):
    src = recbole(tmp_path/'src')
    with pytest.raises(ConversionError, match=r"text field\(s\) \['plot'\] not in the item header"):
        from_recbole(src, tmp_path/'o', text_fields=('plot',))
    with open(src/'ml.inter', 'a') as f: f.write('3\t10\n')
    with pytest.raises(ConversionError, match=r'ml.inter, line 8: .*2 tab-separated fields, the header 4'):
        from_recbole(src, tmp_path/'o')
    (src/'ml.item').write_text('item_id\ttitle\n10\tx\n')
    with pytest.raises(ConversionError, match=r"ml.item, line 1: header field 'item_id' is not NAME:TYPE"):
        from_recbole(src, tmp_path/'o')
    (src/'ml.item').unlink()
    with pytest.raises(ConversionError, match=r'item file \(NAME.item\).*\*\.item'):
        from_recbole(src, tmp_path/'o')


# ---------------------------------------------------------------- reference TransRec layout
class LMDB_Image:   # the reference code's record class (get_lmdb.py / generate_lmdb.py)
    def __init__(self, image, id):
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.id = id


def put_lmdb(path, entries, subdir=True):
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 24, subdir=subdir)
    with env.begin(write=True) as txn:
        for k, v in entries.items(): txn.put(k.encode(), v)
        txn.put(b'__keys__', pickle.dumps([k.encode() for k in entries]))
        txn.put(b'__len__', pickle.dumps(len(entries)))
    env.close()


def img(c, shape=(6, 7, 3)):
    a = np.zeros(shape, np.uint8)
    a[..., 0] = c
    a[..., 1] = 255 - c
    return a


def test_reference_2d_padded_lmdb_image_pickles(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    np.save(src/'users.npy',
            np.array([['N1', 'v1', 'N2', 'v2'], ['v2', 'N1', 'v1', ''], ['N2', 'N2', 'v1', '']],
                     dtype=object))
    (src/'news_title.txt').write_text('N1 Stocks rally on   Monday\nN2 New phone\n')
    put_lmdb(src/'bili.lmdb',
             {'v1': pickle.dumps(LMDB_Image(img(10), 'v1')), 'v2': pickle.dumps(LMDB_Image(img(200), 'v2'))})
    d = Loaded(from_reference(src, tmp_path/'out'))
    assert d.seqs == {'u0': ['N1', 'v1', 'N2', 'v2'], 'u1': ['v2', 'N1', 'v1'], 'u2': ['N2', 'N2', 'v1']}
    assert d.text('N1') == 'Stocks rally on   Monday' and d.modality('v1') == 'image' and d.modality('N2') == 'text'
    assert np.array_equal(np.asarray(d.image('v2')), img(200))            # lossless PNG of the stored pixels
    assert d.meta['provenance']['format'] == 'reference'


def test_reference_object_array_dict_and_other_layouts(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    seqs = np.empty(2, dtype=object)
    seqs[0] = ['a', 'b', 'c']
    seqs[1] = np.array(['c', 'a', 'b', 'a'])
    np.save(src/'seqs.npy', seqs)
    put_lmdb(src/'raw.lmdb', {k: img(c).tobytes() for k, c in [('a', 1), ('b', 2), ('c', 3)]}, subdir=False)
    with pytest.raises(ConversionError, match=r"--image-layout raw \(image_layout='raw' in Python\) and --image-shape"):
        from_reference(src, tmp_path/'out', on_problem='error')
    d = Loaded(from_reference(src, tmp_path/'out', image_shape=(6, 7, 3), image_store='lmdb'))
    assert d.seqs == {'u0': ['a', 'b', 'c'], 'u1': ['c', 'a', 'b', 'a']}
    assert np.array_equal(np.asarray(d.image('c')), img(3))
    # dict of sequences + pickled CHW ndarrays, BGR
    (src/'seqs.npy').unlink()
    (src/'raw.lmdb').unlink()
    (src/'raw.lmdb-lock').unlink(missing_ok=True)
    np.save(src/'seqs.npy', np.array({'alice': ['a', 'b', 'c'], 'bob': 'b c a'}, dtype=object))
    put_lmdb(src/'nd.lmdb',
             {k: pickle.dumps(img(c)[..., ::-1].transpose(2, 0, 1).copy()) for k,
              c in [('a', 1), ('b', 2), ('c', 3)]})
    d = Loaded(from_reference(src, tmp_path/'out2', image_layout='ndarray', channel_order='bgr'))
    assert d.seqs == {'alice': ['a', 'b', 'c'], 'bob': ['b', 'c', 'a']}
    assert np.array_equal(np.asarray(d.image('b')), img(2))


def test_reference_unsafe_pickle_and_unknown_items(tmp_path):
    src = tmp_path/'src'
    src.mkdir()
    np.save(src/'seqs.npy', np.array([['t1', 't2', 'v1', 'zz'], ['t2', 't1', 'v1', 'v2']], dtype=object))
    (src/'texts.tsv').write_text('t1\tfirst text\nt2 second text\nv2 has a title too\n')

    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned > /dev/null',))
    put_lmdb(src/'c.lmdb', {'v1': pickle.dumps(LMDB_Image(img(5), 'v1')), 'v2': pickle.dumps(Evil())})
    d = Loaded(from_reference(src, tmp_path/'out'))
    assert d.modality('v2') == 'text' and d.text('v2') == 'has a title too'       # bad cover -> its text
    assert "refusing to load" in d.problems()['corrupt_image']['examples'][0]['detail']
    assert d.problems()['unknown_item']['count'] == 1 and d.seqs['u0'] == ['t1', 't2', 'v1']
    assert d.text('t1') == 'first text'
    with pytest.raises(ConversionError, match=r'a 1-D <U\d+ array is not a set of sequences'):
        np.save(src/'seqs.npy', np.array(['a', 'b']))
        from_reference(src, tmp_path/'o2')


# ---------------------------------------------------------------- items with a text and a cover (issue 21)
# a `both` item fills `text` and `image` (the format: nbs/01_data); `modality` left out writes both items where
# some item has a text and a cover, else converts as 'auto' (a MoM source)


def pixelrec(root):
    "PixelRec layout: i1 title + cover, i2 title only, i3 cover only (empty title), i4 title only."
    src = Path(root)
    src.mkdir(parents=True)
    (src/'Pixel200K.csv').write_text('item_id,user_id,timestamp\ni1,u1,30\ni2,u1,10\ni3,u1,20\ni1,u2,1\ni3,u2,2\n'
                                     'i2,u2,3\ni4,u1,40\ni4,u2,4\n')
    (src/'item_info.csv').write_text('item_id,title\ni1,Cute cat\ni2,Cooking\ni3,\ni4,Skiing\n')
    for i, c in [('i1', 'red'), ('i3', 'blue')]: jpg(src/'covers'/f'{i}.jpg', c)
    return src


def amazon(root, images=('B1', 'kite')):
    "Amazon 2014 layout: B1 (cover by id), B2 (cover by the file name of its image URL), B3 (no cover)."
    src = Path(root)/'src'
    src.mkdir(parents=True)
    write_jsonl(src/'reviews_Toys_5.json', [dict(reviewerID='A1', asin=a, unixReviewTime=t)
                                            for a, t in [('B1', 1), ('B2', 2), ('B3', 3)]])
    write_jsonl(src/'meta_Toys.json', [dict(asin='B1', title='Yo-yo'),
                                       dict(asin='B2', title='Kite', imUrl='http://x/I/kite.jpg'),
                                       dict(asin='B3', title='Ball')])
    for name, colour in zip(images, ('red', 'blue')): jpg(Path(root)/'imgs'/f'{name}.jpg', colour)
    return src


def reference(root):
    "Reference layout: N1 text, v1 text + LMDB cover, v2 LMDB cover only."
    src = Path(root)
    src.mkdir(parents=True)
    np.save(src/'users.npy', np.array([['N1', 'v1', 'v2'], ['v2', 'v1', 'N1']], dtype=object))
    (src/'titles.txt').write_text('N1 Stocks rally\nv1 A video with a title\n')
    put_lmdb(src/'bili.lmdb',
             {'v1': pickle.dumps(LMDB_Image(img(10), 'v1')), 'v2': pickle.dumps(LMDB_Image(img(200), 'v2'))})
    return src


def test_ninerec_both_items_and_one_part_fallbacks(tmp_path):
    src = ninerec(tmp_path/'src', behaviour='u1\tv1 v2 v3 v4 v5\nu2\tv4 v3 v5\n')
    jpg(src/'QB_cover'/'v5.jpg', 'white')                   # a cover without an item row: no text
    d = Loaded(from_ninerec(src, tmp_path/'out', modality='both'))
    assert {i: d.modality(i) for i in d.items} == {'v1': 'text', 'v2': 'both', 'v3': 'text', 'v4': 'both',
                                                   'v5': 'image'}
    assert d.text('v2') == '猫, 狗' and d.image('v2').getpixel((0, 0))[0] > 200      # both parts, red cover
    text_only, image_only = d.problems()['text_only_item'], d.problems()['image_only_item']
    assert (text_only['count'], text_only['file'], [e['row'] for e in text_only['examples']]) == (2, 'QB_item.csv',
                                                                                                [1, 3])
    assert (image_only['count'], image_only['file']) == (1, 'QB_cover')
    assert d.meta['provenance']['options']['modality'] == 'both'
    assert d.seqs == {'u1': ['v1', 'v2', 'v3', 'v4', 'v5'], 'u2': ['v4', 'v3', 'v5']}      # nothing dropped


def test_pixelrec_and_microlens_both_items(tmp_path):
    d = Loaded(from_pixelrec(pixelrec(tmp_path/'px'), tmp_path/'out', modality='both'))
    assert [d.modality(i) for i in ('i1', 'i2', 'i3', 'i4')] == ['both', 'text', 'image', 'text']
    assert d.text('i1') == 'Cute cat' and d.image('i1').getpixel((0, 0))[0] > 200
    assert d.problems()['text_only_item']['count'] == 2 and d.problems()['image_only_item']['count'] == 1
    assert d.problems()['image_only_item']['examples'][0] == dict(row=4, detail="item 'i3'")
    src = tmp_path/'MicroLens-50k'
    src.mkdir()
    (src/'pairs.csv').write_text('user,item,timestamp\n7,100,3\n7,101,1\n7,102,2\n')
    (src/'titles.csv').write_text('item,title\n100,Funny dog\n101,News today\n102,Dance\n')
    for i in ('100', '102'): jpg(src/'covers'/f'{i}.jpg', 'white')
    d = Loaded(convert('microlens', src, tmp_path/'ml', modality='both'))
    assert [d.modality(i) for i in ('100', '101', '102')] == ['both', 'text', 'both']
    assert d.text('102') == 'Dance' and d.image('102').size == (8, 6)


def test_amazon_both_items_with_local_covers(tmp_path):
    src = amazon(tmp_path)
    d = Loaded(from_amazon(src, tmp_path/'out', images=tmp_path/'imgs', modality='both'))
    assert [d.modality(i) for i in ('B1', 'B2', 'B3')] == ['both', 'both', 'text']
    assert d.text('B2') == 'Kite' and d.image('B2').getpixel((1, 1))[2] > 100      # cover found by URL file name
    assert d.problems()['text_only_item']['examples'][0] == dict(row=3, detail="item 'B3'")


def test_reference_both_items_with_lmdb_covers(tmp_path):
    d = Loaded(from_reference(reference(tmp_path/'src'), tmp_path/'out', modality='both'))
    assert [d.modality(i) for i in ('N1', 'v1', 'v2')] == ['text', 'both', 'image']
    assert d.text('v1') == 'A video with a title' and np.array_equal(np.asarray(d.image('v1')), img(10))


def test_default_modality_follows_the_source(tmp_path):
    "Left out, `modality` is 'both' where some item has both parts; a text-only or MoM source converts as before"
    d = Loaded(from_ninerec(ninerec(tmp_path/'qb', covers=()), tmp_path/'o1'))         # no covers: no error
    assert {m for m, _ in d.items.values()} == {'text'} and d.meta['conversion_problems'] == []
    assert d.meta['provenance']['options']['modality'] == 'auto'
    src = reference(tmp_path/'ref')
    d = Loaded(from_reference(src, tmp_path/'o2'))                  # v1 has a title and a cover
    assert [d.modality(i) for i in ('N1', 'v1', 'v2')] == ['text', 'both', 'image']
    assert [(p['kind'], p['count']) for p in d.meta['conversion_problems']] == [('text_only_item', 1),
                                                                                 ('image_only_item', 1)]
    (src/'titles.txt').write_text('N1 Stocks rally\n')                # now each item has one part: MoM
    d = Loaded(from_reference(src, tmp_path/'o3'))
    assert [d.modality(i) for i in ('N1', 'v1', 'v2')] == ['text', 'image', 'image']
    assert d.meta['conversion_problems'] == []                        # no fallback counted on a MoM source
    assert d.meta['conversion_notes']['modality'] == 'auto: the default, as no item has a text and a cover'


def test_both_on_a_source_without_covers_is_one_line_before_anything_is_written(tmp_path):
    "A converter asked for `both` on a source without covers names the option and the fix (issue 21, bad input)."
    no_covers = ninerec(tmp_path/'qb', covers=())
    px = pixelrec(tmp_path/'px')
    shutil.rmtree(px/'covers')
    amz = amazon(tmp_path/'amz')
    ref = reference(tmp_path/'ref')
    shutil.rmtree(ref/'bili.lmdb')
    cases = [(from_ninerec, no_covers, r'the source has no \*_cover/ folder of ITEM_ID.jpg: pass --covers PATH '
                                       r'\(covers=PATH in Python\), or --modality text'),
             (from_pixelrec, px, r'the source has no \*cover\*/ folder of ITEM_ID.jpg: pass --covers PATH'),
             (from_amazon, amz, r'the source has no local image folder \(Amazon image URLs are not downloaded\): '
                                r'pass --images FOLDER'),
             (from_reference, ref, r'the source has no \*.lmdb of covers: pass --lmdb PATH')]
    for converter, src, fix in cases:
        out = tmp_path/f'out-{converter.__name__}'
        with pytest.raises(ConversionError) as e:
            converter(src, out, modality='both')
        message = str(e.value)
        assert '\n' not in message, message
        assert re.search(r"--modality both \(modality='both' in Python\) needs item texts and covers, and " + fix,
                         message), message
        assert not out.exists() and not list(tmp_path.glob(f'.out-{converter.__name__}*'))   # nothing half-written
    (no_covers/'QB_item.csv').unlink()
    jpg(no_covers/'QB_cover'/'v1.jpg', 'red')
    with pytest.raises(ConversionError, match=r'the source has no \*_item.csv: pass --items PATH .* or --modality '
                                              r"image \(modality='image' in Python\) for image items"):
        from_ninerec(no_covers, tmp_path/'o2', modality='both')
    with pytest.raises(ConversionError, match=r"mind has no images .* modality='both' cannot be met"):
        from_mind(mind(tmp_path/'mind'), tmp_path/'o3', modality='both')
    with pytest.raises(ConversionError, match=r"recbole has no images .* modality='both' cannot be met"):
        from_recbole(recbole(tmp_path/'rb'), tmp_path/'o4', modality='both')
    assert not any((tmp_path/name).exists() for name in ('o2', 'o3', 'o4'))


def test_both_item_text_must_show_something(tmp_path):
    "A title of zero-width characters is no text part: the item keeps its cover (the format refuses that both)"
    titles = 'v1,\u200b\u200b,x\nv2,猫,Cats\nv3,新闻,News\nv4,音乐,Music\n'
    src = ninerec(tmp_path/'src', items=titles, covers=('v1', 'v4'))
    d = Loaded(from_ninerec(src, tmp_path/'out', modality='both'))
    assert [d.modality(i) for i in ('v1', 'v2', 'v4')] == ['image', 'text', 'both']
    assert d.problems()['image_only_item']['examples'][0] == dict(row=1, detail="item 'v1'")


def test_both_where_no_item_has_both_parts_is_refused(tmp_path):
    "Covers named otherwise than the item ids: `both` would write no both item, so nothing is written."
    src = amazon(tmp_path, images=('X1', 'X2'))
    with pytest.raises(ConversionError, match=r"none of the 3 items has both a text and a \(decodable\) cover, so "
                                              r"nothing was written; check that the covers are named by item id"):
        from_amazon(src, tmp_path/'out', images=tmp_path/'imgs', modality='both')
    assert not (tmp_path/'out').exists()


def test_cli_both_on_a_source_without_covers(tmp_path, capsys):
    src = ninerec(tmp_path/'src', covers=())
    assert main(['ninerec', str(src), str(tmp_path/'out'), '--modality', 'both']) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('error: ') and '--covers PATH' in err, err
    assert not (tmp_path/'out').exists()
    assert main(['ninerec', '--help']) == 0
    help_text = ' '.join(capsys.readouterr().out.split())
    assert "'both' (text and cover in one item" in help_text
    assert "(default: 'both' when some item has a text and a cover, else 'auto')" in help_text
    assert main(['ninerec', str(ninerec(tmp_path/'src2')), str(tmp_path/'out2')]) == 0
    printed = capsys.readouterr().out
    assert '"both_items": 2' in printed, printed
    assert 'dropped/changed: 2 x text_only_item in QB_item.csv' in printed, printed


# ---------------------------------------------------------------- command line (a subprocess)
def test_cli(tmp_path):
    src = ninerec(tmp_path/'src')
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, '-m', 'transrec.convert', *map(str, a)],
                                    capture_output=True, text=True,
                                    cwd=tmp_path, env=env)
    r = run('list')
    assert r.returncode == 0 and 'ninerec' in r.stdout and 'reference' in r.stdout
    r = run('ninerec', src, tmp_path/'out', '--modality', 'text', '--text-columns', '2')
    assert r.returncode == 0, r.stderr
    assert '"interactions": 7' in r.stdout
    assert Loaded(tmp_path/'out').text('v4') == 'Music'
    r = run('ninerec', tmp_path/'nowhere', tmp_path/'o2')
    assert r.returncode == 1 and 'error:' in r.stderr and 'does not exist' in r.stderr   # a data problem
    r = run('ninerec', src, tmp_path/'o3', '--modality')                                # a usage error
    assert r.returncode == 2 and 'usage:' in r.stderr and 'expected one argument' in r.stderr
    r = run('mind', '--help')
    assert r.returncode == 0 and '--text-fields' in r.stdout and '--on-problem' in r.stdout
    assert main(['list']) == 0


def test_cli_errors_name_the_flags(tmp_path, capsys):
    "A converter error seen on the command line names the flag that helps (and the Python spelling once)."
    src = ninerec(tmp_path/'src')
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    assert main(['ninerec', str(src), str(tmp_path/'out')]) == 0
    r = subprocess.run([sys.executable, '-m', 'transrec.convert', 'ninerec', str(src), str(tmp_path/'out')],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 1 and 'pass --overwrite (overwrite=True in Python) to replace' in r.stderr, r.stderr
    capsys.readouterr()
    cases = [(['--bad-rows', 'skip'], "--bad-rows skip (bad_rows='skip' in Python) is not a choice"),
             (['--modality', 'image', '--covers', 'nowhere'], "--covers nowhere (covers='nowhere' in Python)")]
    for extra, expected in cases:
        assert main(['ninerec', str(src), str(tmp_path/'o2'), *extra]) == 1
        assert expected in capsys.readouterr().err
    bad = ninerec(tmp_path/'bad', behaviour='u1\tv1 v2 v3\nu2\n')
    assert main(['ninerec', str(bad), str(tmp_path/'o3')]) == 1
    assert "Or pass --bad-rows report (bad_rows='report' in Python)" in capsys.readouterr().err
    assert main(['ninerec', str(bad), str(tmp_path/'o3'), '--bad-rows', 'report']) == 0      # the advice works
    no_covers = ninerec(tmp_path/'nc', covers=())
    (no_covers/'QB_item.csv').unlink()
    assert main(['ninerec', str(no_covers), str(tmp_path/'o4'), '--modality', 'image']) == 1
    err = capsys.readouterr().err
    assert "--modality image (modality='image' in Python) needs" in err and '--covers PATH' in err, err


@pytest.mark.parametrize('fmt', sorted(CONVERTERS))
def test_cli_help_lists_each_default_once_and_only_the_format_options(fmt, capsys):
    assert main([fmt, '--help']) == 0
    text = ' '.join(capsys.readouterr().out.split())
    options = converter_options(CONVERTERS[fmt])
    assert text.count('(default: ') == len(options), text          # one per option, not two for some
    assert 'default: None' not in text
    assert all(cli_flag(name) + ' ' in text for name in options)
    text_only = fmt in ('mind', 'recbole')
    assert all((cli_flag(name) + ' ' in text) != text_only for name in IMAGE_OPTIONS), text
    if fmt == 'mind': assert '--dedup [BOOL] keep only a user\'s first interaction with an item (default: true)' in text
