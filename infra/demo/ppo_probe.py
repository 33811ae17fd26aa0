"""``python -m infra.demo.probe --stage ppo``: the cycle's PPO stage alone, on the
demo's stored feedback, from a policy and against a reward model a run left.

It starts from ``--policy-dir`` (e.g. a run's ``sft`` model), scores rollouts with
the reward model in ``--reward-dir`` (a run's ``reward/model``; ``--ppo-grounding``
sets the weight of the grounding term, ``fit`` fits it on the policy slice as the
cycle does), runs the demo preset's PPO (changed by ``--ppo-lr``, ``--ppo-steps``,
``--ppo-epochs``, ``--ppo-kl-coef``) on the policy slice's prompts, and prints each
step's mean score and KL, its rollouts counted by kind (the demo's out-of-policy
requests or not, replies that decline or not, with the reward model's mean score),
then the yardstick on the held-out questions before and after PPO, the KL gate's
figure of the result against the base (the production a first cycle is gated
against) and, with ``--gates``, the golden-regression and safety gates."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from infra.demo.probe_checks import cycle_snapshot, held_out_evaluation, print_gate_figures
from infra.demo.questions import load_out_of_policy, load_questions, split
from infra.demo.settings import DemoSettings
from infra.demo.yardstick import compare
from ratchet.db import connect
from training.cycle_config import TrainCycleConfig
from training.cycle_stages import reward_pairs
from training.device import Placement
from training.grounding import fit_weight
from training.kb_reader import kb_grounder
from training.refusals import is_refusal
from training.reward import RewardScorer, grounding_fit_pairs, sample_pairs
from training.settings import TrainingSettings
from training.stages import STAGES, StageContext
from training.suites_io import suite_prompts


def probe_ppo(args: argparse.Namespace, console: Console, settings: TrainingSettings) -> int:
    if args.policy_dir is None or args.reward_dir is None:
        console.print("[red]--stage ppo needs --policy-dir and --reward-dir[/] (a run's models)")
        return 2
    config = TrainCycleConfig.for_size("demo")
    ppo = config.ppo.model_copy(
        update={
            k: v
            for k, v in (
                ("learning_rate", args.ppo_lr),
                ("steps", args.ppo_steps),
                ("ppo_epochs", args.ppo_epochs),
                ("init_kl_coef", args.ppo_kl_coef),
            )
            if v is not None
        }
    )
    config = config.model_copy(update={"ppo": ppo})
    demo = DemoSettings()
    base = (demo.model or Path("models/base")).resolve()
    _, held_out = split(
        load_questions(demo.kb_dir), asked=demo.n_asked(), held_out=demo.n_held_out()
    )
    snapshot = cycle_snapshot(config, settings, console)
    with connect(settings.database_url) as conn:
        ground = kb_grounder(conn)
        suite_ground = kb_grounder(conn, k=settings.retrieval_k)
    if ground is None or not snapshot.train_pairs:
        console.print("[red]no knowledge base or no policy pairs in the store[/]: run `make demo`")
        return 2
    placement = Placement.resolve(settings.train_device, settings.train_precision)
    scorer = RewardScorer.for_stage(args.reward_dir, config.reward, placement)
    if args.ppo_grounding == "fit":  # as the cycle fits it (training.reward)
        pairs, seed = reward_pairs("reward", snapshot, config)
        fit_on = grounding_fit_pairs(
            pairs, sample_pairs(pairs, config.reward.max_train_pairs, seed)
        )
        scorer.grounding_weight = fit_weight(
            scorer.model_margins(fit_on),
            scorer.margins(fit_on, scorer.grounding_terms),
        )
    elif args.ppo_grounding is not None:
        scorer.grounding_weight = float(args.ppo_grounding)
    console.print(
        f"PPO from {args.policy_dir} against {args.reward_dir} (grounding weight"
        f" {scorer.grounding_weight}): {ppo}"
    )
    recorder = RolloutRecorder(scorer, {q.question for q in load_out_of_policy(demo.kb_dir)})
    tokens = demo.reply_tokens()
    prompts = suite_prompts([q.question for q in held_out], ground)
    before = held_out_evaluation(args.policy_dir, prompts, held_out, tokens)
    with tempfile.TemporaryDirectory(prefix="ratchet-probe-") as tmp:
        ctx = StageContext(
            snapshot=snapshot,
            config=config,
            placement=placement,
            run_dir=Path(tmp),
            progress=False,
            rewards=SimpleNamespace(policy_scorer=recorder),
        )
        out = Path(tmp) / "ppo"
        t0 = time.monotonic()
        outcome = STAGES["ppo"].run(ctx, args.policy_dir, out)
        console.print(f"PPO: {time.monotonic() - t0:.0f} s, {outcome.metrics}")
        for i, h in enumerate(outcome.history, 1):
            console.print(f"  step {i}: mean score {h['mean_score']:.3f}, KL {h['mean_kl']:.3f}")
        recorder.print(console, ppo.batch_size)
        after = held_out_evaluation(out, prompts, held_out, tokens)
        print_gate_figures(
            console,
            base,
            out,
            prompts,
            settings,
            suite_ground,
            placement,
            kl=True,
            gates=args.gates,
        )
    console.print("the yardstick, before PPO (the start policy) -> after:")
    for change in compare(before, after):
        console.print(f"{change.criterion:>12}: {change.line()}")
    return 0


class RolloutRecorder:
    """The reward model's ``score``, recording each rollout: whether its prompt is one of
    the demo's out-of-policy requests, whether the reply declines (the safety gate's
    rule) and its score, so that what PPO was rewarded for can be read by kind."""

    def __init__(self, scorer: RewardScorer, requests: set[str]) -> None:
        self.scorer = scorer
        self.requests = requests
        self.rows: list[tuple[bool, bool, float]] = []

    def score(self, prompts: list, replies: list[str]) -> list[float]:
        scores = self.scorer.score(prompts, replies)
        for prompt, reply, value in zip(prompts, replies, scores, strict=True):
            asked = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
            self.rows.append((asked.strip() in self.requests, is_refusal(reply), float(value)))
        return scores

    def print(self, console: Console, batch_size: int) -> None:
        console.print("PPO's rollouts by prompt and reply (reward model's mean score):")
        for request in (True, False):
            for declines in (True, False):
                got = [s for r, d, s in self.rows if r == request and d == declines]
                mean = f"{sum(got) / len(got):+.3f}" if got else "-"
                console.print(
                    f"  {'out-of-policy request' if request else 'other prompt':>21},"
                    f" reply {'declines' if declines else 'complies':>8}: {len(got):3d}, {mean}"
                )
        steps = [self.rows[i : i + batch_size] for i in range(0, len(self.rows), batch_size)]
        console.print(
            "  per step, requests / declined replies: "
            + " ".join(f"{sum(r for r, _, _ in b)}/{sum(d for _, d, _ in b)}" for b in steps)
        )
