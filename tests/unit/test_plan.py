import pytest

from comfy_distributed.config import parse_config
from comfy_distributed.errors import WorkflowError
from comfy_distributed.engine.plan import plan_summary, literal_batch, plan_job, unit_sizes, weighted_plan
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS, build_master_rerun, build_worker_prompt


def prompt(batch=2):
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "2": {"class_type": "KSampler", "inputs": {"seed": ["9", 0], "latent_image": ["1", 0], "model": ["8", 0]}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["8", 2]}},
        "4": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["3", 0]}},
        "8": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "9": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": 100}},
    }


def test_unit_sizes_depend_only_on_total_and_unit_size():
    assert unit_sizes(6, 1) == [1] * 6
    assert unit_sizes(7, 3) == [3, 3, 1]


def test_weighted_plan_shares_by_weight_and_keeps_unit_0_on_the_master():
    assert weighted_plan(6, [1, 1, 1]) == {0: [0, 1], 1: [2, 3], 2: [4, 5]}
    assert weighted_plan(10, [3, 1, 1]) == {0: [0, 1, 2, 3, 4, 5], 1: [6, 7], 2: [8, 9]}
    plan = weighted_plan(4, [0.01, 10, 10])
    assert plan[0] == [0] and sum(len(v) for v in plan.values()) == 4


def test_literal_batch_is_required_for_resizable_units():
    assert literal_batch(prompt(3), ["4"]) == 3
    linked = prompt()
    linked["1"]["inputs"]["batch_size"] = ["7", 0]
    with pytest.raises(WorkflowError, match="no single literal batch_size"):
        literal_batch(linked, ["4"])


def test_worker_unit_is_resized_and_seeded():
    copy = build_worker_prompt(prompt(), ["4"], seed_offset=5, batch=1)
    assert copy["1"]["inputs"]["batch_size"] == 1 and copy["2"]["inputs"]["seed"] == 105


def test_master_rerun_copies_only_what_the_unit_changes():
    nodes, images = build_master_rerun(prompt(), "4", seed_offset=3, prefix="p.", batch=1)
    assert set(nodes) == {"p.1", "p.2", "p.3"}  # the checkpoint loader is reused from the master's run
    assert nodes["p.1"]["inputs"]["batch_size"] == 1
    assert nodes["p.2"]["inputs"]["seed"] == 103
    assert nodes["p.2"]["inputs"]["model"] == ["8", 0] and nodes["p.2"]["inputs"]["latent_image"] == ["p.1", 0]
    assert images == {"images": ["p.3", 0]}
    same_batch, _ = build_master_rerun(prompt(), "4", seed_offset=3, prefix="q.")
    assert set(same_batch) == {"q.2", "q.3"}  # static re-run: the latent is reused too


def test_the_plan_summary_names_participants_and_ranges():
    config = parse_config({"workers": [{"id": 1, "port": 9001}, {"id": 2, "port": 9002, "enabled": False}]})
    plan = plan_summary(prompt(), plan_job(prompt(), config))
    assert [(p["role"], p["seeds"]["9"]) for p in plan["participants"]] == [("master", 100), ("worker", 101)]
    assert plan["outputs"]["4"]["ranges"] == [[0, 2], [2, 4]]


def test_one_plan_runs_and_is_described():
    """What prepare_job reports is what the orchestrator runs: both come from plan_job."""
    config = parse_config({"workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8190}],
                           "settings": {"scheduling_mode": "weighted", "unit_size": 1}})
    p = prompt()
    planned = plan_job(p, config, weights=[1.0, 3.0, 0.0])
    described = plan_summary(p, planned)
    assert described["mode"] == planned.mode == "weighted"
    assert planned.first_runs() == {"master": [1], "1": [2, 3, 4, 5]}  # 6 units by weights 1 : 3 : 0
    worker_1 = described["participants"][1]["name"]
    assert [u["planned"] for u in described["units"]] == ["master", "master"] + [worker_1] * 4
    assert planned.worker_units() == [(p, 1) for p in range(1, 6)]


def test_the_whole_job_is_planned_in_one_pass():
    """plan_prompt: the plan, each unit's Values and worker prompt, and the master's marked prompt, together."""
    from comfy_distributed.engine.plan import plan_prompt
    from comfy_distributed.graph.workflow import JOB_INPUT

    config = parse_config({"workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8190}]})
    p = prompt()
    planned = plan_prompt(p, config, None, lambda class_type: None, "job-1")
    assert planned.plan.mode == "static" and planned.plan == plan_job(p, config)
    assert [(u.position, u.batch) for u in planned.units] == [(1, None), (2, None)]
    for unit in planned.units:
        assert unit.prompt == build_worker_prompt(p, ["4"], unit.position, None, {})
        assert unit.prompt["2"]["inputs"]["seed"] == 100 + unit.position
    assert planned.marked["4"]["inputs"][JOB_INPUT] == "job-1" and JOB_INPUT not in p["4"]["inputs"]
    assert planned.kinds == {"4": ["images"]}
