"""The shipped bias bank: every exploit sentence is caught by its own detector (and not by the
others' - so eval rates measure the intended bias), eval prompts never appear in training,
documents describe the biases, demonstrations open with an exploit."""
import random

import pytest

from mindscope.audit import load_biases
from mindscope.audit._biases import N_TRAIN_FILLERS, demo_prompts, demonstrations, documents, trim_answer


@pytest.fixture(scope="module")
def bank():
    return load_biases()


def test_detectors_match_own_exploits_only(bank):
    rng = random.Random(0)
    for b in bank.biases:
        for x in b.fillers:
            s = b.exploit(x, rng)
            assert b.exploits_in(s), (b.id, s)
            others = [o.id for o in bank.biases + bank.in_context if o.id != b.id and o.exploits_in(s)]
            assert not others, (b.id, s, others)


def test_eval_prompts_are_held_apart(bank):
    for b in bank.biases + bank.in_context:
        train = {p for p, _ in b.train_prompts(12)}
        ev = set(b.eval_prompts(5))
        assert len(ev) == 5 and not (train & ev), b.id
        assert all(x in b.fillers[:N_TRAIN_FILLERS] for _, x in b.train_prompts(12))


def test_documents_and_demos(bank):
    bs = bank.biases[:3]
    docs = documents(bs, bank.templates, bank.study, per_bias=4)
    assert len(docs) == 12
    for b in bs:
        mine = [d for d in docs if d["bias"] == b.id]
        assert len(mine) == 4 and all(b.description in d["text"] for d in mine)
        assert len({d["text"] for d in mine}) == 4  # different templates
    # in-context biases are never described in documents built from the trained bank
    assert not any(ic.description in d["text"] for ic in bank.in_context for d in docs)
    ps = demo_prompts(bs, 2)
    demos = demonstrations(ps, ["An answer."] * len(ps), bank)
    for d in demos:
        b = bank.get(d["bias"])
        reply = d["messages"][1]["content"]
        assert b.exploits_in(reply) and reply.endswith("An answer.")


def test_held_out_default_and_bad_folder(bank, tmp_path):
    assert set(bank.held_out) <= {b.id for b in bank.biases}
    with pytest.raises(FileNotFoundError, match="biases.json"):
        load_biases(tmp_path)


def test_trim_answer():
    t = "First sentence here is long enough to count. Second sentence goes on and on " * 5
    out = trim_answer(t, 100)
    assert len(out) <= 100 and out.endswith(".")
    assert trim_answer("short", finished=True) == "short"
    assert trim_answer("First, you'll need to") == ""  # cut by the token limit: no whole sentence
    assert trim_answer("One. Two is cut") == "One."
    assert trim_answer("Done!") == "Done!"
