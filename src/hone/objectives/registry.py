"""Every objective behind one switch (`objective:`): what it trains on, what it builds, which loop runs it.

One frozen dataclass per objective and one table, as `methods/registry.py` does for methods. The
config check, `objectives.run`, the recipe advice, the launch checks, the method/objective matrix,
the CLI's result table and docs/objectives.md's safeguard table all read it. Adding an objective is
one entry here and one recipe file beside this one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from hone.data.records import ChatExample, LabelExample, PreferenceExample, TagExample, TextExample
from hone.methods.registry import METHODS
from hone.objectives import classify, distill, grpo, mixture, ner, preference, pretrain, reward, sft

# Why a safeguard cannot apply, per kind of objective: refused in one line when the user sets it.
NO_KL_HEAD = "a new task head has no base distribution to stay near; use eval.forgetting and a lower lr"
NO_KL_PREFERENCE = "the preference loss already holds the model near its reference (preference.beta)"
NO_KL_GRPO = "grpo has its own KL penalty to the base: set grpo.beta"
NO_REPLAY_HEAD = "replay mixes hone's general chats into generated answers; a classifier head cannot train on them"
NO_REPLAY_PAIRS = "replay mixes general chats into SFT data; preference pairs have no place for them"
NO_REPLAY_GRPO = "grpo samples its own answers to the prompts; there are no target answers to mix"
NO_REPLAY_TEXT = ("replay mixes hone's general chats into chat data; for raw text, add a general-text dataset as "
                  "a second source of objective mixture")
NO_VALIDATION_GRPO = ("grpo has no held-out loss to watch (it samples and scores its own answers); bound it with "
                      "train.max_steps or train.time_budget and compare mean reward base vs tuned")


@dataclass(frozen=True)
class Objective:
    name: str
    trains: str                                  # what it optimises, in one line
    needs: tuple[type, ...]                      # record types (data/records.py) it trains on; () = several files
    run: Callable                                # the recipe: (config, run_dir=None, console=None) -> RunResult
    loop: str                                    # "hone" (training/loop.py) or "trainer" (transformers/TRL)
    model_class: str                             # the transformers auto class the model is built with
    metric: str                                  # the score reported base vs tuned
    head: str | None = None                      # "sequence", "token" or "reward": a new head on the model
    lower_is_better: bool = False                # perplexity, loss
    advisable: bool = True                       # can the advice pick it from the data alone (grpo needs a reward)
    refuses: Mapping[str, str] = field(default_factory=dict)  # setting -> why it cannot apply here

    @property
    def own_loop(self) -> bool:
        return self.loop == "hone"


_HEAD_REFUSES = MappingProxyType({"train.kl_to_base": NO_KL_HEAD, "train.replay": NO_REPLAY_HEAD})
_PAIR_REFUSES = MappingProxyType({"train.kl_to_base": NO_KL_PREFERENCE, "train.replay": NO_REPLAY_PAIRS})

_OBJECTIVES = [
    Objective("sft", "the assistant turns of chat or instruction data", (ChatExample, PreferenceExample), sft.run_sft,
              "hone", "AutoModelForCausalLM", "exact_match or json_match (chosen from the answers)"),
    Objective("pretrain", "every token of raw domain text (continued pre-training)", (TextExample,),
              pretrain.run_pretrain, "hone", "AutoModelForCausalLM", "perplexity", lower_is_better=True,
              refuses=MappingProxyType({"train.replay": NO_REPLAY_TEXT})),
    Objective("mixture", "several chat/text datasets with weights, one run", (), mixture.run_mixture, "hone",
              "AutoModelForCausalLM", "weighted validation loss", lower_is_better=True, advisable=False,
              refuses=MappingProxyType({"train.replay": "a mixture draws its own sources by weight: add hone's "
                                        "general chats as one of them instead of train.replay"})),
    Objective("classify", "one label per text (a new sequence-classification head)", (LabelExample, ChatExample),
              classify.run_classify, "trainer", "AutoModelForSequenceClassification", "accuracy",
              head="sequence", refuses=_HEAD_REFUSES),
    Objective("ner", "one tag per word (a new token-classification head)", (TagExample,), ner.run_ner, "trainer",
              "AutoModelForTokenClassification", "entity_f1", head="token", refuses=_HEAD_REFUSES),
    Objective("dpo", "chosen over rejected answers, against a frozen reference (DPO)", (PreferenceExample,),
              preference.run_preference, "trainer", "AutoModelForCausalLM", "pairwise_accuracy",
              refuses=_PAIR_REFUSES),
    Objective("orpo", "SFT on chosen answers plus an odds-ratio preference term (no reference)",
              (PreferenceExample,), preference.run_preference, "trainer", "AutoModelForCausalLM",
              "pairwise_accuracy", refuses=_PAIR_REFUSES),
    Objective("simpo", "a length-normalised preference margin (no reference)", (PreferenceExample,),
              preference.run_preference, "trainer", "AutoModelForCausalLM", "pairwise_accuracy",
              refuses=_PAIR_REFUSES),
    Objective("reward", "a scalar reward model from preference pairs", (PreferenceExample,), reward.run_reward,
              "trainer", "AutoModelForSequenceClassification", "pairwise_accuracy", head="reward",
              refuses=_HEAD_REFUSES),
    Objective("grpo", "answers sampled and scored by a reward function or model (GRPO)", (ChatExample,),
              grpo.run_grpo, "trainer", "AutoModelForCausalLM", "mean_reward", advisable=False,
              refuses=MappingProxyType({"train.kl_to_base": NO_KL_GRPO, "train.replay": NO_REPLAY_GRPO,
                                        "train.early_stopping_patience": NO_VALIDATION_GRPO,
                                        "train.restore_best": NO_VALIDATION_GRPO,
                                        "train.eval_every": NO_VALIDATION_GRPO})),
    Objective("distill", "a teacher's answers to the training prompts (+ its token distributions where the "
              "vocabularies match)", (ChatExample,), distill.run_distill, "hone", "AutoModelForCausalLM",
              "exact_match or json_match, student base vs student vs teacher", advisable=False),
]
OBJECTIVES: dict[str, Objective] = {o.name: o for o in _OBJECTIVES}


def objectives_for(record_type: type) -> list[str]:
    """The objectives that train on records of this type, in table order."""
    return [o.name for o in _OBJECTIVES if record_type in o.needs]


def method_objective_pairs(valid: bool = True) -> list[tuple[str, str]]:
    """(method, objective) pairs that apply (or, with valid=False, those refused): tests/test_matrix.py's
    parametrisation, from both tables."""
    return [(m.name, o.name) for m in METHODS.values() for o in _OBJECTIVES
            if m.applies(o.head is not None, o.own_loop) == valid]


# The safeguards every run gets unless its objective refuses them (the `refuses` settings above).
SAFEGUARDS = [("validation", "train.eval_every"), ("early stopping", "train.early_stopping_patience"),
              ("restore best", "train.restore_best"), ("overfitting alarm", "train.early_stopping_patience"),
              ("trackers", "train.report_to"), ("forgetting probe", "eval.forgetting"),
              ("replay", "train.replay"), ("KL to base", "train.kl_to_base"), ("HTML report", "")]


def safeguard_table() -> str:
    """docs/objectives.md's table: each objective x each safeguard, `yes` or `no (k)` with reason k below it."""
    reasons = list(dict.fromkeys(why for entry in _OBJECTIVES for why in entry.refuses.values()))
    lines = ["| objective | " + " | ".join(name for name, _ in SAFEGUARDS) + " |",
             "|---|" + "---|" * len(SAFEGUARDS)]
    for entry in _OBJECTIVES:
        cells = [f"no ({reasons.index(entry.refuses[setting]) + 1})" if setting in entry.refuses else "yes"
                 for _, setting in SAFEGUARDS]
        lines.append(f"| `{entry.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"{k}. {why}" for k, why in enumerate(reasons, 1)) + "\n"
