"""Hostile input (issue #10): one test per class of bad input, by area.

Each test fails on the code before the
fix and passes now. Nothing here may unpickle, execute or read outside a data set."""
import io, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from transrec.datafiles import DataError
from transrec.data import load_dataset, tiny_mom, validate, write_dataset
import json, os, pickle, subprocess, sys
from transrec import batches as tbatches, data as tdata, datafiles as tdatafiles
from transrec import convert as tconvert
from transrec.convert import ConversionError, from_amazon, from_mind, from_pixelrec, from_recbole, from_reference, main
import ast, json, os, sys, shutil
import papermill as pm


# ==================== the MoM data set loader (classes 2-8, 13) ====================
# Hostile inputs to the MoM data set loader (issue #10, data part): one test per class of the issue.
# 
# Each test builds its bad input in pytest's tmp_path and checks that it is refused (or read correctly) with
# a problem that names the file and row. Run against the code before the fix, every test here fails.

ITEMS = 'item_id\tmodality\ttext\timage\nn1\ttext\tred apples\t\nv1\timage\t\timages/v1.png\nn2\ttext\tblue sky\t\n'
INTER = 'user_id\titem_id\ttimestamp\nu1\tn1\t1\nu1\tv1\t2\nu1\tn2\t3\nu2\tv1\t1\nu2\tn2\t2\nu2\tn1\t3\n'


def png(img) -> bytes:
    buf = io.BytesIO(); img.save(buf, format='PNG'); return buf.getvalue()


def folder(root: Path, items=ITEMS, inter=INTER, meta=None, image=None) -> Path:
    "A MoM folder from raw text, with images/v1.png (`image` bytes, a small red PNG by default)."
    (root/'images').mkdir(parents=True, exist_ok=True)
    (root/'items.tsv').write_text(items, encoding='utf-8', newline='')
    (root/'interactions.tsv').write_text(inter, encoding='utf-8', newline='')
    (root/'images/v1.png').write_bytes(image if image is not None else png(Image.new('RGB', (4, 4), 'red')))
    (root/'meta.json').write_text(meta if isinstance(meta, str) else json.dumps(meta or {'name': root.name, 'synthetic': True}))
    return root


def problems(path, kind, check_images=True):
    return [p for p in validate(path, check_images=check_images).problems if p.kind == kind]


def test_class2_images_outside_the_folder_are_refused(tmp_path):
    secret = tmp_path/'secret.png'; secret.write_bytes(png(Image.new('RGB', (4, 4), 'blue')))
    (tmp_path/'link.png').symlink_to(secret)
    for k, ref in enumerate([str(secret), '../secret.png', 'images/../../secret.png', 'images/link.png']):
        d = folder(tmp_path/f'd{k}', items=ITEMS.replace('images/v1.png', ref))
        if ref == 'images/link.png': (d/'images/link.png').symlink_to(secret)
        found = problems(d, 'image_outside_folder')
        assert [(p.file, p.row, p.fatal) for p in found] == [('items.tsv', 2, True)], ref
        with pytest.raises(DataError, match='image_outside_folder'):
            load_dataset(d)
    # defence in depth: a folder that changes after loading is refused at read time
    d = folder(tmp_path/'late'); ds = load_dataset(d)
    (d/'images/v1.png').unlink(); (d/'images/v1.png').symlink_to(secret)
    with pytest.raises(DataError, match='outside the data set folder'):
        ds.load_image(1)
    # a text item's image column is ignored (never read) with a warning
    d = folder(tmp_path/'text', items=ITEMS.replace('red apples\t', f'red apples\t{secret}'))
    ds = load_dataset(d)
    assert ds.image_refs[0] == '' and [p.row for p in ds.problems if p.kind == 'ignored_image'] == [1]
    with pytest.raises(DataError, match='is a text item'):
        ds.load_image(0)


def _lmdb_folder(root: Path) -> Path:
    items = pd.DataFrame({'item_id': ['n1', 'v1', 'n2'], 'modality': ['text', 'image', 'text'], 'text': ['a', '', 'b'],
                          'image': ['', 'v1', '']})
    inter = pd.DataFrame({'user_id': ['u1'] * 3, 'item_id': ['n1', 'v1', 'n2'], 'timestamp': [1, 2, 3]})
    rng = np.random.default_rng(0)   # incompressible pixels: data.mdb spans many pages
    return write_dataset(root, items, inter, {}, images={'v1': Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8))},
                         image_store='lmdb')


def run_validate(path, *args):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, '-m', 'transrec.data', 'validate', str(path), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_class3_damaged_lmdb_is_a_clear_error_not_sigbus(tmp_path):
    trunc = _lmdb_folder(tmp_path/'trunc'); data = trunc/'images.lmdb/data.mdb'
    size = data.stat().st_size; os.truncate(data, size // 2)
    rand = _lmdb_folder(tmp_path/'rand'); (rand/'images.lmdb/data.mdb').write_bytes(np.random.default_rng(1).bytes(size))
    for path, words in ((trunc, 'is truncated'), (rand, 'not an LMDB file')):
        for args in ((), ('--skip-image-decode',)):
            r = run_validate(path, *args)
            assert r.returncode == 1, (r.returncode, r.stderr)   # a normal "not usable" exit, not 135 / -7 (SIGBUS)
            assert 'ERROR [corrupt_lmdb] images.lmdb/data.mdb' in r.stdout and words in r.stdout and 'Fix:' in r.stdout
        with pytest.raises(DataError, match='corrupt_lmdb'):
            load_dataset(path)


TEXTS = ['"Breaking" news today', '"', '""', '"quoted"', 'say "hi"', 'a\tb', '\tlead', 'trail\t', 'two\nlines', '\nlead',
         'trail\n', 'cr\rlf\r\n', '"\t"', '"\n"', ' "x" ', 'x"', '"x', '\'single\'', '', 'plain']


def test_class4_text_round_trips_byte_for_byte(tmp_path):
    texts = TEXTS + [a + b for a in ('"', '\t', '\n') for b in ('"', '\t', '\n')]
    ids = [f't{k}' for k in range(len(texts))]
    items = pd.DataFrame({'item_id': ids, 'modality': 'text', 'text': texts, 'image': ''})
    inter = pd.DataFrame({'user_id': 'u', 'item_id': ids, 'timestamp': range(len(ids))})
    ds = load_dataset(write_dataset(tmp_path/'w', items, inter, {}))
    assert ds.texts == texts and list(ds.item_ids) == ids
    # a hand-written TSV keeps quotes that do not wrap a whole field; the old writer's quoted fields still read
    hand = ITEMS.replace('red apples', '"Breaking" news today').replace('blue sky', '"old ""writer"" field\twith tab"')
    ds = load_dataset(folder(tmp_path/'hand', items=hand))
    assert ds.texts[0] == '"Breaking" news today' and ds.texts[2] == 'old "writer" field\twith tab'


def test_class5_image_modes_and_exif_orientation(tmp_path):
    grey16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))          # mid-grey 16-bit PNG
    ds = load_dataset(folder(tmp_path/'g16', image=png(grey16)))
    assert ds.load_image(1).getpixel((0, 0)) == (128, 128, 128)                # not saturated to white
    wide = Image.new('RGB', (6, 2), 'red'); exif = wide.getexif(); exif[0x0112] = 8   # "rotate 90 degrees" tag
    buf = io.BytesIO(); wide.save(buf, format='JPEG', exif=exif.tobytes())
    ds = load_dataset(folder(tmp_path/'exif', image=buf.getvalue()))
    assert ds.load_image(1).size == (2, 6)                                     # shown upright, as a viewer does
    clear = Image.new('RGBA', (2, 2), (0, 0, 0, 0))
    ds = load_dataset(folder(tmp_path/'rgba', image=png(clear)))
    assert ds.load_image(1).getpixel((0, 0)) == (255, 255, 255)               # transparent over white, not black
    for mode in ('P', 'LA', 'L', '1', 'I;16', 'CMYK'):
        img = Image.new(mode, (3, 3)); buf = io.BytesIO(); img.save(buf, format='JPEG' if mode == 'CMYK' else 'PNG')
        ds = load_dataset(folder(tmp_path/mode.replace(';', ''), image=buf.getvalue()))
        img = ds.load_image(1)
        assert img.mode == 'RGB' and img.size == (3, 3), mode


@pytest.mark.parametrize('value,kind', [('inf', 'bad_timestamp'), ('-inf', 'bad_timestamp'), ('1e308', 'bad_timestamp'),
                                        ('nan', 'bad_timestamp'), ('-5', 'bad_timestamp'), ('now', 'bad_timestamp'),
                                        ('today', 'bad_timestamp'), ('2500-01-01', 'bad_timestamp'),
                                        ('1700000000000', 'mixed_timestamp_units')])
def test_class6_implausible_timestamps_and_mixed_units(tmp_path, value, kind):
    seconds = INTER.replace('\t1\n', '\t1700000000\n').replace('\t2\n', '\t1700000001\n').replace('\t3\n', '\t1700000002\n')
    bad = seconds.replace('u1\tn2\t1700000002', f'u1\tn2\t{value}')
    found = problems(folder(tmp_path/'d', inter=bad), kind)
    assert [(p.file, p.row, p.fatal) for p in found] == [('interactions.tsv', 3, True)] and repr(value) in found[0].message
    ok = folder(tmp_path/'ok', inter=seconds.replace('1700000002', '2023-11-14T22:13:30'))   # ISO + seconds: one unit
    assert validate(ok).ok


def test_class7_meta_json_schema_counts_depth_and_bom(tmp_path):
    d = folder(tmp_path/'s', meta={'name': 's', 'synthetic': 'false'})
    assert [p.fatal for p in problems(d, 'bad_meta')] == [True]
    with pytest.raises(DataError, match='"synthetic" is "false"'):
        load_dataset(d)
    d = folder(tmp_path/'c', meta={'synthetic': True, 'counts': {'items': 'lots'}})
    assert 'counts.items is "lots"' in problems(d, 'bad_meta')[0].message
    d = folder(tmp_path/'n', meta={'synthetic': True, 'counts': {'items': 3, 'users': 7, 'interactions': 6}})
    assert [p.message for p in problems(d, 'meta_counts')] == ['counts.users is 7 but the tables hold 2']
    d = folder(tmp_path/'deep', meta='[' * 100_000 + ']' * 100_000)
    assert 'nested too deeply' in problems(d, 'bad_meta')[0].message
    d = folder(tmp_path/'bom'); (d/'meta.json').write_bytes(b'\xef\xbb\xbf' + json.dumps({'name': 'bom', 'synthetic': True}).encode())
    assert load_dataset(d).name == 'bom'


def test_class8_rows_are_line_numbers_and_columns_are_checked(tmp_path):
    blank = 'user_id\titem_id\ttimestamp\n\nu1\tn1\t1\n\n\nu1\tv1\t2\nu1\tn2\t3\nu1\tzz\t4\n'   # 'zz' on line 8
    found = problems(folder(tmp_path/'b', inter=blank), 'unknown_item')
    assert [p.row for p in found] == [7] and 'spreadsheet row 8' in str(found[0])
    extra = folder(tmp_path/'x', items=ITEMS.replace('\timage\n', '\timage\tnotes\n', 1))
    assert [p.fatal for p in problems(extra, 'extra_column')] == [False] and validate(extra).ok
    dup = folder(tmp_path/'d', items=ITEMS.replace('\timage\n', '\ttext\n', 1))
    with pytest.raises(DataError, match=r"duplicate_column.*\['text'\]"):
        load_dataset(dup)


def test_class13_images_too_large_by_header_are_refused_before_decoding(tmp_path, monkeypatch):
    for name, size in (('long', (40000, 1)), ('huge', (6000, 6000))):
        d = folder(tmp_path/name, image=png(Image.new('L', size)))   # a few hundred bytes to ~100 kB on disk
        found = problems(d, 'image_too_large')
        assert [(p.file, p.row, p.fatal) for p in found] == [('items.tsv', 2, True)], name
        ds = load_dataset(d)   # existence-only checks at load time; the read refuses
        decoded = []
        monkeypatch.setattr(Image.Image, 'load', lambda self, *a: decoded.append(1))
        with pytest.raises(DataError, match='image_too_large'):
            ds.load_image(1)
        monkeypatch.undo()
        assert decoded == [], 'pixels were decoded before the size check'
    from transrec.encoders import _resize_crop
    tall = Image.new('RGB', (3, 2000), 'red')   # within the bounds? no: ratio; _resize_crop itself stays small anyway
    out = _resize_crop(tall, 16)
    assert out.shape == (3, 16, 16) and (out[0] == 255).all()


# ==================== the MoM data set loader, second round (issue #24, items 1-4, 7) ====================
# Hostile input, second round: files that lead out of the folder or are not files, invisible text, a synthetic
# data set without its label, and images that only one of the two readers refused. Each test fails on the code
# before issue #24's fix.

SECRET = 'SECRET-OUTSIDE-CONTENT'


def outside_copy(d: Path, name: str, outside: Path) -> Path:
    "Move `d`/`name` to `outside` (with SECRET added where the format allows) and leave a symlink to it in `d`."
    text = (d/name).read_text()
    text = text.replace('red apples', SECRET) if name == 'items.tsv' else text
    text = text.replace('"synthetic"', f'"note": "{SECRET}", "synthetic"') if name == 'meta.json' else text
    outside.write_text(text)
    (d/name).unlink()
    (d/name).symlink_to(outside)
    return d


@pytest.mark.parametrize('name', ['items.tsv', 'interactions.tsv', 'meta.json'])
def test_i24_1_tables_that_link_outside_the_folder_are_refused_unread(tmp_path, name):
    d = outside_copy(folder(tmp_path/'d'), name, tmp_path/f'outside-{name}')
    report = validate(d)
    assert [(p.file, p.kind, p.fatal) for p in report.problems] == [(name, 'file_outside_folder', True)]
    assert SECRET not in report.render() and 'Fix:' in str(report.problems[0])
    with pytest.raises(DataError, match=f'{name}: .*outside the data set folder') as e:
        load_dataset(d)
    assert SECRET not in str(e.value)
    inside = folder(tmp_path/'inside')                       # a symlink that stays inside the folder is fine
    (inside/'sub').mkdir(); (inside/name).rename(inside/'sub'/name); (inside/name).symlink_to(inside/'sub'/name)
    assert validate(inside).ok and load_dataset(inside).n_items == 3
    (tmp_path/'via-link').symlink_to(inside)                 # the folder itself reached through a symlink: fine
    assert validate(tmp_path/'via-link').ok


def test_i24_1_lmdb_pixel_store_and_truth_file_obey_the_folder_rule(tmp_path):
    from transrec import sim
    real = _lmdb_folder(tmp_path/'real')
    d = tmp_path/'d'; d.mkdir()
    for name in ('items.tsv', 'interactions.tsv', 'meta.json'):
        shutil.copy(real/name, d/name)
    (d/'images.lmdb').symlink_to(real/'images.lmdb')
    assert [(p.file, p.kind) for p in problems(d, 'file_outside_folder')] == [('images.lmdb', 'file_outside_folder')]
    with pytest.raises(DataError, match='images.lmdb: .*outside the data set folder'):
        load_dataset(d)
    ds = load_dataset(real)
    store = tbatches.prepare_images(ds, 4)
    assert tbatches.open_pixel_store(ds, 4) is not None
    store.rename(tmp_path/'outside-pixels'); store.symlink_to(tmp_path/'outside-pixels')
    assert tbatches.open_pixel_store(ds, 4) is None             # not used: it lies outside (a cache: rebuilt, not fatal)
    tbatches.prepare_images(ds, 4)                               # rebuilt inside the folder; the outside copy left alone
    assert not store.is_symlink() and tbatches.open_pixel_store(ds, 4) is not None
    assert (tmp_path/'outside-pixels'/'pixels.u8').is_file()
    truth = tmp_path/'outside-truth.json'; truth.write_text(json.dumps({'secret': SECRET}))
    (real/'sim_truth.json').symlink_to(truth)
    with pytest.raises(DataError, match='sim_truth.json: .*outside the data set folder') as e:
        sim.load_truth(real)
    assert SECRET not in str(e.value)


def make_fifo(path: Path) -> Path:
    path.unlink(missing_ok=True); os.mkfifo(path); return path


def test_i24_2_directories_fifos_sockets_and_devices_are_named_not_read(tmp_path, monkeypatch):
    d = folder(tmp_path/'dir'); (d/'items.tsv').unlink(); (d/'items.tsv').mkdir()
    assert [(p.file, p.kind) for p in problems(d, 'not_a_file')] == [('items.tsv', 'not_a_file')]
    with pytest.raises(DataError, match=r'items.tsv: .*is a folder, not a regular file'):
        load_dataset(d)
    d = folder(tmp_path/'meta'); (d/'meta.json').unlink(); (d/'meta.json').mkdir()
    assert [p.file for p in problems(d, 'not_a_file')] == ['meta.json']
    d = folder(tmp_path/'loop'); (d/'items.tsv').unlink(); (d/'items.tsv').symlink_to('items.tsv')   # leads nowhere
    found = problems(d, 'not_a_file')
    assert [p.file for p in found] == ['items.tsv'] and 'symlink loop' in found[0].message
    d = folder(tmp_path/'image-loop'); (d/'images/v1.png').unlink(); (d/'images/v1.png').symlink_to('v1.png')
    found = problems(d, 'not_a_file')
    assert [(p.file, p.row) for p in found] == [('items.tsv', 2)] and 'symlink loop' in found[0].message
    d = folder(tmp_path/'fifo'); make_fifo(d/'interactions.tsv'); make_fifo(d/'meta.json'); make_fifo(d/'images/v1.png')
    r = subprocess.run([sys.executable, '-m', 'transrec.data', 'validate', str(d)], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert r.returncode == 1, r.stderr                        # returned (never blocked reading a FIFO), not usable
    for name in ('interactions.tsv', 'meta.json', 'items.tsv row 2'):
        assert f'ERROR [not_a_file] {name}' in r.stdout and 'FIFO' in r.stdout, (name, r.stdout)
    assert 'does not exist' not in r.stdout
    import socket
    d = folder(tmp_path/'sock'); (d/'images/v1.png').unlink()
    monkeypatch.chdir(d)                                      # a socket path must be short: bind a relative one
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind('images/v1.png')
        found = problems(d, 'not_a_file')
        assert [(p.file, p.row) for p in found] == [('items.tsv', 2)] and 'socket' in found[0].message
        with pytest.raises(DataError, match='not_a_file.*socket'):
            load_dataset(d)                                   # existence and type are load-time checks too
    d = folder(tmp_path/'dev'); (d/'images/v1.png').unlink()
    try:
        os.mknod(d/'images/v1.png', 0o600 | __import__('stat').S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return
    found = problems(d, 'not_a_file')
    assert [p.row for p in found] == [2] and 'device' in found[0].message


def test_i24_2_load_image_and_lmdb_name_the_wrong_file_type(tmp_path):
    d = folder(tmp_path/'late'); ds = load_dataset(d)
    make_fifo(d/'images/v1.png')                              # replaced after loading: the read names it too
    with pytest.raises(DataError, match='not_a_file.*FIFO'):
        ds.load_image(1)
    d = _lmdb_folder(tmp_path/'lmdb'); make_fifo(d/'images.lmdb/data.mdb')
    found = problems(d, 'not_a_file')
    assert [p.file for p in found] == ['images.lmdb/data.mdb'] and 'FIFO' in found[0].message


INVISIBLE = ['\u200b', '\u00a0\u200b', '\u3000', '\ufeff\u2060', ' \u200b\u200c\u200d ', '\u2028\u2029', '\u3164']


def test_i24_3_invisible_text_counts_as_empty(tmp_path):
    ids = [f't{k}' for k in range(len(INVISIBLE))] + ['ok']
    items = pd.DataFrame({'item_id': ids, 'modality': 'text', 'text': INVISIBLE + ['\u200bvisible\u00a0'], 'image': ''})
    inter = pd.DataFrame({'user_id': 'u', 'item_id': ids, 'timestamp': range(len(ids))})
    d = write_dataset(tmp_path/'d', items, inter, {'synthetic': True})
    found = problems(d, 'empty_text')
    assert [(p.row, p.fatal) for p in found] == [(k + 1, False) for k in range(len(INVISIBLE))]
    assert 'U+200B' in found[0].message
    ds = load_dataset(d)
    assert ds.texts == INVISIBLE + ['\u200bvisible\u00a0']   # counted as empty, kept as written (never stripped)


def test_i24_3_control_characters_in_text_are_a_warning_naming_the_rows(tmp_path):
    texts = ['fine', 'nul\x00here', 'tab\tand\nnewline', 'bell\x07', 'del\x7f', 'nel\x85', 'esc\x1b[31m']
    ids = [f't{k}' for k in range(len(texts))]
    items = pd.DataFrame({'item_id': ids, 'modality': 'text', 'text': texts, 'image': ''})
    inter = pd.DataFrame({'user_id': 'u', 'item_id': ids, 'timestamp': range(len(ids))})
    d = write_dataset(tmp_path/'d', items, inter, {'synthetic': True})
    found = problems(d, 'control_characters')
    assert [(p.file, p.row, p.fatal) for p in found] == [('items.tsv', None, False)]
    assert '5 text items' in found[0].message and 'rows 2, 5, 6, 7, 8;' in found[0].message   # rows = lines (tab\tand\n...)
    ds = load_dataset(d)
    assert ds.texts == texts and [p.kind for p in ds.problems] == ['control_characters']   # warned, kept as written


def test_i24_4_a_truth_file_keeps_the_data_set_synthetic(tmp_path):
    for k, meta in enumerate([{'name': 'x'}, None]):
        d = folder(tmp_path/f'd{k}', meta={'name': 'x'})
        (d/'sim_truth.json').write_text('{}')
        if meta is None: (d/'meta.json').unlink()
        ds = load_dataset(d)
        assert ds.synthetic and 'SYNTHETIC' in repr(ds), meta
        assert [p.fatal for p in ds.problems if p.kind == 'synthetic_inferred'] == [False]
    d = folder(tmp_path/'false', meta={'name': 'x', 'synthetic': False})
    (d/'sim_truth.json').write_text('{}')
    assert [(p.file, p.fatal) for p in problems(d, 'inconsistent_synthetic')] == [('meta.json', True)]
    with pytest.raises(DataError, match='inconsistent_synthetic'):
        load_dataset(d)
    assert not load_dataset(folder(tmp_path/'real', meta={'name': 'r', 'synthetic': False})).synthetic


def cut_png(what: str) -> bytes:
    raw = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)))
    assert raw.endswith(b'IEND\xaeB`\x82')
    return raw[:-12] if what == 'no_iend' else raw[:len(raw) // 2]


@pytest.mark.parametrize('what', ['no_iend', 'truncated'])
def test_i24_7_validate_and_load_image_agree_on_damaged_pngs(tmp_path, what):
    for store in ('files', 'lmdb'):
        if store == 'files':
            d = folder(tmp_path/store, image=cut_png(what))
        else:
            items = pd.read_csv(io.StringIO(ITEMS), sep='\t', dtype=str, keep_default_na=False)
            inter = pd.read_csv(io.StringIO(INTER), sep='\t', dtype=str)
            d = write_dataset(tmp_path/store, items, inter, {'synthetic': True}, images={'images/v1.png': cut_png(what)},
                              image_store='lmdb')
        assert [p.row for p in problems(d, 'corrupt_image')] == [2], (what, store)
        with pytest.raises(DataError, match='corrupt_image'):
            load_dataset(d).load_image(1)


def test_i24_7_one_decoder_serves_validate_and_load_image(tmp_path, monkeypatch):
    d = folder(tmp_path/'d'); ds = load_dataset(d)
    monkeypatch.setattr(tdatafiles, '_decode_image', lambda source: (None, ('corrupt_image', 'refused by the one decoder')))
    assert 'refused by the one decoder' in problems(d, 'corrupt_image')[0].message
    with pytest.raises(DataError, match='refused by the one decoder'):
        ds.load_image(1)


# ==================== the converters (classes 1, 6, 8, 12, 14) ====================
# Hostile input for transrec.convert (issue #10, converter part) and its argparse command line (issue #14).
# One test per class of the issue; each one fails on the code before the fix.

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
    from transrec import sources, core
    assert sources.atomic_dir is tconvert.atomic_dir is core.atomic_dir
    stale = tmp_path/f'.syn.tmp-{dead_pid()}-0123abcd'
    stale.mkdir()
    sources.atomic_dir(tmp_path/'syn', lambda d: (d/'items.tsv').write_text('item_id\n'))
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


# ==================== runs, parameters and checkpoints (classes 9-11, 14) ====================
# Hostile input to runs, checkpoints and parameters (issue #10): each case fails fast with a message that says what to do.

NBS = ROOT/'nbs'
from test_experiments import run      # papermill in-process, with the paths `--inject-paths` adds

TINY = dict(scale=0.1, epochs=1, dim=16, n_layers=1, n_heads=1, max_len=8, text_trainable_blocks=1,
            image_trainable_blocks=1, image_size=32, text_max_tokens=16, batch_size=64, device='cpu', progress=False)
EXPERIMENTS = ('pretrain', 'finetune', 'transfer', 'scaling', 'ablation', 'both_transfer')


@pytest.fixture
def env(tmp_path, monkeypatch):
    "Data and reports roots of their own (papermill kernels inherit the environment)."
    monkeypatch.setenv('TRANSREC_DATA', str(tmp_path/'data'))
    monkeypatch.setenv('TRANSREC_REPORTS', str(tmp_path/'reports'))
    return tmp_path


# --- class 9: parameter names and ranges ------------------------------------------------------------------------

@pytest.mark.parametrize('params, msg', [
    (dict(epoch=1), "unknown parameter 'epoch' for the pretrain notebook (-p epoch ...): did you mean 'epochs'?"),
    (dict(epochs=0), 'parameter train.epochs=0: expected an integer in [1, 100000]'),
    (dict(epochs=-1), 'parameter train.epochs=-1'),
    (dict(lr=-1), 'parameter train.lr=-1: expected a number in (0, 10]'),
    (dict(train={'lr': -1}), 'parameter train.lr=-1: expected a number in (0, 10]'),
    (dict(image_size=0), 'parameter model.image_size=0: expected an integer in [16, 2048]'),
    (dict(source='no_such_set'), 'Available'),
    (dict(device='tpu'), "device='tpu'"),
    (dict(source_fraction=0), 'source_fraction=0'),
    (dict(readout='first'), "readout='first'"),
    (dict(parts='title'), "parameter parts='title': expected one of 'both', 'text', 'image'"),
    (dict(model={'dimm': 16}), "unknown setting 'dimm'; did you mean 'dim'?"),
    (dict(model={'dim': 16}), "parameter dim is given twice, as -p dim and in model: give it once, "
                              "-y 'model: {dim: 16}'"),
])
def test_class9_bad_parameter_names_and_ranges_fail_before_any_work(env, params, msg):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('pretrain', env/'bad.ipynb', **{**TINY, 'out_dir': str(env/'run'), **params})
    assert msg in str(e.value)
    assert not (env/'data').exists() and not (env/'run').exists()       # no data built, no run folder made


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_class9_parameters_cell_declares_exactly_the_library_parameters(experiment):
    from transrec.params import EXPERIMENT_PARAMS, NOTEBOOK_NAMES
    nb = NBS/f'{experiment}.ipynb'
    cell = pm.inspect_notebook(str(nb))
    declared = EXPERIMENT_PARAMS[experiment]
    assert set(cell) == set(declared)
    assert {k: ast.literal_eval(v['default']) for k, v in cell.items()} == {k: d for k, (d, _) in declared.items()}
    # the names the notebook's other cells assign are known to experiment_params, and none is a parameter
    cells = json.loads(nb.read_text())['cells']
    assigned = {t.id for c in cells if c['cell_type'] == 'code' and 'parameters' not in c['metadata'].get('tags', [])
                for node in ast.parse(''.join(c['source'])).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert assigned <= set(NOTEBOOK_NAMES) and not set(NOTEBOOK_NAMES) & set(declared)


def test_class9_transfer_methods_default_is_every_method():
    from transrec.params import EXPERIMENT_PARAMS, TRANSFER_METHODS, experiment_params
    assert EXPERIMENT_PARAMS['transfer']['methods'][0] == list(TRANSFER_METHODS)
    ns = {k: d for k, (d, _) in EXPERIMENT_PARAMS['transfer'].items()}
    with pytest.raises(ValueError, match="unknown method 'sasrec'"): experiment_params('transfer', {**ns, 'methods': ['sasrec']})
    with pytest.raises(ValueError, match="did you mean 'targets'"): experiment_params('transfer', {**ns, 'target': 'qb_text'})


# --- class 14: nothing written outside the output folder ---------------------------------------------------------

def test_class14_run_outside_the_reports_folder_leaves_its_index_alone(env):
    out = env/'elsewhere'/'run'
    run('pretrain', env/'pop.ipynb', **{**TINY, 'kind': 'popularity', 'out_dir': str(out)})
    assert (out/'metrics.json').exists()
    assert not (env/'reports'/'index.md').exists() and not (env/'elsewhere'/'index.md').exists()


# --- class 10: a changed data set between a kill and the rerun ----------------------------------------------------

def _tiny_run(data, out, **kw):
    from transrec.core import ModelConfig, TrainConfig
    from transrec.experiment import run_experiment
    mc = ModelConfig(kind='id_sasrec', dim=8, n_layers=1, n_heads=1, max_len=6)
    tc = TrainConfig(epochs=2, batch_size=8, device='cpu', amp='none', warmup_steps=0, **kw)
    return run_experiment(str(data), out, mc, tc, experiment='pretrain', params=dict(source=str(data), epochs=2),
                          progress=False)


def test_class10_resume_refuses_a_replaced_data_folder(tmp_path):
    data, out = tmp_path/'data', tmp_path/'run'
    tiny_mom(data, seed=0, n_users=12)
    first = _tiny_run(data, out, max_steps=2)                     # stands for a run killed after its first checkpoint
    assert json.loads((out/'run.json').read_text())['data']['users'] == 12
    shutil.rmtree(data); tiny_mom(data, seed=1, n_users=14)        # the folder now holds another data set
    with pytest.raises(ValueError) as e: _tiny_run(data, out, max_steps=2)
    msg = str(e.value)
    assert str(out) in msg and str(data.resolve()) in msg and '-p resume fresh' in msg
    assert 'users 12 -> 14' in msg and 'interactions.tsv content' in msg
    assert json.loads((out/'metrics.json').read_text())['data']['users'] == first['data']['users'] == 12   # untouched


# --- class 11: damaged checkpoints, image weights and init models -------------------------------------------------

def test_class11_truncated_checkpoint_falls_back_then_says_resume_fresh(tmp_path, caplog):
    data, out = tmp_path/'data', tmp_path/'run'
    tiny_mom(data, seed=0, n_users=12)
    _tiny_run(data, out)                                           # two epochs: checkpoints step-2 and step-4
    ck = out/'checkpoints'
    steps = sorted(p.name for p in ck.glob('step-*'))
    assert len(steps) == 2
    f = ck/steps[-1]/'model.safetensors'; f.write_bytes(f.read_bytes()[:64])
    m = _tiny_run(data, out)                                       # resumes from the previous good checkpoint
    assert any('cannot be loaded' in r.message and steps[-1] in r.message for r in caplog.records)
    assert len(m['history']) == 2 and any(p.name.startswith(f'broken-{steps[-1]}') for p in ck.iterdir())
    for p in ck.glob('step-*'): (p/'state.pt').write_bytes(b'not a torch file')
    with pytest.raises(ValueError) as e: _tiny_run(data, out)
    assert 'state.pt is unreadable' in str(e.value) and '-p resume fresh' in str(e.value) and str(ck) in str(e.value)


def test_class11_garbage_image_weights_and_corrupt_init_are_named(tmp_path):
    from transrec.core import ModelConfig
    from transrec.encoders import ImageEncoder
    from transrec.params import check_init
    from transrec.model import build_model, save_model
    junk = tmp_path/'w.pth'; junk.write_bytes(b'\x80\x02}q\x00garbage')
    with pytest.raises(ValueError) as e: ImageEncoder(ModelConfig(dim=8, image_weights=str(junk)))
    assert str(junk) in str(e.value) and 'state_dict' in str(e.value)
    model_dir = save_model(build_model(ModelConfig(kind='popularity')), tmp_path/'best')
    f = model_dir/'model.safetensors'; f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ValueError) as e: check_init(str(model_dir))
    assert str(f) in str(e.value) and 'init=' in str(e.value)


# --- issue #11: fine-tuning parameters honoured or refused ---------------------------------------------------------

def test_finetune_refuses_an_architecture_parameter_that_differs_from_init(env):
    "`-p dim 32` with a dim-16 checkpoint stops the notebook before any work, naming the parameter."
    from transrec.core import ModelConfig
    from transrec.model import build_model, save_model
    cfg = ModelConfig(kind='id_sasrec', dim=16, n_layers=1, n_heads=1, max_len=8, image_size=32, text_max_tokens=16, n_items=5)
    save_model(build_model(cfg), env/'pre'/'best')
    with pytest.raises(pm.PapermillExecutionError) as e:
        run('finetune', env/'ft.ipynb', **{**TINY, 'init': str(env/'pre'/'best'), 'dim': 32, 'out_dir': str(env/'run')})
    assert 'dim=32 (checkpoint: 16)' in str(e.value) and "init='scratch'" in str(e.value)
    assert 'image_size' not in str(e.value) and 'text_trainable_blocks' not in str(e.value)   # equal or training-time
    assert not (env/'data').exists() and not (env/'run').exists()       # no data built, no run folder made
