"""`dalda evaluate`: the paper's few-shot evaluation of an augmented dataset, with the real-only baseline beside it.

data.py       the training images (real + their synthetic ones) and the test set, by protocol, leak-checked
views.py      the training transforms (flip, rotation) as cacheable views
backbones.py  frozen transformers backbones and their heads' recipes
features.py   backbone features per image and view, cached on disk
training.py   the linear heads: the paper's schedule and synthetic mixing, every trial's heads in one batch
metrics.py    balanced accuracy, top-1, epoch selection, paired differences over trials
summary.py    figures over a run's classifiers (mean ± std, paired differences) and how the reports write them
report.py     one run's results.json / results.md / epochs.csv
sweep.py      the synthetic-score threshold sweep's table
plots.py      the reports' figures
comparison.py `dalda compare`: runs side by side (the paper's Tables 2 and 3, Fig. 7)
public.py     what of a report may be published: local paths reduced to `./<name>`
publish.py    `--push_to_hub`: the report into the dataset's repo, the card's Evaluation table
diversity.py  CLIP-I and LPIPS diversity through the `evaluate` modules in scripts/metrics/
run.py        `evaluate_augmented_dataset`, the function behind the command: trials, arms, training
"""
