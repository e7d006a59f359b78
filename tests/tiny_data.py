"Kept only for nbs/11_experiment.ipynb (cell p012), owned by another branch: use `transrec.data.tiny_mom`."
from transrec.data import tiny_mom  # noqa: F401
