#!/usr/bin/env bash
# The device checks of a GPU machine, in one run (see README "GPU"). Writes logs and results under $1.
#   bash benchmarks/gpu_checks.sh OUT_DIR
# Needs torch, torchvision, timm and captum importable (captum can come as a wheel in .whl/).
set -o pipefail
out=${1:?output folder}
mkdir -p "$out"
py=${PYTHON:-python3}  # a Python with torch (e.g. PYTHON=.venv/bin/python)
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch, torchvision, timm, captum; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'captum', captum.__version__)" | tee -a "$out/gpu.txt"
status=0
timeout 300 "$py" benchmarks/bench_methods.py --device cuda --methods --vit --fast --occlusion-repeats 3 \
    --out "$out/bench" 2>&1 | tee "$out/bench.log" || status=1
timeout 180 "$py" benchmarks/check_cuda.py --device cuda --out "$out/check" 2>&1 | tee "$out/check.log" || status=1
timeout 240 "$py" benchmarks/check_cuda_vit.py --device cuda --bf16 --out "$out/check_vit" 2>&1 \
    | tee "$out/check_vit.log" || status=1
"$py" -c "import sys; sys.path.insert(0, 'tests'); from helpers import write_image_folder; import pathlib; \
p = pathlib.Path('/tmp/gpu_images'); p.mkdir(exist_ok=True); write_image_folder(p, n=6)"
for run in cuda torchrun cpu; do
    case $run in
        cuda) cmd=("$py" -m ssl_widgets.evaluate) ;;
        torchrun) cmd=("$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m ssl_widgets.evaluate) ;;
        cpu) cmd=(env CUDA_VISIBLE_DEVICES= "$py" -m ssl_widgets.evaluate) ;;
    esac
    timeout 120 "${cmd[@]}" --data /tmp/gpu_images --pairs 4 --no-progress --out "/tmp/eval_$run" 2>&1 \
        | tee "$out/eval_$run.log" || status=1
done
exit $status
