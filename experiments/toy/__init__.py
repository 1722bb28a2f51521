"""A CPU-sized miniature of the RC experiment: train short, extrapolate long.

task        the synthetic problem family (chains of labelled modular operations)
tokenizer   the toy vocabulary (~140 tokens, ChatML) built with `tokenizers`
sft         supervised format training on single-step traces
rl          RC RL with the project's trainer (`rc_jax.rl`)
evaluate    RC decoding / autoregressive baseline records and grading
report      table, plot, summary numbers
pipeline    the whole experiment (`experiments/toy/run.py`)
"""
