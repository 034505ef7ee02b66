"""The queue mode's ranking as a pure function: loads, loaded checkpoints and speeds in, an order out."""

from comfy_distributed.queue_mode.routing import Candidate, rank


def test_the_least_loaded_participant_comes_first_then_a_loaded_checkpoint_then_speed():
    master, w1, w2 = Candidate(1), Candidate(0, speed=2.0), Candidate(0, holds_model=True, speed=1.0)
    assert rank([master, w1, w2], "smart") == [2, 1, 0], "equal loads: the one holding the checkpoint first"
    assert rank([master, w1, Candidate(0, speed=1.0)], "smart") == [1, 2, 0], "then the faster one"


def test_a_tie_keeps_the_prompt_on_the_master_whose_speed_is_never_measured():
    assert rank([Candidate(0), Candidate(0, speed=5.0)], "smart") == [0, 1]
    assert rank([Candidate(0), Candidate(0), Candidate(0)], "smart") == [0, 1, 2], "nothing known: config order"


def test_an_unmeasured_worker_counts_as_the_average_of_those_measured():
    master = Candidate(1)  # busy: out of the way
    assert rank([master, Candidate(0), Candidate(0, speed=1.0), Candidate(0, speed=3.0)], "smart")[:3] == [3, 1, 2]


def test_least_busy_looks_at_the_load_alone():
    candidates = [Candidate(2), Candidate(1, holds_model=True, speed=9.0), Candidate(0)]
    assert rank(candidates, "least_busy") == [2, 1, 0]
    assert rank([Candidate(0), Candidate(0, holds_model=True, speed=9.0)], "least_busy") == [0, 1]
