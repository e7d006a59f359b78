"""The ResNet stage that the fusion study trains (layer4 at 32 px: a 1x1 map) on a batch of one repeated cover:
its BatchNorm's batch variance is 0, so training sees only the shift and evaluation divides by a running variance
near 0. Prints (and writes next to this file) the cover's vector norm in training and in evaluation mode after 30
SGD steps, for image_batchnorm 'batch' and 'frozen'. From the project folder:

    PYTHONPATH=. OMP_NUM_THREADS=1 python \
        reports/results/both/shared-silent-parts/diagnostics/one_repeated_cover.py"""
import json
from pathlib import Path
import torch
from transrec.core import ModelConfig
from transrec.encoders import ImageEncoder
from transrec.fusion import SMALL_MODEL


def norms_after_training(batchnorm: str, steps: int = 30) -> dict:
    "Vector norm of one repeated cover in training and evaluation mode after `steps` SGD steps on it."
    torch.manual_seed(0)
    encoder = ImageEncoder(ModelConfig(**SMALL_MODEL, image_batchnorm=batchnorm))
    features = encoder.prefix(torch.randn(1, 3, 32, 32).repeat(64, 1, 1, 1))
    optimiser = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=1e-3)
    encoder.train()
    for _ in range(steps):
        vectors = encoder.suffix(features)
        loss = (vectors * torch.randn_like(vectors)).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        training = float(encoder.suffix(features)[0].norm())
        evaluation = float(encoder.eval().suffix(features)[0].norm())
    return dict(image_batchnorm=batchnorm, steps=steps, norm_training=training, norm_evaluation=evaluation)


if __name__ == '__main__':
    rows = [norms_after_training(batchnorm) for batchnorm in ('batch', 'frozen')]
    out = Path(__file__).with_suffix('.json')
    out.write_text(json.dumps(rows, indent=1) + '\n')
    print(json.dumps(rows, indent=1))
