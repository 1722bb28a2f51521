"""A CPU-sized miniature of the RC experiment: train short, extrapolate long (docs/toy.md).

An experiment, not part of the installed library: run from the repository root as
`python -m experiments.toy.run`; it uses only rc_jax's public pieces.

task        the synthetic problem family (chains of labelled modular operations)
tokenizer   the toy vocabulary (~700 tokens, ChatML) built with `tokenizers`
sft         supervised format training on single-step traces
rl          RC RL with the project's trainer (`rc_jax.rl`)
evaluate    RC decoding / method-runner records (autoregressive, Delethink) and grading
report      table, plot, summary numbers
pipeline    the whole experiment (`Settings`, `run`)
run         the command line
"""
