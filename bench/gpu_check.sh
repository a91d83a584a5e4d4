#!/usr/bin/env bash
# One run on a lent GPU machine (see the README's "GPU checks"): the GPU tests, then the GPU benchmarks.
# Needs the git-excluded .whl/ and .data/ that ../shared/tools/device-prep fills, carried along.
# GPU_CHECKS picks the parts (default: all): tests training sweep packed predict
set -u
out=${OUT:-/tmp/fmnist-gpu-check}
checks=${GPU_CHECKS:-tests training sweep packed predict}
mkdir -p "$out"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target "$HOME/site" .whl/*.whl || exit 1
export PYTHONPATH="$HOME/site:$PWD" FMNIST_DATA_DIR="$PWD/.data/fashion-mnist" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } > "$out/gpu.txt" 2>&1
case " $checks " in *" tests "*)
  timeout 200 python3 -m pytest -p no:cacheprovider -q -m gpu \
    tests/models/test_training_graphs.py tests/models/test_packed.py tests/worker/test_worker.py tests/worker/test_gpu_memory.py tests/test_e2e.py 2>&1 \
    | tee "$out/gpu-tests.txt";; esac
case " $checks " in *" training "*)
  timeout 260 python3 -m bench.training --device cuda --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.txt";; esac
case " $checks " in *" sweep "*)
  timeout 150 python3 -m bench.sweep --device cuda --concurrency 4 --epochs 10 2>&1 | tee "$out/sweep-gpu.txt";; esac
case " $checks " in *" packed "*)
  timeout 120 python3 -m bench.packed --device cuda --members 64 --epochs 2 --rounds 1 2>&1 | tee "$out/packed-gpu.txt"
  timeout 200 python3 -m bench.sweep --device cuda --packed --points 64 --epochs 10 --rounds 1 2>&1 \
    | tee "$out/sweep-packed-gpu.txt";; esac
case " $checks " in *" predict "*)
  timeout 200 python3 -m bench.predict_batch --devices cpu,cuda 2>&1 | tee "$out/predict-batch-gpu.txt";; esac
