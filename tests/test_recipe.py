"""The whole recipe end to end on a tiny world, a few steps per stage: every stage runs, hands its outputs
on, resumes, and the report scores every model."""
import json
from pathlib import Path

import numpy as np
import torch

from causal_rcm.cli import main
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sample import sample_videos

RECIPE = """
name: smoke
stages:
  - {stage: teacher, preset: blob-tiny, overrides: [train.steps=4, train.batch=4]}
  - {stage: synth, preset: blob-tiny, inputs: {teacher: teacher}, overrides: [n=8, steps=2, batch=8]}
  - {stage: tf, preset: blob-tiny, inputs: {data: synth, init: teacher}, overrides: [train.steps=2, train.batch=2]}
  - {stage: tf_scm, preset: blob-tiny, inputs: {data: synth, init: tf, teacher: tf},
     overrides: [train.steps=2, train.batch=2, objective.noisy_context=true]}
  - {stage: tf_meanflow, preset: blob-tiny, inputs: {data: synth, init: tf, teacher: tf},
     overrides: [train.steps=2, train.batch=2]}
  - {stage: tf_dcm, preset: blob-tiny, inputs: {data: synth, init: tf, teacher: tf},
     overrides: [train.steps=2, train.batch=2]}
  - {stage: df, preset: blob-tiny, inputs: {data: synth, init: teacher}, overrides: [train.steps=2, train.batch=2]}
  - {stage: synth, name: synth_ode, preset: blob-tiny, inputs: {teacher: teacher},
     overrides: [n=4, steps=6, batch=4, "ode_times=[0.9994,0.9375,0.8333,0.625]"]}
  - {stage: ode_init, preset: blob-tiny, inputs: {data: synth_ode, init: tf}, overrides: [train.steps=2, train.batch=2]}
  - {stage: sf_dmd, preset: blob-tiny, inputs: {init: tf_scm, teacher: teacher},
     overrides: [train.steps=2, train.batch=2, critic_ratio=1, context=noisy]}
  - {stage: sf_dmd, name: sf_dmd_joint, preset: blob-tiny,
     inputs: {init: tf_scm, teacher: teacher, data: synth, tf_teacher: tf},
     overrides: [train.steps=1, train.batch=2, critic_ratio=1, joint=true, replay=false]}
report: {prompts: 2, per_prompt: 2, batch: 8}
"""


def test_recipe_end_to_end(tmp_path):
    recipe = tmp_path / "smoke.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for name in ("teacher", "tf", "tf_scm", "tf_meanflow", "tf_dcm", "df", "ode_init", "sf_dmd", "sf_dmd_joint",
                 "data (rendered)"):
        assert f"| {name} |" in report
    student = Bundle.load(out / "tf_scm" / "model.safetensors")
    assert student.sampling.method == "few_step" and student.sampling.context == "noisy"
    assert Bundle.load(out / "tf_meanflow" / "model.safetensors").net.cfg.dual_time
    dmd = json.loads((out / "sf_dmd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(k in dmd for k in ("critic_loss", "dmd_grad_norm", "loss"))
    assert "joint_scm_loss" in (out / "sf_dmd_joint" / "metrics.jsonl").read_text()
    videos = sample_videos(student, ["a red ball"] * 2, seed=0, show_progress=False)
    assert videos.shape == (2, 9, 16, 16, 3) and videos.dtype == np.uint8
    config = json.loads((out / "tf_scm" / "config.json").read_text())
    assert config["method"] == "tf_scm" and Path(config["teacher"]).name == "model.safetensors"
    # a second run finds every output in place and only re-scores
    assert main(["run", str(recipe), "--out", str(out)]) == 0


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {stage: tf, inputs: {data: synth}}\n")
    assert main(["run", str(bad)]) == 2
    bad.write_text("stages:\n  - {stage: teleport}\n")
    assert main(["run", str(bad)]) == 2


def test_teacher_continues_from_a_bundle(tmp_path):
    """init= starts the teacher from a bundle's weights (with lr = 0 they come out unchanged)."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "teacher", "--preset", "blob-tiny", "train.steps=1", "train.batch=2",
                 "--out", str(first)]) == 0
    assert main(["train", "teacher", "--preset", "blob-tiny", "train.steps=1", "train.batch=2", "train.lr=0",
                 f"init={first / 'teacher.safetensors'}", "--out", str(second)]) == 0
    a, b = (Bundle.load(p / "teacher.safetensors").net.state_dict() for p in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "teacher", "--preset", "blob-s", "train.steps=1",
                 f"init={first / 'teacher.safetensors'}", "--out", str(tmp_path / "c")]) == 2


def test_a_world_model_starts_from_an_action_free_teacher(tmp_path):
    """An agent teacher initialised from a text-to-video teacher (METHOD.md §7): the init's weights and text
    encoder (whose vocabulary covers the agent world's prompts) come over unchanged, the new action embedding
    starts at zero (lr = 0 keeps it there), and the world model answers actions."""
    t2v, agent = tmp_path / "t2v", tmp_path / "agent"
    assert main(["train", "teacher", "--preset", "blob-tiny", "train.steps=1", "train.batch=2",
                 "--out", str(t2v)]) == 0
    assert main(["train", "teacher", "--preset", "blob-tiny", "world.variant=agent", "train.steps=1",
                 "train.batch=2", "train.lr=0", f"init={t2v / 'teacher.safetensors'}", "--out", str(agent)]) == 0
    a, b = (Bundle.load(p / "teacher.safetensors") for p in (t2v, agent))
    assert b.net.cfg.action_dim > 0 and b.text_encoder.cfg.vocab == a.text_encoder.cfg.vocab
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # zero-initialised action embedding: with any actions the world model's velocity is the init's
    from causal_rcm.models.conditioning import encode_actions

    x, t = torch.randn(2, 3, 9, 16, 16), torch.rand(2)
    ctx, _ = a.contexts(["a red ball", "no ball"])
    acts = encode_actions(torch.randint(0, b.net.cfg.action_dim, (2, 9, 1)), b.net.cfg.action_dim)
    with torch.no_grad():
        v_a, v_b = a.net(x, t, ctx), b.net(x, t, ctx, actions=acts)
    assert v_a.abs().max() > 0 and (v_a - v_b).abs().max() <= 1e-5 * v_a.abs().max()


def test_builtin_recipes_give_dmd_the_synthetic_data(monkeypatch):
    """SF-DMD's real score takes the CFG scale the synthetic data were drawn with from their manifest (METHOD.md
    §5); a built-in recipe whose sf_dmd stage lacks ``data`` would silently fall back to the teacher's own."""
    import yaml

    from causal_rcm.stages.recipe import builtin_recipes, load_recipe, recipe_path, recipe_variables

    for name in builtin_recipes():
        for var in recipe_variables(yaml.safe_load(recipe_path(name).read_text())):  # user paths (Wan2.1)
            monkeypatch.setenv(var, "/nowhere")
        stages = load_recipe(name)["stages"]
        synths = {st.get("name", st["stage"]) for st in stages if st["stage"] == "synth"}
        for st in stages:
            if st["stage"] == "sf_dmd" and synths:
                assert (st.get("inputs") or {}).get("data") in synths, (name, st)
