import numpy as np

from sim.fileset import FileSet


def test_study_fileset_matches_paper():
    fs = FileSet()
    assert fs.n_files == 24480
    sizes = np.unique(fs.sizes)
    assert len(sizes) == 36 and sizes.min() == 102 and sizes.max() == 921600
    assert 3.2e9 < fs.total_bytes < 3.6e9
    # PAPER.md: 14.6-15.2 KB per reply
    assert 14_000 < fs.mean_reply_bytes < 15_500


def test_class_shares_are_drawn():
    fs = FileSet(directories=50)
    draws = fs.sample(np.random.default_rng(7), 200_000)
    share = np.bincount(draws % 36 // 9, minlength=4) / len(draws)
    assert np.allclose(share, [0.35, 0.50, 0.14, 0.01], atol=0.005)
