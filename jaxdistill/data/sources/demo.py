"""The embedded default task: a miniature e-SNLI over small scene descriptions.

Each example is a premise ("A black cat is sleeping in the garden.") and a hypothesis that
the premise entails, contradicts or leaves open; the label set is e-SNLI's. What decides
the label is one relation between a premise word and a hypothesis word (a cat is a pet;
a cat cannot be black and white at once; sleeping is a way of resting; the premise says nothing
about the time), and that relation is exactly what an explanation states:

  * human explanations are short e-SNLI-style sentences ("A cat is a pet.");
  * teacher rationales are chain-of-thought in the teacher's own words, several per example;
    each is wrong with probability `teacher_error_rate`, and a wrong one asserts a wrong
    relation that leads to a wrong answer, so `teacher_correct`, teacher-label training and
    rationale selection have something to find.

Labels are exactly balanced and every (premise, hypothesis) pair is unique across splits.
Generation is deterministic in `config.data.seed`; it needs no network and takes milliseconds.
"""

from __future__ import annotations

import random
from typing import Any

from jaxdistill.data.examples import ESNLI_LABELS, Example, Rationale
from jaxdistill.data.sources.common import Dataset, cached_rationales, cap_train, cfg_get

TASK = "demo"
LABELS = ESNLI_LABELS  # entailment, neutral, contradiction
TEACHER = "demo-teacher"
PROMPT_ID = "demo-cot"
DEFAULTS = dict(num_train=4000, num_dev=300, num_test=300, teacher_error_rate=0.2, rationales_per_example=3)

# Animals with a more general class ("a cat is a pet"); every action below suits every animal.
NOUNS = {"cat": "pet", "dog": "pet", "rabbit": "pet", "hamster": "pet",
         "horse": "farm animal", "cow": "farm animal", "goat": "farm animal", "sheep": "farm animal",
         "duck": "bird", "owl": "bird", "parrot": "bird", "crow": "bird"}
COLORS = ("black", "white", "brown", "gray", "spotted", "striped")
# Actions with a more general action they entail, and actions they exclude.
ACTIONS = {"sleeping": "resting", "sitting": "resting", "running": "moving", "jumping": "moving",
           "eating": "busy", "playing": "busy"}
EXCLUDES = {"sleeping": ("running", "jumping", "eating"), "sitting": ("running", "jumping"),
            "running": ("sleeping", "sitting"), "jumping": ("sleeping", "sitting"),
            "eating": ("sleeping",), "playing": ("sleeping",)}
PLACES = ("garden", "kitchen", "park", "street", "yard", "field")
EXTRAS = (("at night", "the time of day"), ("in the rain", "the weather"), ("with a friend", "company"),
          ("for an hour", "how long it lasts"), ("after lunch", "the time"))
SIZES = ("small", "big", "old", "young", "hungry", "tired")


def _a(word: str) -> str:
  return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(noun: str, color: str | None, action: str, place: str, extra: str = "", size: str = "") -> str:
  words = " ".join(w for w in (size, color, noun) if w)
  text = f"{_a(words)} is {action} in the {place}"
  return (text + (f" {extra}" if extra else "") + ".").capitalize()


def _entailment(rng, n, c, act, pl):
  kind = rng.randrange(3)
  if kind == 0:
    return _sentence(NOUNS[n], None, act, pl), f"{_a(n).capitalize()} is {_a(NOUNS[n])}.", ("hypernym", n, NOUNS[n])
  if kind == 1:
    return _sentence(n, None, ACTIONS[act], pl), f"Someone {act} is {ACTIONS[act]}.", ("action", act, ACTIONS[act])
  return _sentence(n, None, act, pl), f"{_a(c + ' ' + n).capitalize()} is still {_a(n)}.", ("drop", c, n)


def _contradiction(rng, n, c, act, pl):
  kind = rng.randrange(3)
  if kind == 0:
    c2 = rng.choice([x for x in COLORS if x != c])
    return _sentence(n, c2, act, pl), f"The {n} cannot be {c} and {c2} at the same time.", ("color", c, c2)
  if kind == 1:
    act2 = rng.choice(EXCLUDES[act])
    return (_sentence(n, c, act2, pl), f"The {n} cannot be {act} and {act2} at the same time.",
            ("exclusive", act, act2))
  pl2 = rng.choice([x for x in PLACES if x != pl])
  return _sentence(n, c, act, pl2), f"The {n} cannot be in the {pl} and in the {pl2} at once.", ("place", pl, pl2)


def _neutral(rng, n, c, act, pl):
  if rng.random() < 0.6:
    extra, what = rng.choice(EXTRAS)
    return _sentence(n, c, act, pl, extra=extra), f"We do not know {what}.", ("unknown", extra, what)
  size = rng.choice(SIZES)
  return _sentence(n, c, act, pl, size=size), f"Not every {n} is {size}.", ("size", size, n)


MAKERS = {"entailment": _entailment, "neutral": _neutral, "contradiction": _contradiction}


def _teacher_text(relation: tuple[str, str, str], answer: str, truthful: bool) -> str:
  """The teacher's chain-of-thought; an untruthful one misreads the relation."""
  kind, x, y = relation
  if truthful:
    return {
        "hypernym": f"The {x} in the premise is {_a(y)}, so the hypothesis follows.",
        "action": f"If something is {x}, it is {y}.",
        "drop": f"The hypothesis only leaves out that the {y} is {x}.",
        "color": f"The premise says {x} but the hypothesis says {y}, which cannot both hold.",
        "exclusive": f"One cannot be {x} and {y} at the same time.",
        "place": f"The premise places it in the {x}, not the {y}.",
        "unknown": f"The premise says nothing about {y}, so '{x}' may or may not hold.",
        "size": f"The premise does not say whether the {y} is {x}.",
    }[kind]
  return {  # a wrong reading of the same relation, pointing at `answer`
      "entailment": f"The hypothesis just restates the premise about the {y}.",
      "neutral": f"The premise does not tell us whether the {y} is described correctly.",
      "contradiction": f"The premise and the hypothesis disagree about the {y}.",
  }[answer]


def _generate_split(split, num, rng, seen, *, error_rate, per_example):
  examples, rationales = [], {}
  plan = [LABELS[i % len(LABELS)] for i in range(num)]
  rng.shuffle(plan)
  while len(examples) < num:
    label = plan[len(examples)]
    n, c, act, pl = rng.choice(sorted(NOUNS)), rng.choice(COLORS), rng.choice(sorted(ACTIONS)), rng.choice(PLACES)
    premise = _sentence(n, c, act, pl)
    hypothesis, explanation, relation = MAKERS[label](rng, n, c, act, pl)
    if (premise, hypothesis) in seen:
      continue
    seen.add((premise, hypothesis))
    ex_id = f"demo-{split}-{len(examples):05d}"
    examples.append(Example(id=ex_id, task=TASK, inputs={"premise": premise, "hypothesis": hypothesis},
                            label=label, human_explanations=(explanation,), split=split))
    rs = []
    for s in range(per_example):
      truthful = rng.random() >= error_rate
      answer = label if truthful else rng.choice([l for l in LABELS if l != label])
      text = _teacher_text(relation, answer, truthful)
      rs.append(Rationale(example_id=ex_id, teacher=TEACHER, prompt_id=PROMPT_ID, sample_index=s,
                          rationale=text, teacher_answer=answer, teacher_correct=answer == label,
                          raw=f"{text}\nAnswer: {answer}"))
    rationales[ex_id] = rs
  return examples, rationales


def generate(seed: int = 0, *, num_train: int = DEFAULTS["num_train"], num_dev: int = DEFAULTS["num_dev"],
             num_test: int = DEFAULTS["num_test"], teacher_error_rate: float = DEFAULTS["teacher_error_rate"],
             rationales_per_example: int = DEFAULTS["rationales_per_example"]) -> Dataset:
  """Builds the demo Dataset deterministically from `seed`."""
  if not 0.0 <= teacher_error_rate <= 1.0:
    raise ValueError(f"config.data.demo.teacher_error_rate={teacher_error_rate}: must be in [0, 1]")
  if rationales_per_example < 0:
    raise ValueError(f"config.data.demo.rationales_per_example={rationales_per_example}: must be >= 0")
  seen: set = set()
  splits, rationales = {}, {}
  for offset, (split, num) in enumerate((("test", num_test), ("dev", num_dev), ("train", num_train))):
    rng = random.Random(int(seed) * 7919 + offset)
    exs, rs = _generate_split(split, int(num), rng, seen, error_rate=float(teacher_error_rate),
                              per_example=int(rationales_per_example))
    splits[split] = exs
    rationales.update(rs)
  return Dataset(task=TASK, splits={k: splits[k] for k in ("train", "dev", "test")},
                 rationales=rationales, labels=LABELS, skipped={})


def load(config_data: Any) -> Dataset:
  """`load(config.data)`: reads config.data.seed, config.data.demo.*, max_train_examples and
  cache_dir (when set, the teacher rationales are read from that cache instead)."""
  demo_cfg = cfg_get(config_data, "demo", None)
  kwargs = {k: cfg_get(demo_cfg, k, v) for k, v in DEFAULTS.items()}
  ds = generate(int(cfg_get(config_data, "seed", 0)), **kwargs)
  train = cap_train(ds.splits["train"], cfg_get(config_data, "max_train_examples", -1))
  if len(train) != len(ds.splits["train"]):
    keep = {ex.id for ex in train} | {ex.id for s in ("dev", "test") for ex in ds.splits[s]}
    ds.rationales = {k: v for k, v in ds.rationales.items() if k in keep}
    ds.splits["train"] = train
  from_cache = cached_rationales(config_data, [ex.id for exs in ds.splits.values() for ex in exs])
  if from_cache is not None:  # config.data.cache_dir set: rationales come from that cache (e.g. a selection)
    ds.rationales = from_cache
  return ds
