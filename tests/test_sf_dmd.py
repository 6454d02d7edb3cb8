"""SF-DMD's stage wiring: joint mode regularises with the generator's own chunk pattern and the run's TF-sCM
settings (one recipe, ``objectives/tf_methods``), and the real score's CFG is the synthetic data's."""
import dataclasses

import pytest
import torch

from causal_rcm.config import preset
from causal_rcm.masks import ChunkPattern
from causal_rcm.models import WanDiT
from causal_rcm.models.conditioning import WorldTextEncoder
from causal_rcm.objectives import tf as obj
from causal_rcm.objectives.tf_methods import METHODS, Nets, Objective, StepInfo
from causal_rcm.seeding import JOINT, local_ids
from causal_rcm.stages.sf_dmd import DMDConfig, _joint_setup, real_cfg
from causal_rcm.stages.synth import SynthConfig, run_synth
from causal_rcm.stages.tf import TFData
from causal_rcm.stream.bundle import Bundle
from causal_rcm.stream.sampling import Euler, EulerCFG, FewStep
from causal_rcm.worlds.base import WorldConfig
from causal_rcm.worlds.registry import make_world

from .conftest import randomize_

WORLD = WorldConfig(size=16, frames=5)  # 5 frames split as c1-4, not as c3-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd")
    torch.manual_seed(0)
    text = WorldTextEncoder.for_prompts(list(make_world(WORLD).prompts()), dim=16, num_layers=1, num_heads=2)
    net = randomize_(WanDiT(dataclasses.replace(preset("blob-tiny"), text_dim=16)), std=0.05)
    teacher = Bundle(net, text, Euler(steps=2, cfg=2.5), WORLD, "teacher").save(root / "teacher.safetensors")
    causal = Bundle(net, text, EulerCFG("c1-4", 2), WORLD, "causal_teacher").save(root / "tf.safetensors")
    student = Bundle(net, text, FewStep("c1-4", 2, 1), WORLD, "student").save(root / "student.safetensors")
    data = run_synth(SynthConfig(teacher=str(teacher), n=4, shard_size=4, batch=4, cfg=1.5), root / "synth",
                     progress=False)
    return dict(teacher=teacher, causal=causal, student=student, data=data)


def test_joint_mode_uses_the_generators_pattern_and_the_runs_objective(setup):
    objective = Objective(scm_mean=0.4, scm_warmup=0.5)
    cfg = DMDConfig(init=str(setup["student"]), teacher=str(setup["teacher"]), data=str(setup["data"]),
                    tf_teacher=str(setup["causal"]), joint=True, objective=objective)
    src = Bundle.load(setup["student"], device="cpu", trainable=True)
    pattern = ChunkPattern.parse(src.sampling.pattern)
    ids = local_ids(2, 0, 1)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch=2, steps=10))
    loss, m = _joint_setup(cfg, src, pattern, "cpu", ids)(src.net, 3)
    # the same recipe by hand: c1-4 masks, the run's objective (warm-up r = 3 / (0.5 · 10))
    b, rng = TFData(str(setup["data"]), src, False, cfg.train.seed, "cpu").batch(3, ids, tag=JOINT)
    v_fn, jvp_fn = obj.net_fns(src.net)
    tf_teacher = Bundle.load(setup["causal"], device="cpu").net
    want, wm = METHODS["tf_scm"].loss(Nets(v_fn, jvp_fn, obj.net_fns(tf_teacher)[0]), b, rng, objective, pattern,
                                      StepInfo(3, 10))
    assert torch.allclose(loss, want) and float(m["warmup_r"]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="do not split into chunk pattern c3-3"):
        ChunkPattern.parse("c3-3").check(WORLD.frames)  # the pattern the old joint mode hard-coded


def test_real_score_cfg_is_the_synthetic_datas(setup):
    teacher = Bundle.load(setup["teacher"], device="cpu")
    assert real_cfg(DMDConfig(data=str(setup["data"])), teacher) == 1.5   # what the data were drawn with
    assert real_cfg(DMDConfig(), teacher) == 2.5                          # no data: the teacher's own
    assert real_cfg(DMDConfig(w_real=4.0, data=str(setup["data"])), teacher) == 4.0  # an explicit ablation


@pytest.mark.parametrize("teacher", ["teacher", "causal"])
def test_a_causal_teacher_scores_each_block_given_the_rollouts_past(setup, teacher, tmp_path, monkeypatch):
    """The real and the fake score see whole rollouts without a mask for a bidirectional teacher; a causal one
    sees the TF layout of its own pattern, [rollout clean | rollout noised at t_D], so block k is scored given
    the rollout's earlier frames. The stage runs either way; the generator itself only runs on its KV cache."""
    from causal_rcm.masks import TeacherForcing
    from causal_rcm.stages.sf_dmd import train_sf_dmd

    seen = []
    forward = WanDiT.forward

    def record(self, x, t, context, mask=None, cache=None, **kw):
        if cache is None:
            seen.append((mask, x.shape[2], x[:, :, :x.shape[2] // 2].clone(), t.clone()))
        return forward(self, x, t, context, mask=mask, cache=cache, **kw)

    monkeypatch.setattr(WanDiT, "forward", record)
    cfg = DMDConfig(init=str(setup["student"]), teacher=str(setup[teacher]), data=str(setup["data"]))
    cfg = dataclasses.replace(cfg, critic_ratio=1, train=dataclasses.replace(
        cfg.train, batch=2, steps=1, warmup=1, eval_every=0, ckpt_every=1, num_workers=0))
    train_sf_dmd(cfg, tmp_path / "run", device="cpu")
    assert len(seen) >= 3  # the critic's flow matching and the two scores
    T = WORLD.frames
    if teacher == "teacher":
        assert all(m is None and f == T for m, f, _, _ in seen)
    else:
        assert all(isinstance(m, TeacherForcing) and m.pattern == ChunkPattern.parse("c1-4") and f == 2 * T
                   for m, f, _, _ in seen)
        for _, _, ctx_frames, t in seen:
            assert (t[:, :T] == 0).all() and (t[:, T:] > 0).all()  # the clean past, the noisy blocks
        # the DMD call: real and fake see the same clean rollout (the CFG halves tiled)
        real_ctx, fake_ctx = seen[-2][2], seen[-1][2]
        assert torch.equal(real_ctx[:2], real_ctx[2:]) and torch.equal(real_ctx[:2], fake_ctx)
