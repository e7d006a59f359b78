"""Hostile input for transrec.convert (issue #10, converter part) and its argparse command line (issue #14).
One test per class of the issue; each one fails on the code before the fix."""
import json, os, pickle, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from transrec import data as tdata
from transrec import convert as tconvert
from transrec.convert import ConversionError, from_amazon, from_mind, from_pixelrec, from_recbole, from_reference, main

ROOT = Path(__file__).resolve().parents[1]


class Boom:
    "Unpickling this runs a shell command that creates the file `marker`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def evil_npy(path, marker):
    "A valid .npy header announcing an object array, followed by a pickle whose REDUCE calls os.system."
    with open(path, 'wb') as f:
        np.lib.format.write_array_header_1_0(f, dict(descr='|O', fortran_order=False, shape=(1,)))
        pickle.dump(Boom(marker), f, protocol=3)


def reference_src(root):
    root = Path(root)
    root.mkdir(parents=True)
    (root/'texts.txt').write_text('a first\nb second\nc third\n')
    return root


def test_class1_malicious_npy_and_pickles_never_run_code(tmp_path):
    marker = tmp_path/'PWNED'
    src = reference_src(tmp_path/'src')
    evil_npy(src/'seqs.npy', marker)
    with pytest.raises(ConversionError, match=r'seqs.npy.*(refus|not read)'):
        from_reference(src, tmp_path/'out')
    assert not marker.exists() and not (tmp_path/'out').exists()
    (src/'seqs.npy').write_bytes(pickle.dumps(Boom(marker)))          # a raw pickle named .npy
    with pytest.raises(ConversionError, match=r'seqs.npy.*not a NumPy \.npy file'):
        from_reference(src, tmp_path/'out')
    assert not marker.exists()
    # a pickled LMDB cover calling os.system: reported as a bad cover, nothing runs, the item keeps its text
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r'refusing.*system'):
        tconvert.decode_lmdb_image(pickle.dumps(Boom(marker)))
    with pytest.raises(ValueError, match=r'refusing'):
        tconvert.decode_lmdb_image(pickle.dumps([a, Boom(marker)]))
    assert not marker.exists()
    assert 'safe_unpickle' not in dir(tconvert) and 'pickle.Unpickler' not in Path(tconvert.__file__).read_text()
    # the good object arrays still load, without unpickling
    np.save(src/'seqs.npy', np.array([['a', 'b', 'c'], ['c', 'b', 'a']], dtype=object))
    d = tdata.load_dataset(from_reference(src, tmp_path/'out'), min_seq_len=3)
    assert [list(map(str, d.item_ids[s])) for s in d.seqs] == [['a', 'b', 'c'], ['c', 'b', 'a']]
    # Amazon's Python-literal lines: a deeply nested one is a bad row (file, line), not a crash
    amz = tmp_path/'amz'
    amz.mkdir()
    (amz/'reviews.jsonl').write_text(''.join(json.dumps(dict(user_id='U', asin=i, timestamp=t)) + '\n'
                                             for i, t in [('B1', 1), ('B2', 2), ('B3', 3)]))
    deep = '{"asin": ' + '[' * 100_000 + ']' * 100_000 + '}'
    (amz/'meta.jsonl').write_text(deep + '\n'
                                  + ''.join(json.dumps(dict(asin=i, title=i)) + '\n'
                                            for i in ('B1', 'B2', 'B3')))
    with pytest.raises(ConversionError, match=r'meta.jsonl, line 1: .*not a JSON object'):
        from_amazon(amz, tmp_path/'amz_out')
    out = from_amazon(amz, tmp_path/'amz_out', bad_rows='report')
    assert json.loads((out/'meta.json').read_text())['conversion_problems'][0]['examples'][0]['row'] == 1


def pixelrec_src(root, times=('1', '2', '3')):
    root = Path(root)
    root.mkdir(parents=True)
    (root/'pairs.csv').write_text('user_id,item_id,timestamp\n'
                                  + ''.join(f'u,i{k},{t}\n' for k, t in enumerate(times)))
    (root/'items.csv').write_text('item_id,title\ni0,zero\ni1,one\ni2,two\n')
    return root


def test_class6_timestamps_never_use_the_clock(tmp_path):
    for k, word in enumerate(['now', 'today', 'yesterday', 'inf', 'nan']):
        src = pixelrec_src(tmp_path/f'src{k}', times=('5', word, '7'))
        with pytest.raises(ConversionError, match=rf"pairs.csv, line 3: .*{word!r}"):
            from_pixelrec(src, tmp_path/f'o{k}')
    d = tdata.load_dataset(from_pixelrec(pixelrec_src(tmp_path/'iso',
                                                      times=('2020-01-02', '2020-01-01T10:00:00Z', '1e9')),
                                         tmp_path/'iso_out'), min_seq_len=3)
    assert list(map(str, d.item_ids[d.seqs[0]])) == ['i2', 'i1', 'i0']
    rb = tmp_path/'rb'
    rb.mkdir()
    (rb/'x.inter').write_text('user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\nu\t2\tinf\nu\t3\t3\n')
    (rb/'x.item').write_text('item_id:token\ttitle:token_seq\n1\tone\n2\ttwo\n3\tthree\n')
    with pytest.raises(ConversionError, match=r"x.inter, line 3: .*'inf'"):         # was an OverflowError
        from_recbole(rb, tmp_path/'rb_out')
    amz = tmp_path/'amz'
    amz.mkdir()
    (amz/'reviews.jsonl').write_text(''.join(json.dumps(dict(user_id='U', asin=i, timestamp=t)) + '\n'
                                             for i, t in [('B1', 1), ('B2', 'today'), ('B3', 3)]))
    (amz/'meta.jsonl').write_text(''.join(json.dumps(dict(asin=i, title=i)) + '\n'
                                          for i in ('B1', 'B2', 'B3')))
    with pytest.raises(ConversionError, match=r"reviews.jsonl, line 2: .*'today'"):   # was silently untimed
        from_amazon(amz, tmp_path/'amz_out')


def test_class8_mind_reports_conflicting_titles(tmp_path):
    src = tmp_path/'src'
    for split, title, lines in [('train', 'Goal!', '1\tU1\t11/11/2019 1:00:00 PM\tN1 N2\tN3-1\n'),
                                ('dev', 'Own goal', '2\tU1\t11/12/2019 1:00:00 PM\tN2\tN1-1\n')]:
        d = src/f'MINDsmall_{split}'
        d.mkdir(parents=True)
        (d/'news.tsv').write_text(f'N1\tsports\tsoccer\t{title}\t\t\t[]\t[]\nN2\tnews\tus\tVote\t\t\t[]\t[]\n'
                                  'N3\tfood\trecipes\tPasta\t\t\t[]\t[]\n')
        (d/'behaviors.tsv').write_text(lines)
    meta = json.loads((from_mind(src, tmp_path/'out')/'meta.json').read_text())
    conflict = [e for e in meta['conversion_problems'] if e['kind'] == 'conflicting_news']
    assert len(conflict) == 1 and conflict[0]['count'] == 1, meta['conversion_problems']
    detail = conflict[0]['examples'][0]['detail']
    # splits are read in name order (dev before train): the first definition wins, the other is named
    assert "'N1'" in detail and 'MINDsmall_dev/news.tsv, line 1' in detail and 'Own goal' in detail and 'Goal!' in detail
    assert conflict[0]['file'] == 'MINDsmall_train/news.tsv' and conflict[0]['examples'][0]['row'] == 1
    with pytest.raises(ConversionError, match=r"MINDsmall_train/news.tsv, line 1: .*'N1'"):
        from_mind(src, tmp_path/'out2', on_problem='error')


def recbole_src(root, inter_rows='u1\t1\nu1\t2\nu1\t3\n'):
    root = Path(root)
    root.mkdir(parents=True)
    (root/'x.inter').write_text('user_id:token\titem_id:token\n' + inter_rows)
    (root/'x.item').write_text('item_id:token\ttitle:token_seq\n1\tone\n2\ttwo\n3\tthree\n')
    return root


def test_class12_destination_never_deletes_sources_and_output_validates(tmp_path, monkeypatch):
    src = recbole_src(tmp_path/'src')
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(ConversionError, match='is the source folder'):
        from_recbole(src, src, overwrite=True)
    with pytest.raises(ConversionError, match='contains the source'):
        from_recbole(src, tmp_path, overwrite=True)
    out = from_recbole(src, src/'mom')                          # a new folder inside the source is fine ...
    with pytest.raises(ConversionError, match='inside the source folder'):
        from_recbole(src, src/'mom', overwrite=True)            # ... replacing one there is refused
    assert sorted(p.name for p in src.iterdir()) == sorted(before + ['mom']) and (src/'x.inter').is_file()
    assert tdata.validate(out).ok
    r = subprocess.run([sys.executable, '-m', 'transrec.convert', 'recbole', str(src), str(src),
                        '--overwrite'],
                       capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 1 and 'source folder' in r.stderr and (src/'x.inter').is_file() and (src/'x.item').is_file()
    # an empty user id is a named bad row, not a folder that validate rejects
    bad = recbole_src(tmp_path/'bad', 'u1\t1\nu1\t2\nu1\t3\n\t1\n')
    with pytest.raises(ConversionError, match=r'x.inter, line 5: .*without a user'):
        from_recbole(bad, tmp_path/'bad_out')
    assert tdata.validate(from_recbole(bad, tmp_path/'bad_out', bad_rows='report')).ok
    # whatever a converter writes is validated before it is moved into place
    real_write = tconvert.write_dataset
    def broken_write(path, items, inter, *a, **k):
        inter = inter.copy()
        inter.loc[0, 'item_id'] = 'no-such-item'
        return real_write(path, items, inter, *a, **k)
    monkeypatch.setattr(tconvert, 'write_dataset', broken_write)
    with pytest.raises(ConversionError, match=r'(?s)not valid.*interactions.tsv.*no-such-item'):
        from_recbole(src, tmp_path/'checked')
    assert not (tmp_path/'checked').exists() and not list(tmp_path.glob('.checked*'))


def dead_pid():
    p = subprocess.Popen([sys.executable, '-c', 'pass'])
    p.wait()
    return p.pid


def test_class14_stale_temporaries_are_removed(tmp_path):
    src = recbole_src(tmp_path/'src')
    stale = tmp_path/f'.out.tmp-{dead_pid()}-0123abcd'
    stale.mkdir()
    (stale/'items.tsv').write_text('half')
    live = tmp_path/f'.out.tmp-{os.getpid()}-feedbeef'
    live.mkdir()           # a conversion still running: kept
    other = tmp_path/f'.other.tmp-{dead_pid()}-0123abcd'
    other.mkdir()          # another destination's: kept
    out = from_recbole(src, tmp_path/'out')
    assert not stale.exists() and live.exists() and other.exists() and tdata.validate(out).ok
    # a failed conversion leaves no temporary behind; the name is recognisable while it exists
    seen = []
    def spy(path, *a, **k):
        seen.append(Path(path).name)
        raise OSError('disk full')
    import transrec.convert as c
    real, c.write_dataset = c.write_dataset, spy
    try:
        with pytest.raises(OSError): from_recbole(src, tmp_path/'out2')
    finally: c.write_dataset = real
    assert seen[0].startswith(f'.out2.tmp-{os.getpid()}-') and not list(tmp_path.glob('.out2*'))
    # the same rule for the named-source builder: one helper
    from transrec import sources
    assert sources.build_atomic is tconvert.build_atomic
    stale = tmp_path/f'.syn.tmp-{dead_pid()}-0123abcd'
    stale.mkdir()
    sources.build_atomic(tmp_path/'syn', lambda d: (d/'items.tsv').write_text('item_id\n'))
    assert not stale.exists() and (tmp_path/'syn'/'items.tsv').is_file()


def test_cli_argparse_exit_codes_and_help(tmp_path, capsys):
    src = recbole_src(tmp_path/'src')
    assert main(['recbole', str(src), str(tmp_path/'out'), '--text-sep', ' / ']) == 0
    assert main(['recbole', str(src), str(tmp_path/'out'), '--overwrite', '--dedup', 'true']) == 0
    assert main(['recbole', str(src), str(tmp_path/'out'), '--no-such-option',
                 '1']) == 2        # argparse usage error
    assert 'usage:' in capsys.readouterr().err
    assert main(['recbole', str(src)]) == 2                                                    # DST missing
    assert main(['nosuchformat', str(src), str(tmp_path/'o')]) == 2
    assert main(['recbole', str(src), str(tmp_path/'o'), '--dedup', 'maybe']) == 2
    capsys.readouterr()
    assert main(['recbole', str(tmp_path/'nowhere'), str(tmp_path/'o')]) == 1                 # a data problem
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'does not exist' in err
    assert main(['reference', '--help']) == 0
    out = capsys.readouterr().out
    assert '--image-layout' in out and '--overwrite' in out and 'SRC' in out and 'LMDB' in out
    assert main(['list']) == 0 and 'recbole' in capsys.readouterr().out
