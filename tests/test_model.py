"""Integration tests of transrec.model: `compile_parts` under `torch.compile` (inductor runs a C++ compiler
in worker subprocesses and takes minutes on a CPU, so the test is marked slow and runs with `-m slow`).
The unit tests of the model chapter live in nbs/06_model.ipynb."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import pytest
import torch
from transrec.core import ModelConfig, seed_everything
from transrec.data import load_dataset, tiny_mom
from transrec.batches import train_batches
from transrec.encoders import make_content
from transrec.model import TransRec, train_seq_len

torch.set_num_threads(min(2, torch.get_num_threads()))
CFG = ModelConfig(dim=16, n_layers=1, n_heads=2, max_len=6, text_trainable_blocks=1, image_size=32,
                  text_max_tokens=12)


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    "A tiny data set: four-word captions, 3-10 clicks per user."
    folder = tmp_path_factory.mktemp('model')/'tiny'
    return load_dataset(tiny_mom(folder, 16, 8, 16, words=4, seq_len=(3, 11)))


@pytest.mark.slow
def test_compile_parts_same_outputs_and_keys(ds):
    "compile_parts (the trainer uses it on CUDA) keeps outputs and state-dict keys (checkpoints load)."
    seed_everything(0)
    model = TransRec(CFG).eval()
    content = make_content(CFG, ds)
    keys = sorted(model.state_dict())
    batch = next(iter(train_batches(ds, batch_size=8, seq_len=train_seq_len(CFG), n_neg=CFG.n_neg, seed=0,
                                    epoch=0)))
    with torch.no_grad():
        before = model.loss(batch, content)[0]
        model.compile_parts()
        after = model.loss(batch, content)[0]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert sorted(model.state_dict()) == keys
