#!/bin/bash
# One prepared GPU session: environment, CUDA tests, scorer fp32/bf16, filter on CUDA, real SFT/DPO steps in bf16,
# DeepSpeed ZeRO-2 and ZeRO-3 on one GPU. Each step logs to $OUT and a failure does not stop the next one.
# Prepared here, run on the lent machine (device tool, `carry: [.whl, .gpu]`, command `bash benchmarks/gpu_session.sh`):
#   .whl/  wheels the GPU image lacks (trl, hydra-core, omegaconf, antlr4, datasets, deepspeed, transformers 5.23,
#          huggingface_hub 2.4, tokenizers, dill, multiprocess, peft, accelerate, pydantic(+core, annotated-types,
#          typing-inspection), hjson, httpx2, httpcore2, truststore, click, hf-xet, regex), downloaded for cp312
#   .gpu/smollm2_arch/  SmolLM2-135M-Instruct's config.json, tokenizer and chat template (no weights: the GGUF is
#          over the transfer limit, so the model gets seeded random weights; speed depends on shape, not weights)
#   .gpu/shared/data/   a copy of ../shared/data
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DEITA_SHARED_DATA=$PWD/.gpu/shared/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { cat $OUT/pip.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T))"; local t0=$SECONDS
  timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?; echo "    rc=$rc in $((SECONDS-t0)) s"; tail -n ${TAILN:-6} $OUT/$name.log; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,transformers,trl,deepspeed;print(torch.__version__,transformers.__version__,trl.__version__,deepspeed.__version__,torch.cuda.is_available())" 2>&1 | tail -1
python3 -c "from benchmarks.bench_gpu import random_model_dir;from pathlib import Path;random_model_dir(Path('.gpu/smollm2_arch'),Path('/tmp/smol'))" > $OUT/mkmodel.log 2>&1 || tail $OUT/mkmodel.log
TAILN=4 step cuda_tests 60 python3 -m pytest -q -p no:cacheprovider -x tests/test_filters.py tests/test_training.py -k "cuda or bf16"
COMMON="recipe=demo logger=none model.name_or_path=/tmp/smol selection_models.deita_complexity=/tmp/smol selection_models.deita_quality=/tmp/smol selection_models.embedder=/tmp/smol selection_models.embedder_kind=clm_last sft.args.bf16=true dpo.args.bf16=true paths.runs_dir=/tmp/runs"
TAILN=25 step train_bf16 110 python3 train.py $COMMON
TAILN=10 step zero2 80 accelerate launch --config_file launch/deepspeed_zero2.yaml --num_processes 1 train.py $COMMON stages=[select,sft] paths.runs_dir=/tmp/runs_z2
TAILN=10 step zero3 80 accelerate launch --config_file launch/deepspeed_zero3.yaml --num_processes 1 train.py $COMMON stages=[select,sft] paths.runs_dir=/tmp/runs_z3
TAILN=8 step scorer 100 python3 benchmarks/bench_gpu.py --arch .gpu/smollm2_arch --model-dir /tmp/smol --data .gpu/shared/data/instruct/llamafactory_alpaca_en_demo.json --rows 2000 --ref-rows 100 --out $OUT/gpu_scorer.md
TAILN=12 step filter 80 python3 benchmarks/bench_filter.py --device cuda --n 100000 --ref-limit 1000 --small-n 20000 --out $OUT/gpu_filter.md
nvidia-smi --query-gpu=memory.used --format=csv,noheader
