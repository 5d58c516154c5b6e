"""A teacher fills the rationale cache that training reads: `python -m jaxdistill.teach --config=configs/teach.py`.

The data keys are training's, and the cache is `data.cache_dir`, so the same data flags then train on it:

  # a local JAX teacher (any llama / qwen2 / qwen3 / mistral Hugging Face directory), 4 samples each:
  python -m jaxdistill.teach --config=configs/teach.py --config.teacher.checkpoint=DIR --config.teacher.samples=4
  # any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, Ollama, `python -m jaxdistill.serve`):
  python -m jaxdistill.teach --config=configs/teach.py --config.teacher.kind=api \
    --config.teacher.base_url=http://127.0.0.1:8000/v1 --config.teacher.model=NAME --config.teacher.max_cost_usd=5
  python -m jaxdistill.main --config=configs/cot.py --config.data.cache_dir=caches/teacher

With no data flags the data is the embedded demo task (its built-in rationales are not used: the
teacher's are). The API key is read from the environment variable `teacher.api_key_env`.
"""

import ml_collections

from configs import cot


def get_config():
  config = cot.get_config()
  config.name = "teach"
  config.data.cache_dir = "caches/teacher"
  config.teacher = t = ml_collections.ConfigDict()
  t.kind = "local"  # local | api
  t.name = ""  # the cache rows' `teacher` (default: the API model name / the checkpoint directory's name)
  t.splits = "train"  # comma-separated: which splits get rationales
  t.samples = 1  # completions per example (sample_index 0..samples-1)
  t.prompt = "default"  # template: default (few-shot for the task) | generic | student (a jaxdistill student)
  t.seed = 0  # with the example id, seeds each sample (a resumed run draws the same randomness)
  # Sampling (part of the prompt_id, so changing it starts new rows rather than mixing).
  t.temperature = 0.7
  t.top_p = 1.0
  t.top_k = 0
  t.max_tokens = 256
  t.top_logprobs = 0  # > 0: keep each generated token's top-k logprobs (for logit distillation)
  t.stop = ()
  # Local JAX teacher.
  t.checkpoint = ""
  t.batch_size = 32  # rows (example x sample) per decode batch
  # API teacher.
  t.base_url = ""
  t.model = ""
  t.endpoint = "chat"  # chat | completions
  t.api_key_env = "OPENAI_API_KEY"
  t.max_concurrency = 8
  t.requests_per_minute = 0  # 0: no limit
  t.tokens_per_minute = 0
  t.timeout_s = 60.0
  t.max_retries = 6
  t.tokenizer = ""  # counts prompt tokens for the estimate (an HF name / dir); else 4 characters a token
  # Cost: estimated before the first request (refused above the cap); the cap stops a running job.
  t.max_cost_usd = 0.0  # 0: no cap
  t.price_in_per_mtok = 0.0
  t.price_out_per_mtok = 0.0
  t.dry_run = False  # print the estimate and stop before the first request
  # Rows are written in shards of flush_rows, at least every flush_seconds (a kill loses at most that).
  t.flush_rows = 64
  t.flush_seconds = 30.0
  return config
