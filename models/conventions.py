"""The names of the parameter-count and FLOP conventions, defined once and imported everywhere.

Parameter counts (N) and analytic training FLOPs per token (see ``models/counting.py``):
  kaplan       Kaplan et al. 2020: N without embeddings; 6N + attention
  chinchilla   Hoffmann et al. 2022: every parameter; their App. F operation count
  palm         Chowdhery et al. 2022: matmul parameters; 6N + 12 L H Q T

FLOPs read off the compiled train step by XLA's cost analysis (added by train/):
  measured        what the compiled step executes, every loop counted (layers and
                  microbatches), rematerialized recomputation included: hardware FLOPs
  measured_model  the same step compiled without rematerialization: model FLOPs (equal to
                  ``measured`` when the run does not rematerialize)
"""

N_CONVENTIONS = ("kaplan", "chinchilla", "palm")
ANALYTIC_FLOP_CONVENTIONS = N_CONVENTIONS
MEASURED = "measured"
MEASURED_MODEL = "measured_model"
FLOP_CONVENTIONS = ANALYTIC_FLOP_CONVENTIONS + (MEASURED, MEASURED_MODEL)
