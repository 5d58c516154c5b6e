"""A built-in bAbI-style open-book QA generator (the traces setting's default data) and its decomposer.

Each example is a short story of numbered facts about people moving between places and picking
up, carrying and dropping objects, and one question of one of four kinds (the bAbI tasks they
imitate in brackets):

  one-fact     "Where is Mary?"                          (qa1, one supporting fact)
  two-facts    "Where is the apple?"                     (qa2: who has it + where they are)
  three-facts  "Where was the apple before the garden?"  (qa3: the pick-up, the carrier's move
                                                          into the previous place, the move in)
  yes-no       "Is Mary in the kitchen?"                 (qa6)

  inputs = {"context": "1 Mary went to the kitchen. 2 John got the apple. ...",
            "question": "Where is the apple?"}, label = "kitchen"

The answer needs only its supporting facts (the others are distractors), and those facts are
what the trace's retrieval step names: the gold trace is "type: two-facts ; facts: 2 5" and the
target "type: two-facts ; facts: 2 5 Answer: kitchen". The decomposer (`DECOMPOSER`) recomputes
every gold step from the example's text alone: it parses the fixed grammar back into events,
replays them and answers the question, so evaluation never depends on the stored trace.

Kinds and yes/no answers are balanced; (story, question) pairs are unique across splits;
generation is deterministic in `config.data.seed` and needs no network.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
from typing import Any, Sequence

from jaxdistill.data.examples import Example, Rationale
from jaxdistill.data.sources.common import Dataset, cfg_get
from jaxdistill.traces.decomposers import Decomposer, register, trace_rationale
from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, RETRIEVAL, Step

TASK = "babi"
PEOPLE = ("Mary", "John", "Sandra", "Daniel")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "bedroom", "office")
OBJECTS = ("football", "apple", "milk")
VERBS = {"move": ("went to", "moved to", "journeyed to", "travelled to"),
         "pick": ("picked up", "grabbed", "got"),
         "drop": ("dropped", "put down", "discarded")}
KINDS = ("one-fact", "two-facts", "three-facts", "yes-no")
LABELS = PLACES + ("yes", "no")
DEFAULTS = dict(num_train=2000, num_dev=200, num_test=200, min_facts=3, max_facts=6, kinds=",".join(KINDS))
ACTION_WEIGHTS = (("move", 0.6), ("pick", 0.25), ("drop", 0.15))

Event = tuple[str, str, str]  # (action, person, place or object)

# --------------------------------------------------------------------------- grammar

_VERB_OF = {v: action for action, verbs in VERBS.items() for v in verbs}
_FACT = re.compile(r"^([A-Z][a-z]+) (" + "|".join(sorted(_VERB_OF, key=len, reverse=True)) + r") the ([a-z]+)$")
_NUMBERED = re.compile(r"(\d+) ([^.]*)\.")
_QUESTIONS = (
    (re.compile(r"^Where is ([A-Z][a-z]+)\?$"), "one-fact"),
    (re.compile(r"^Where is the ([a-z]+)\?$"), "two-facts"),
    (re.compile(r"^Where was the ([a-z]+) before the ([a-z]+)\?$"), "three-facts"),
    (re.compile(r"^Is ([A-Z][a-z]+) in the ([a-z]+)\?$"), "yes-no"),
)


def fact_text(event: Event, rng: random.Random) -> str:
  action, who, what = event
  return f"{who} {rng.choice(VERBS[action])} the {what}."


def question_text(question: tuple) -> str:
  kind, *args = question
  return {"one-fact": "Where is {}?", "two-facts": "Where is the {}?",
          "three-facts": "Where was the {} before the {}?", "yes-no": "Is {} in the {}?"}[kind].format(*args)


def context_text(facts: Sequence[str]) -> str:
  return " ".join(f"{i} {f}" for i, f in enumerate(facts, 1))


def parse_context(context: str) -> list[Event] | None:
  """Numbered facts -> events; None unless the text is exactly facts 1..n of the grammar."""
  found = _NUMBERED.findall(context)
  if not found or context_text([f + "." for _, f in found]) != _clean(context):
    return None
  events = []
  for i, (number, fact) in enumerate(found, 1):
    m = _FACT.match(fact.strip())
    if int(number) != i or not m:
      return None
    events.append((_VERB_OF[m.group(2)], m.group(1), m.group(3)))
  return events


def parse_question(question: str) -> tuple | None:
  for pattern, kind in _QUESTIONS:
    m = pattern.match(question.strip())
    if m:
      return (kind, *m.groups())
  return None


def _clean(text: str) -> str:
  return " ".join(text.split())


# --------------------------------------------------------------------------- the world

@dataclasses.dataclass
class World:
  """The state after replaying events; every location carries the facts (1-based) that show it."""
  at: dict = dataclasses.field(default_factory=dict)  # person -> (place, fact of the move there)
  holding: dict = dataclasses.field(default_factory=dict)  # object -> (person, fact of the pick-up)
  resting: dict = dataclasses.field(default_factory=dict)  # dropped object -> (place, supporting facts)
  # object -> [(place, previous place, (carrier's move into the previous place, pick-up, move in))]
  arrivals: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  places: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))  # object -> places in order

  def apply(self, event: Event, fact: int) -> None:
    action, who, what = event
    if action == "move":
      before = self.at.get(who)
      self.at[who] = (what, fact)
      for obj, (holder, pick) in self.holding.items():
        if holder == who:
          self.arrivals[obj].append((what, before[0] if before else None,
                                     (before[1], pick, fact) if before else None))
          self.places[obj].append(what)
    elif action == "pick":
      self.holding[what] = (who, fact)
      self.resting.pop(what, None)
      if who in self.at and self.places[what][-1:] != [self.at[who][0]]:
        self.places[what].append(self.at[who][0])
    elif action == "drop":
      self.holding.pop(what, None)
      if who in self.at:
        self.resting[what] = (self.at[who][0], (self.at[who][1], fact))
      else:
        self.resting.pop(what, None)


def replay(events: Sequence[Event]) -> World:
  world = World()
  for i, event in enumerate(events, 1):
    world.apply(event, i)
  return world


def answer(world: World, question: tuple) -> tuple[str, tuple[int, ...]] | None:
  """(answer, supporting facts) of `question` in `world`; None when the story does not tell."""
  kind, *args = question
  if kind in ("one-fact", "yes-no"):
    if args[0] not in world.at:
      return None
    place, fact = world.at[args[0]]
    return (place if kind == "one-fact" else ("yes" if place == args[1] else "no")), (fact,)
  if kind == "two-facts":
    obj = args[0]
    if obj in world.holding:
      holder, pick = world.holding[obj]
      if holder not in world.at:
        return None
      place, move = world.at[holder]
      return place, tuple(sorted((pick, move)))
    if obj in world.resting:
      place, support = world.resting[obj]
      return place, tuple(sorted(support))
    return None
  if kind == "three-facts":
    obj, place = args
    found = [(prev, support) for p, prev, support in world.arrivals.get(obj, ()) if p == place and support]
    if not found:
      return None
    prev, support = found[-1]
    return prev, tuple(sorted(support))
  return None


def _questions(world: World, kind: str, rng: random.Random, want: str | None) -> list[tuple]:
  """The questions of `kind` this story answers unambiguously."""
  if kind == "one-fact":
    return [(kind, p) for p in sorted(world.at)]
  if kind == "yes-no":
    out = []
    for p in sorted(world.at):
      here = world.at[p][0]
      if want == "yes":
        out.append((kind, p, here))
      else:
        out.append((kind, p, rng.choice([x for x in PLACES if x != here])))
    return out
  if kind == "two-facts":
    return [(kind, o) for o in OBJECTS if answer(world, (kind, o))]
  # three-facts: the object entered that place exactly once, carried in from a known place.
  return [(kind, o, place) for o in OBJECTS for place in sorted(set(world.places.get(o, ())))
          if world.places[o].count(place) == 1 and answer(world, (kind, o, place))]


# --------------------------------------------------------------------------- generation

def _story(rng: random.Random, length: int) -> list[Event]:
  events: list[Event] = []
  world = World()
  while len(events) < length:
    action = rng.choices([a for a, _ in ACTION_WEIGHTS], [w for _, w in ACTION_WEIGHTS])[0]
    who = rng.choice(PEOPLE)
    if action == "move":
      here = world.at.get(who, (None,))[0]
      event = (action, who, rng.choice([p for p in PLACES if p != here]))
    elif who not in world.at:
      continue  # pick-ups and drops happen at a known place
    elif action == "pick":
      free = [o for o in OBJECTS if o not in world.holding
              and world.resting.get(o, (world.at[who][0],))[0] == world.at[who][0]]
      if not free:
        continue
      event = (action, who, rng.choice(free))
    else:
      held = [o for o, (h, _) in world.holding.items() if h == who]
      if not held:
        continue
      event = (action, who, rng.choice(sorted(held)))
    world.apply(event, len(events) + 1)
    events.append(event)
  return events


def make_example(rng: random.Random, kind: str, *, min_facts: int, max_facts: int, want: str | None = None,
                 tries: int = 1000) -> tuple[list[Event], list[str], tuple, str, tuple[int, ...]]:
  """(events, fact sentences, question, answer, supporting facts) of one example of `kind`."""
  for _ in range(tries):
    events = _story(rng, rng.randint(min_facts, max_facts))
    world = replay(events)
    candidates = _questions(world, kind, rng, want)
    if candidates:
      question = rng.choice(candidates)
      label, support = answer(world, question)
      return events, [fact_text(e, rng) for e in events], question, label, support
  raise RuntimeError(f"no {kind} question in {tries} stories of {min_facts}-{max_facts} facts; "
                     f"raise config.data.babi.max_facts")


def _kinds(value: Any) -> tuple[str, ...]:
  kinds = tuple(k.strip() for k in (value.split(",") if isinstance(value, str) else value) if k.strip())
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown or not kinds:
    raise ValueError(f"config.data.babi.kinds={value!r}: unknown {unknown}; expected some of {list(KINDS)}")
  return kinds


def generate(seed: int = 0, *, num_train: int = DEFAULTS["num_train"], num_dev: int = DEFAULTS["num_dev"],
             num_test: int = DEFAULTS["num_test"], min_facts: int = DEFAULTS["min_facts"],
             max_facts: int = DEFAULTS["max_facts"], kinds: Any = DEFAULTS["kinds"]) -> Dataset:
  """The bAbI-style Dataset, deterministic in `seed`, each example with its gold trace rationale."""
  kinds = _kinds(kinds)
  if not 1 <= int(min_facts) <= int(max_facts):
    raise ValueError(f"config.data.babi: need 1 <= min_facts ({min_facts}) <= max_facts ({max_facts})")
  seen: set = set()
  splits: dict[str, list[Example]] = {}
  rationales: dict[str, list[Rationale]] = {}
  for offset, (split, num) in enumerate((("test", num_test), ("dev", num_dev), ("train", num_train))):
    rng = random.Random(int(seed) * 7919 + offset + 104729)
    plan = [(kinds[i % len(kinds)], ("yes", "no")[(i // len(kinds)) % 2]) for i in range(int(num))]
    rng.shuffle(plan)
    out: list[Example] = []
    while len(out) < int(num):
      kind, want = plan[len(out)]
      _, facts, question, label, support = make_example(rng, kind, min_facts=int(min_facts),
                                                        max_facts=int(max_facts), want=want)
      inputs = {"context": context_text(facts), "question": question_text(question)}
      if (inputs["context"], inputs["question"]) in seen:
        continue
      seen.add((inputs["context"], inputs["question"]))
      ex = Example(id=f"{TASK}-{split}-{len(out):05d}", task=TASK, inputs=inputs, label=label, split=split)
      out.append(ex)
      steps = DECOMPOSER.steps({"type": kind, "facts": support, "answer": label})
      rationales[ex.id] = [trace_rationale(ex, steps, DECOMPOSER.prompt_id)]
    splits[split] = out
  return Dataset(task=TASK, splits={k: splits[k] for k in ("train", "dev", "test")}, rationales=rationales,
                 labels=LABELS, skipped={})


def load(config_data: Any) -> Dataset:
  """`load(config.data)`: reads config.data.seed, config.data.babi.* and max_train_examples."""
  babi_cfg = cfg_get(config_data, "babi", None)
  kwargs = {k: cfg_get(babi_cfg, k, v) for k, v in DEFAULTS.items()}
  ds = generate(int(cfg_get(config_data, "seed", 0)), **kwargs)
  cap = int(cfg_get(config_data, "max_train_examples", -1))
  if 0 <= cap < len(ds.splits["train"]):
    dropped = {ex.id for ex in ds.splits["train"][cap:]}
    ds.splits["train"] = ds.splits["train"][:cap]
    ds.rationales = {k: v for k, v in ds.rationales.items() if k not in dropped}
  return ds


# --------------------------------------------------------------------------- decomposition

class BabiDecomposer(Decomposer):
  """type (which bAbI question kind) -> facts (the supporting facts' numbers) -> answer.

  Gold steps come from the text alone: parse the facts and the question, replay, answer."""

  task = TASK
  specs = (("type", CLASSIFICATION), ("facts", RETRIEVAL), ("answer", ANSWER))
  classes = KINDS

  def num_items(self, example: Example) -> int:
    return len(_NUMBERED.findall(example.inputs.get("context", "")))

  def solve(self, example: Example) -> tuple[tuple, str, tuple[int, ...]] | None:
    """(question, answer, supporting facts) recomputed from the example's text."""
    events = parse_context(example.inputs.get("context", ""))
    question = parse_question(example.inputs.get("question", ""))
    if events is None or question is None:
      return None
    solved = answer(replay(events), question)
    return (question, *solved) if solved else None

  def gold(self, example: Example, rationales: Sequence[Rationale] = ()) -> list[Step] | None:
    solved = self.solve(example)
    if solved is None:
      return None
    question, label, support = solved
    return self.steps({"type": question[0], "facts": support, "answer": label})


DECOMPOSER = register(BabiDecomposer())  # traces.decomposer_for(task) finds it once this module is loaded
