"Tests of the input pipeline: batches from DataLoader workers, decoding in the workers, the pixel store, prefix-cache spill."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import numpy as np
import pytest
import torch
from PIL import Image
from transrec.core import ModelConfig
from transrec.data import MoMDataset, load_dataset, main as data_main
from transrec.batches import (train_batches, train_loader, prepare_images, open_pixel_store,
    pixel_store_dir, _image_items, _resize_crop)
from transrec.encoders import ImageEncoder, make_content
from transrec.data import tiny_mom

torch.set_num_threads(min(2, torch.get_num_threads()))
CFG = ModelConfig(dim=16, image_size=16, text_max_tokens=16)
FIELDS = ('items', 'seq', 'mask', 'neg', 'users', 'text_ids', 'text_mask', 'pixels')


@pytest.fixture
def ds(tmp_path):
    return load_dataset(tiny_mom(tmp_path/'tiny', n_text=10, n_image=10, n_users=12, image_wh=(20, 14)))

def same_batch(a, b):
    for k in FIELDS:
        x, y = getattr(a, k), getattr(b, k)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)): return False
    return True

def epoch(ds, content=None, **kw):
    return list(train_loader(ds, 4, 5, 2, seed=3, epoch=1, content=content, **kw))


def test_workers_give_exactly_the_batches_of_the_main_process(ds):
    content = make_content(CFG, ds, pixel_store=False)
    ref = list(train_batches(ds, 4, 5, 2, seed=3, epoch=1, content=content))
    assert len(ref) >= 3 and all(b.pixels is not None and b.text_ids is not None for b in ref)
    for workers in (0, 2):
        got = epoch(ds, content, num_workers=workers, prefetch_factor=1)
        assert len(got) == len(ref) and all(same_batch(x, y) for x, y in zip(got, ref)), workers
    plain = list(train_batches(ds, 4, 5, 2, seed=3, epoch=1))        # the index tensors do not depend on content
    assert all(torch.equal(x.neg, y.neg) and torch.equal(x.items, y.items) for x, y in zip(plain, ref))


def test_resume_from_batch_k_is_the_tail_of_the_epoch(ds):
    content = make_content(CFG, ds, pixel_store=False)
    full = epoch(ds, content, num_workers=0)
    for k in (1, len(full) - 1, len(full)):
        tail = list(train_loader(ds, 4, 5, 2, seed=3, epoch=1, skip=k, content=content, num_workers=2))
        assert len(tail) == len(full) - k and all(same_batch(x, y) for x, y in zip(tail, full[k:]))


def test_images_are_decoded_in_the_workers_never_in_the_training_process(ds, tmp_path, monkeypatch):
    main_pid, real = os.getpid(), MoMDataset.load_image
    calls = {'main': 0}
    log = tmp_path/'worker-decodes.txt'
    def counting(self, i):
        if os.getpid() == main_pid: calls['main'] += 1
        else:
            with open(log, 'a') as f: f.write(f'{os.getpid()} {i}\n')
        return real(self, i)
    monkeypatch.setattr(MoMDataset, 'load_image', counting)
    content = make_content(CFG, ds, pixel_store=False)
    seen = 0
    for b in train_loader(ds, 4, 5, 2, seed=0, epoch=0, content=content, num_workers=2):
        images = b.items[content.modality[b.items] == 1]
        with content.staged(b):
            px = content.pixels(images)                                # what the image encoder reads
            ids, mask = content.tokens(b.items[content.modality[b.items] == 0])
        want = torch.stack([torch.from_numpy(_resize_crop(real(ds, int(i)), 16)) for i in images]) if len(images) else None
        if want is not None:
            norm = (want.float() / 255 - torch.tensor(CFG.image_mean).view(1, 3, 1, 1)) / torch.tensor(CFG.image_std).view(1, 3, 1, 1)
            assert torch.equal(px, norm)
        seen += len(images)
    assert seen > 0 and calls['main'] == 0
    worker_pids = {line.split()[0] for line in log.read_text().splitlines()}
    assert worker_pids and str(main_pid) not in worker_pids


def test_pixel_store_equals_decoding_bit_for_bit(ds, monkeypatch):
    decoded = make_content(CFG, ds, pixel_store=False)
    images = torch.as_tensor(_image_items(ds))
    want = decoded.pixels(images)
    folder = prepare_images(ds.path, 16)
    assert folder == pixel_store_dir(ds.path, 16) and (folder/'pixels.u8').stat().st_size == len(images) * 3 * 16 * 16
    manifest = json.loads((folder/'manifest.json').read_text())
    assert (manifest['size'], manifest['count'], manifest['version']) == (16, len(images), 1) and manifest['source']
    def no_decoding(self, i): raise AssertionError('decoded although the pixel store is valid')
    monkeypatch.setattr(MoMDataset, 'load_image', no_decoding)
    stored = make_content(CFG, ds)                                      # pixel_store='auto': a valid store is read
    assert stored.store() is not None and torch.equal(stored.pixels(images), want)
    got = list(train_loader(ds, 4, 5, 0, seed=0, epoch=0, content=stored, num_workers=2))   # workers read the store too
    assert sum(len(b.pixels) for b in got if b.pixels is not None) > 0


def test_stale_store_is_rebuilt(ds):
    images = _image_items(ds)
    prepare_images(ds, 16)
    assert open_pixel_store(ds, 16) is not None
    f = ds.path/ds.image_refs[images[0]]
    Image.fromarray(np.full((14, 20, 3), 7, np.uint8)).save(f)        # a source image changed
    assert open_pixel_store(ds, 16) is None
    content = make_content(CFG, ds, pixel_store=True)                   # rebuilds the stale store
    assert (content.store()[0] == 7).all() and open_pixel_store(ds, 16) is not None
    (pixel_store_dir(ds.path, 16)/'manifest.json').write_text('{not json')   # damaged manifest: stale as well
    assert open_pixel_store(ds, 16) is None
    prepare_images(ds.path, 16)
    assert open_pixel_store(ds, 16) is not None


def test_prepare_images_cli_and_a_bad_image(ds, capsys):
    assert data_main(['prepare-images', str(ds.path), '--size', '8']) == 0
    assert str(pixel_store_dir(ds.path, 8)) in capsys.readouterr().out
    folder = pixel_store_dir(ds.path, 8)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    bad = ds.image_refs[_image_items(ds)[2]]
    (ds.path/bad).write_bytes(b'not an image')
    assert data_main(['prepare-images', str(ds.path), '--size', '8', '--force']) == 2
    err = capsys.readouterr().err
    assert bad in err and 'cannot be decoded' in err
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before   # the old store is kept whole (now stale)
    assert not [p for p in ds.path.iterdir() if p.name.startswith('.')]   # no temporary left behind


def test_prefix_cache_spills_to_disk_in_float16(ds):
    torch.manual_seed(0)
    enc = ImageEncoder(CFG, pretrained=False).eval()
    images = torch.as_tensor(_image_items(ds))
    with torch.no_grad():
        mem = make_content(CFG, ds, pixel_store=False)
        small = make_content(CFG, ds, pixel_store=False, cache_max_bytes=1024)
        a, b = enc(images, mem), enc(images, small)
        cache = small.prefix_cache(enc)
        assert cache is not None and cache.dtype == np.float16 and cache.path is not None and cache.path.exists()
        assert cache.n_filled == len(images)
        torch.testing.assert_close(enc(images, small), a, atol=2e-2, rtol=2e-2)   # read back from the memmap
    torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)
    assert mem.prefix_cache(enc).dtype == np.float32


def test_the_loader_leaves_the_global_rng_alone(ds):
    "A resumed run restores the torch RNG and then builds a loader: the loader must not draw from it."
    for workers in (0, 1):
        state = torch.random.get_rng_state()
        list(train_loader(ds, 4, 5, 1, seed=0, epoch=0, num_workers=workers))
        assert torch.equal(torch.random.get_rng_state(), state)
