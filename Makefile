# FaceNext: the user's door. Every target runs inside .venv, created by `make setup` when missing.
# Variables: CONFIG (training recipe), RUN / RUNS (run folders), COMP (Kaggle slug), FILE, MSG (default: the grading
# reference of the run's W&B run, else the runs and their dev scores), DATA, WEIGHTS (ensemble: equal or fit),
# PUSH (kernel), TERM (demo: f23 or f26),
# FIT_LIMIT=1 (ensemble: the best runs that fit the limit), VERIFICATION=1 (ensemble: the runs' verify scores into
# the verification submission), TAG and WANDB (submit: the grading description TAG|WB=WANDB).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FACENEXT := $(BIN)/facenext

CONFIG ?= configs/f23_lean_convnext.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
# RUNS: the LATEST (default 1) most recently modified run folders that hold a best.pt; RUNS="runs/a runs/b" to choose.
LATEST ?= 1
RUNS ?= $(or $(shell ls -td runs/*/best.pt 2>/dev/null | head -n $(LATEST) | xargs -r -n1 dirname),$(RUN))
COMP ?= 11-785-f23-hw2p2-classification
DATA ?= data
FILE ?= submissions/submission.csv
MSG ?=

.PHONY: setup demo test lint download train predict ensemble check-submission verify submit clean-demo bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# TERM=f26: the combined task (F26 layout, 0.5 acc + 0.5 (1 - EER), one submission with both parts)
# TERM is also the terminal type in every shell's environment: only a TERM given on the make command line names a term.
DEMO_TERM := $(if $(filter command line,$(origin TERM)),$(TERM),f23)
demo: setup
	$(FACENEXT) demo --term $(DEMO_TERM)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two workers on two cores; worksteal keeps both busy while the long kill-and-resume tests run.
test: lint
	$(BIN)/pytest -q -n 2 --dist worksteal

download: setup
	$(FACENEXT) download $(COMP) --out $(DATA)

train: setup
	$(FACENEXT) train $(CONFIG) --out $(RUN)

# dev logits (accuracy per TTA view, and what `ensemble WEIGHTS=fit` fits on), then test logits and a submission.
predict: setup
	for run in $(RUNS); do $(FACENEXT) predict $$run --split dev $(PREDICT_ARGS) && \
		$(FACENEXT) predict $$run $(PREDICT_ARGS) || exit $$?; done

# VERIFICATION=1: each run verified first (`make verify RUN=...`); FILE defaults to the verification submission,
# which goes to the verification competition: make submit FILE=submissions/verification_submission.csv COMP=<slug>.
ENSEMBLE_FILE = $(if $(and $(VERIFICATION),$(filter file,$(origin FILE))),submissions/verification_submission.csv,$(FILE))
ensemble: setup
	$(FACENEXT) ensemble $(RUNS) --out $(ENSEMBLE_FILE) --weights $(or $(WEIGHTS),equal) $(if $(FIT_LIMIT),--fit-limit) \
		$(if $(VERIFICATION),--verification)

check-submission: setup
	$(FACENEXT) check-submission $(FILE) --data $(DATA)

verify: setup
	$(FACENEXT) verify $(RUN)

submit: setup
	$(FACENEXT) submit $(FILE) --competition $(COMP) --data $(DATA) $(if $(MSG),--message "$(MSG)") $(if $(TAG),--tag $(TAG)) \
		$(if $(WANDB),--wandb $(WANDB))

clean-demo:
	rm -rf data/sample data/sample_* runs/demo runs/demo_* submissions/demo submissions/demo_* submissions/*.csv submissions/*.json

bench: setup
	$(BIN)/python scripts/bench.py --section throughput --out benchmarks/model.md
	$(BIN)/python scripts/bench.py --section inference --out benchmarks/inference.md
	$(BIN)/python scripts/bench.py --section verify --out benchmarks/verify.md
	$(BIN)/python scripts/bench.py --section data --out benchmarks/data.md

# On a CUDA machine: the model section with bf16 autocast (fp16 where unsupported), channels-last and torch.compile.
.PHONY: bench-gpu
bench-gpu: setup
	$(BIN)/python scripts/bench.py --section throughput --device cuda --amp --compile --train-batch 256 \
		--train-batch-large 128 --infer-batch 512 --out benchmarks/model_gpu.md

# A Kaggle notebook that trains CONFIG on Kaggle's GPU: `make kernel CONFIG=... [PUSH=1]` (kernels/facenext-<name>/).
.PHONY: kernel
kernel: setup
	$(FACENEXT) kernel $(CONFIG) $(if $(PUSH),--push)

# On a CUDA machine, at most 5 minutes: the training step (loader, augmentation on the CPU and on the GPU, precision,
# channels-last, torch.compile) beside the seed's loop at 112 and 224 px, inference, peak memory, FLOP/s against the
# matmul peak, DDP on two GPUs, and the F23 / F26 runs in hours; writes benchmarks/gpu.md, fails on a non-finite step.
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py --out benchmarks/gpu.md
