"""Scale-out (train/parallelize.py, placement.py, sharded_state.py): FSDP2 over 2 gloo processes against
one process on the tiny world. The same losses (≤ 1e-5 relative) for TF (with gradient accumulation and
clipping), TF-sCM (forward-mode pass under FSDP2, a 2-block student of a 3-block init, an evaluation of the
sharded EMA) and SF-DMD; sharded loading, forward_jvp and gradients (plain and checkpointed) equal the whole
network's; checkpoints move between world sizes both ways; a recipe runs under torchrun end to end."""
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from causal_rcm.io import read_jsonl
from causal_rcm.stream.bundle import Bundle
from causal_rcm.train.checkpoint import checkpoint_meta, latest_checkpoint

from .conftest import TINY, randomize_
from .distributed_setup import RUNS, STEPS, make_assets, stage_config, torchrun, train

pytestmark = pytest.mark.multiprocess
JOBS = Path(__file__).with_name("distributed_jobs.py")


@contextmanager
def one_thread():
    """Each torchrun worker runs one thread: the one-process side does too (numerics and a busy CPU alike)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    with one_thread():
        return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def single(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    with one_thread():
        for stage, overrides in RUNS.items():
            train(stage, stage_config(stage, assets, *overrides), out / stage)
    return out


@pytest.fixture(scope="module")
def sharded(assets, single, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    torchrun(str(JOBS), "all", str(assets), str(out), str(single))
    return out


def records(run: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in read_jsonl(run / "metrics.jsonl") if key in r]


def close(a, b, rel=1e-5) -> bool:
    """Equal lengths and values within ``rel`` (a metric undefined on both sides, NaN, counts as equal)."""
    same = lambda x, y: (x != x and y != y) or abs(x - y) <= rel * max(abs(x), abs(y))  # noqa: E731
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def bundle_gap(a: Path, b: Path) -> float:
    x, y = (Bundle.load(p).net.state_dict() for p in (a, b))
    return max(((x[k] - y[k]).abs().max() / (y[k].abs().max() + 1e-12)).item() for k in x)


@pytest.mark.parametrize("stage", list(RUNS))
def test_two_processes_log_the_losses_of_one(stage, single, sharded):
    one, two = records(single / stage), records(sharded / stage)
    assert len(one) == STEPS and close(one, two), (one, two)
    assert json.loads((sharded / stage / "config.json").read_text())["world_size"] == 2
    assert json.loads((single / stage / "config.json").read_text())["world_size"] == 1
    assert bundle_gap(sharded / stage / "model.safetensors", single / stage / "model.safetensors") < 1e-4
    assert checkpoint_meta(latest_checkpoint(sharded / stage))["format"] == "dcp"


def test_accumulation_clipping_and_evaluation_agree(single, sharded):
    """TF ran 2 micro-batches per rank with every step clipped; TF-sCM evaluated its sharded EMA."""
    assert records(sharded / "tf", "clipped") == [1.0] * STEPS
    assert close(records(single / "tf", "grad_norm"), records(sharded / "tf", "grad_norm"))
    evals = [k for k in read_jsonl(single / "tf_scm" / "metrics.jsonl")[-1] if k.startswith("eval/")]
    assert evals
    for k in evals:
        one, two = records(single / "tf_scm", k), records(sharded / "tf_scm", k)
        assert close(one, two, rel=1e-4), (k, one, two)


def test_sharded_network_equals_the_whole_one(sharded):
    units = json.loads((sharded / "units.json").read_text())
    assert units["load"] == 0.0 and units["jvp"] == 0.0  # loaded shard by shard; forward_jvp through FSDP2
    assert units["load_wan"] == 0.0  # a Wan checkpoint of two shard files, config from its headers
    assert units["gathered"] and units["resharded"]  # Placement.gathered: a rollout's blocks stay gathered
    for ac in ("none", "full", "selective"):
        assert units[f"loss_{ac}"] == 0.0 and units[f"grad_{ac}"] < 1e-5, (ac, units)


def test_dcp_checkpoint_of_two_processes_resumes_on_one(assets, sharded, tmp_path):
    run = tmp_path / "tf"
    shutil.copytree(sharded / "tf", run)
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS:08d}")
    (run / "model.safetensors").unlink()
    with one_thread():  # one process, no FSDP, one micro-batch: the step-2 DCP state continues alike
        train("tf", stage_config("tf", assets, *RUNS["tf"]), run)
    assert close(records(run), records(sharded / "tf"))
    assert bundle_gap(run / "model.safetensors", sharded / "tf" / "model.safetensors") < 1e-4
    assert "format" not in checkpoint_meta(latest_checkpoint(run))  # one process writes safetensors again


def test_one_process_checkpoint_resumes_on_two(single, sharded):
    """SF-DMD's step-2 safetensors state (generator, critic, EMA, two optimisers) into FSDP2 shards."""
    assert close(records(sharded / "resumed_sf_dmd"), records(single / "sf_dmd"))
    assert bundle_gap(sharded / "resumed_sf_dmd" / "model.safetensors", single / "sf_dmd" / "model.safetensors") < 1e-4


def test_activation_checkpointing_gives_identical_gradients_and_recomputes_what_it_says():
    """Gradients equal without checkpointing; the backward recomputes every block matmul (full) or only the
    feed-forward's up-projection (selective)."""
    from torch.utils.flop_counter import FlopCounterMode

    from causal_rcm.masks import ChunkPattern, teacher_forcing
    from causal_rcm.models import WanDiT
    from causal_rcm.train.parallelize import apply_ac

    torch.manual_seed(0)
    plain = randomize_(WanDiT(TINY)).double()
    B, L = 2, 6 * 4  # 6 frames (the TF layout of 3) of 2 × 2 tokens
    x, t, ctx = torch.randn(B, 4, 6, 4, 4).double(), torch.rand(B, 6).double(), torch.randn(B, 3, TINY.text_dim).double()
    mask = teacher_forcing(ChunkPattern.parse("c1-2"))
    results = {}
    for ac in ("none", "full", "selective"):
        net = WanDiT(TINY).double()
        net.load_state_dict(plain.state_dict())
        apply_ac(net, ac)
        loss = net(x, t, ctx, mask=mask).square().sum()
        with FlopCounterMode(display=False) as m:
            loss.backward()
        results[ac] = ([p.grad for p in net.parameters()], m.get_total_flops())
    d, f = TINY.dim, TINY.ffn_dim
    block = 2 * B * L * (4 * d * d + 2 * d * d + 2 * d * f)
    for ac in ("full", "selective"):
        assert all(torch.equal(a, b) for a, b in zip(results["none"][0], results[ac][0])), ac
    assert results["full"][1] - results["none"][1] == TINY.num_layers * block
    assert results["selective"][1] - results["none"][1] == TINY.num_layers * 2 * B * L * d * f


def test_bad_parallel_settings_are_refused():
    from causal_rcm.seeding import local_ids
    from causal_rcm.train.distributed import micro_batches
    from causal_rcm.train.parallelize import ParallelConfig

    for key, value in (("ac", "some"), ("fsdp", "yes"), ("grad_accum", 0), ("param_dtype", "fp8"),
                       ("attention", "dense"), ("sdpa", "flash")):
        with pytest.raises(ValueError, match=f"parallel.{key}"):
            ParallelConfig(**{key: value})
    with pytest.raises(ValueError, match="multiple of world size × grad_accum"):
        micro_batches(range(2, 5), 2)
    with pytest.raises(ValueError, match="multiple of the world size"):
        local_ids(5, 0, 2)


RECIPE = """
name: torchrun
stages:
  - {stage: teacher, preset: blob-tiny, overrides: [train.steps=2, train.batch=4]}
  - {stage: synth, preset: blob-tiny, inputs: {teacher: teacher}, overrides: [n=4, steps=2, batch=4]}
  - {stage: tf, preset: blob-tiny, inputs: {data: synth, init: teacher}, overrides: [train.steps=2, train.batch=2]}
  - {stage: sf_dmd, preset: blob-tiny, inputs: {init: tf, teacher: teacher},
     overrides: [train.steps=2, train.batch=2, critic_ratio=1]}
report: {prompts: 1, per_prompt: 2, batch: 2}
"""


def test_recipe_runs_under_torchrun(tmp_path):
    recipe = tmp_path / "torchrun.yaml"
    recipe.write_text(RECIPE)
    torchrun("-m", "causal_rcm.cli", "run", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert "| sf_dmd |" in (tmp_path / "run" / "report.md").read_text()
    for stage in ("teacher", "tf", "sf_dmd"):
        assert json.loads((tmp_path / "run" / stage / "config.json").read_text())["world_size"] == 2
