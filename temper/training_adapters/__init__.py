"""Training adapters: temper as the rollout backend of a learner (docs/training.md).

  rollouts.py        Rollouts, the one facade a learner's loop uses (generate, score,
                     update_weights), over local_transport.py (Engine objects in this
                     process) or http_transport.py (a temper or vLLM-compatible server)
  rollout_job.py     durable rollout jobs (`temper rollouts`, rollout_cli.py): prompt_file.py
                     in, rollout_file.py out, crash-safe and resumable
  distillation.py    on-policy distillation batches; the math in distillation_math.py
  cat.py             Compute as Teacher references and rewards (cat_reward.py, rubric.py)
  rpt_data.py        Reinforcement Pre-Training data and reward (rpt_math.py, rpt_prompt.py,
                     token_bytes.py)
  trl_rewards.py     the CaT and RPT rewards as TRL GRPOTrainer reward functions

Nothing here is imported by `import temper`; the modules import only downward (strategies,
decoding math, engines).
"""
