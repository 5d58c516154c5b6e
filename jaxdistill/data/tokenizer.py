"""Tokenizers with T5 conventions (pad=0, eos=1) that work offline.

`load_tokenizer(spec, ...)` accepts
  * an HF tokenizer name or a local directory (transformers.AutoTokenizer; a local
    path needs no network, e.g. a t5 tokenizer saved next to a checkpoint);
  * "byte": ByT5-style bytes (pad=0, eos=1, unk=2, byte b -> b + 3); needs nothing;
  * "bpe" / "wordpiece": trained with the `tokenizers` library on `texts`, the offline
    default for the demo and for any dataset without a pretrained student. The trained
    tokenizer is saved to `save_dir` (tokenizer.json + a PreTrainedTokenizerFast
    save_pretrained, so `AutoTokenizer.from_pretrained(save_dir)` reloads it) and is
    loaded from there when present, so a resumed run and later tools see the same ids.

The wrapper appends EOS on encode and stops at EOS on decode, the behaviour the
seq2seq pipeline and greedy decoding expect whatever the backend.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Iterable, Sequence

from etils import epath

from jaxdistill import files

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
TRAINED_KINDS = ("bpe", "wordpiece")
_META = "jaxdistill_tokenizer.json"


def round_up(n: int, multiple: int = 128) -> int:
  return ((n + multiple - 1) // multiple) * multiple


class Tokenizer:
  """Common interface: encode (with EOS), decode (up to EOS), pad_id, eos_id, vocab_size.

  `vocab_size` is the *model* vocabulary (embedding rows): the tokenizer's size
  rounded up to a multiple of 128, so embeddings shard and tile well.
  """

  def __init__(self, name: str, pad_id: int, eos_id: int, unk_id: int | None, num_tokens: int):
    self.name = name
    self.pad_id = pad_id
    self.eos_id = eos_id
    self.unk_id = unk_id
    self.num_tokens = num_tokens  # ids actually produced are < num_tokens
    self.vocab_size = round_up(num_tokens)

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` followed by EOS."""
    return self._encode(text) + [self.eos_id]

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; padding is skipped."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id:
        out.append(i)
    return self._decode(out)

  def vocabulary(self) -> dict[str, int]:
    """token -> id for every id the tokenizer can produce."""
    raise NotImplementedError

  def fingerprint(self) -> str:
    """A digest of the vocabulary and the special ids: equal fingerprints mean an id names the same
    token in both tokenizers (what teacher-logit distillation needs of teacher and student)."""
    content = {"tokens": sorted(self.vocabulary().items(), key=lambda kv: (kv[1], kv[0])),
               "pad": self.pad_id, "eos": self.eos_id}
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]

  def __repr__(self) -> str:
    return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id})"


class ByteTokenizer(Tokenizer):
  """ByT5 ids: 0 pad, 1 eos, 2 unk, byte b -> b + 3."""

  OFFSET = 3

  def __init__(self):
    super().__init__("byte", pad_id=0, eos_id=1, unk_id=2, num_tokens=256 + self.OFFSET)

  def _encode(self, text: str) -> list[int]:
    return [b + self.OFFSET for b in text.encode("utf-8")]

  def vocabulary(self) -> dict[str, int]:
    return {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"<0x{b:02X}>": b + self.OFFSET for b in range(256)}}

  def _decode(self, ids: Sequence[int]) -> str:
    data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
    return data.decode("utf-8", errors="replace")


def _unpadded_backend(hf):
  """The Rust backend (~10x faster per call than the transformers wrapper), as a copy with
  padding and truncation off: a tokenizer.json may enable both (sentence-transformers' MiniLM
  pads every text to 128), and the pipeline does its own truncation, packing and padding."""
  if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
    return None
  from tokenizers import Tokenizer as RustTokenizer
  backend = RustTokenizer.from_str(hf.backend_tokenizer.to_str())
  backend.no_padding()
  backend.no_truncation()
  return backend


class HFTokenizer(Tokenizer):
  """Wraps a transformers tokenizer; the wrapper, not the backend, adds EOS (BERT-style
  tokenizers would otherwise add [CLS]/[SEP])."""

  def __init__(self, hf, name: str):
    self.hf = hf
    eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
    pad = hf.pad_token_id if hf.pad_token_id is not None else 0
    if eos is None:
      raise ValueError(f"tokenizer {name!r} has neither an EOS nor a SEP token")
    super().__init__(name, pad_id=int(pad), eos_id=int(eos), unk_id=hf.unk_token_id, num_tokens=len(hf))
    self._fast = _unpadded_backend(hf)

  def _encode(self, text: str) -> list[int]:
    if self._fast is not None:
      return self._fast.encode(text, add_special_tokens=False).ids
    return list(self.hf.encode(text, add_special_tokens=False))

  def __getstate__(self):  # the Rust backend is re-derived after unpickling
    state = dict(self.__dict__)
    state["_fast"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._fast = _unpadded_backend(self.hf)

  def vocabulary(self) -> dict[str, int]:
    return dict(self.hf.get_vocab())

  def _decode(self, ids: Sequence[int]) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    texts = list(texts)
    if not texts:
      return []
    if self._fast is not None:
      return [e.ids + [self.eos_id] for e in self._fast.encode_batch(texts, add_special_tokens=False)]
    enc = self.hf(texts, add_special_tokens=False)["input_ids"]
    return [list(ids) + [self.eos_id] for ids in enc]


def _train(kind: str, texts: Iterable[str], vocab_size: int):
  """Trains a `tokenizers.Tokenizer` with ids 0/1/2 = pad/eos/unk.

  bpe: byte-level BPE (lossless round trip for any text, no unknowns) with digits
  split one by one so numbers are spelled digit by digit (helps arithmetic).
  wordpiece: BERT-style pre-tokenization, whole frequent words + characters; decoding
  re-joins with spaces (lossy around punctuation), for parity with BERT-family vocabularies.
  Both are deterministic functions of `texts` (checked across processes in tests).
  """
  from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers

  specials = [PAD, EOS, UNK]
  if kind == "bpe":
    tok = RawTokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  elif kind == "wordpiece":
    # tokenizers' WordPieceTrainer is not deterministic across processes (ties are broken
    # in hash-map order), so the vocabulary is built here: every character seen (alone and
    # as a "##" continuation) plus the most frequent whole words, ties broken by spelling.
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)])
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
      counts.update(w for w, _ in pre.pre_tokenize_str(text))
    chars = sorted({c for w in counts for c in w})
    vocab = specials + chars + ["##" + c for c in chars]
    known = set(vocab)
    for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
      if len(vocab) >= vocab_size:
        break
      if w not in known:
        vocab.append(w)
        known.add(w)
    tok = RawTokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    return tok
  else:
    raise ValueError(f"unknown trainable tokenizer kind {kind!r} (expected one of {TRAINED_KINDS})")
  tok.train_from_iterator(list(texts), trainer=trainer)
  for i, s in enumerate(specials):
    if tok.token_to_id(s) != i:
      raise AssertionError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
  return tok


def _load_saved(save_dir: str, kind: str) -> Tokenizer:
  from tokenizers import Tokenizer as RawTokenizer
  from transformers import PreTrainedTokenizerFast
  raw = RawTokenizer.from_str((epath.Path(save_dir) / "tokenizer.json").read_text(encoding="utf-8"))
  hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token=PAD, eos_token=EOS, unk_token=UNK)
  return HFTokenizer(hf, name=kind)


def is_saved(save_dir: str | None) -> bool:
  """Whether `save_dir` holds a tokenizer that `load_tokenizer` trained and saved there."""
  return bool(save_dir) and (epath.Path(save_dir) / "tokenizer.json").exists()


def saved_kind(save_dir: str) -> str | None:
  """The kind ("bpe" / "wordpiece") recorded with the tokenizer saved in `save_dir`; None when no
  kind is recorded there."""
  meta_path = epath.Path(save_dir) / _META
  if not meta_path.exists():
    return None
  return json.loads(meta_path.read_text()).get("kind")


def load_tokenizer(spec: str, texts: Iterable[str] | None = None, save_dir: str | None = None,
                   vocab_size: int = 1024) -> Tokenizer:
  """Returns the tokenizer named by `spec` ("byte", "bpe", "wordpiece", HF name or path).

  For "bpe"/"wordpiece": loads `save_dir/tokenizer.json` when it exists (resume), else
  trains on `texts` and, when `save_dir` is given, saves there.
  """
  if spec == "byte":
    return ByteTokenizer()
  if spec in TRAINED_KINDS:
    if is_saved(save_dir):
      kind = saved_kind(save_dir)
      if kind is not None and kind != spec:
        raise ValueError(f"{save_dir} holds a {kind!r} tokenizer but {spec!r} was requested")
      return _load_saved(save_dir, spec)
    if texts is None:
      raise ValueError(f"tokenizer {spec!r} must be trained: pass `texts` (or a save_dir holding one)")
    raw = _train(spec, texts, vocab_size)
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    if save_dir:
      # Swapped in whole, so tokenizer.json (the "is saved" marker) never sits beside half a save.
      with files.atomic_dir(save_dir) as tmp:  # a local directory, uploaded when save_dir is remote
        hf.save_pretrained(tmp)  # writes tokenizer.json + tokenizer_config.json + special tokens
        with open(os.path.join(tmp, _META), "w") as f:
          json.dump({"kind": spec, "vocab_size": vocab_size}, f)
      return _load_saved(save_dir, spec)
    return HFTokenizer(hf, name=spec)
  from transformers import AutoTokenizer
  if files.is_remote(spec):  # transformers reads only local files: the tokenizer's files, not the weights
    with files.local_copy(spec, skip_suffixes=(".safetensors", ".bin", ".msgpack", ".h5")) as local:
      hf = AutoTokenizer.from_pretrained(local, local_files_only=True)
  else:
    hf = AutoTokenizer.from_pretrained(spec, local_files_only=os.path.isdir(spec))
  return HFTokenizer(hf, name=spec)
