"""The on-disk file set: names and sizes as sim.fileset says, seeded bytes, safe reruns, refusals."""
import hashlib
import json
import os

import pytest

from real import fileset as gen
from sim.fileset import FileSet


def digest(root, fs):
    h = hashlib.sha256()
    for i in range(fs.n_files):
        with open(os.path.join(root, fs.path(i)), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def test_names_and_sizes_match_the_model(tmp_path):
    fs = FileSet(directories=2)
    s = gen.generate(str(tmp_path / "set"), fs, seed=1)
    assert (s.n_files, s.written_files, s.kept_files) == (72, 72, 0)
    on_disk = {}
    for d in sorted(os.listdir(tmp_path / "set")):
        if d.startswith("."):
            continue
        for f in os.listdir(tmp_path / "set" / d):
            on_disk[f"{d}/{f}"] = os.path.getsize(tmp_path / "set" / d / f)
    expected = {fs.path(i): int(fs.sizes[i]) for i in range(fs.n_files)}
    assert on_disk == expected
    assert s.total_bytes == fs.total_bytes == sum(on_disk.values())
    m = json.loads((tmp_path / "set" / ".fileset.json").read_text())
    assert m["complete"] and m["directories"] == 2 and m["seed"] == 1 and m["total_bytes"] == fs.total_bytes
    assert gen.check(str(tmp_path / "set"), fs)["seed"] == 1


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    fs = FileSet(directories=1)
    a, b, c = (str(tmp_path / n) for n in "abc")
    gen.generate(a, fs, seed=5)
    gen.generate(b, fs, seed=5)
    gen.generate(c, fs, seed=6)
    assert digest(a, fs) == digest(b, fs)
    assert digest(a, fs) != digest(c, fs)
    # a file's bytes do not depend on the size of the set it belongs to
    big = str(tmp_path / "big")
    gen.generate(big, FileSet(directories=2), seed=5)
    assert digest(big, fs) == digest(a, fs)


def test_rerun_keeps_good_files_and_repairs_bad_ones(tmp_path):
    fs = FileSet(directories=1)
    root = str(tmp_path / "set")
    gen.generate(root, fs, seed=2)
    before = digest(root, fs)
    again = gen.generate(root, fs, seed=2)
    assert (again.written_files, again.kept_files) == (0, 36)
    victim = os.path.join(root, fs.path(30))
    with open(victim, "r+b") as f:
        f.truncate(10)
    stale = os.path.join(root, "dir00000", ".class0_1.tmp.12345")
    open(stale, "wb").close()
    fixed = gen.generate(root, fs, seed=2)
    assert (fixed.written_files, fixed.kept_files) == (1, 35)
    assert not os.path.exists(stale)
    assert digest(root, fs) == before
    # growing the set keeps what is there
    grown = gen.generate(root, FileSet(directories=2), seed=2)
    assert (grown.written_files, grown.kept_files) == (36, 36)


def test_refusals_and_force(tmp_path, capsys):
    fs = FileSet(directories=1)
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(gen.FileSetError, match="not part of"):
        gen.generate(str(foreign), fs, seed=0)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]  # nothing written

    rc = gen.main([str(foreign), "--directories", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "notes.txt" in err and "Traceback" not in err

    assert gen.main([str(foreign), "--directories", "1", "--force", "--quiet"]) == 0
    assert (foreign / "notes.txt").read_text() == "mine"  # --force leaves other files alone
    assert gen.check(str(foreign))["complete"]

    # a set made with another seed is not silently mixed
    root = str(tmp_path / "set")
    gen.generate(root, fs, seed=1)
    with pytest.raises(gen.FileSetError, match="seed 1"):
        gen.generate(root, fs, seed=2)

    # a plain file as DIR, bad numbers
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    for argv in ([str(tmp_path / "file")], [str(tmp_path / "n"), "--directories", "0"],
                 [str(tmp_path / "n"), "--directories", "ten"], [str(tmp_path / "n"), "--seed", "-1"]):
        assert gen.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("simrun fileset: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "n").exists() or not os.listdir(tmp_path / "n")


def test_check_refuses_missing_or_small_sets(tmp_path):
    with pytest.raises(gen.FileSetError, match="no .fileset.json"):
        gen.check(str(tmp_path))
    gen.generate(str(tmp_path / "s"), FileSet(directories=1), seed=0)
    with pytest.raises(gen.FileSetError, match="needs 3"):
        gen.check(str(tmp_path / "s"), FileSet(directories=3))
