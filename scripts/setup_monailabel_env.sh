#!/usr/bin/env bash
# Create (or reuse) ./.venv-monailabel: MONAI Label 0.8.5 (torch 2.14.1 + torchvision 0.29.1), WITHOUT fanet_monai.
#
# MONAI Label gets its own environment because it needs pydicom<3 (0.8.5 imports pydicom._storage_sopclass_uids,
# removed in pydicom 3) while highdicom>=0.23 needs pydicom>=3. The lightest install that works offline:
#   * torch 2.14.1 + torchvision 0.29.1 first, pinned. MONAI Label imports torchvision at start-up
#     (monailabel/transform/post.py: `from torchvision.utils import make_grid, save_image`, reached from the
#     monaibundle app's main.py), and PyPI's torchvision builds need a CUDA torch: torchvision 0.28.0 beside the
#     CPU-only torch 2.13.0 fails at import ("operator torchvision::nms does not exist"; its _C.so links
#     libtorch_cuda.so). So this environment takes the CUDA build of torch 2.14.1 (runs on the CPU; ≈ 5.5 GB with
#     its NVIDIA libraries), from the machine's wheel folder when present, else from PyPI;
#   * monailabel==0.8.5 with --no-deps, then its runtime dependencies listed explicitly, leaving out
#     - sam2 (an sdist whose build pulls torch; only the SAM2 models import it, and `--conf sam2 false` turns them off),
#     - monai extras the server never touches (gdown, lmdb, mlflow, openslide);
#   * monai 1.6.1 with itk (MONAI Label writes 2-D results with ITK) and pillow/scikit-image for the bundle's scripts;
#   * dcmqi (its itkimage2segimage writes the DICOM SEG of a label saved to a DICOMweb datastore; MONAI Label would
#     otherwise download the tool from GitHub at start-up) and SimpleITK (it converts DICOM series to NIfTI).
# The environment is also the "no fanet_monai" process for the packaged-bundle tests: never install the project here.
# Usage: bash scripts/setup_monailabel_env.sh   (prints the python path; reuses the venv when it already works)
set -eo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MONAILABEL_VENV:-$root/.venv-monailabel}"
python="${PYTHON:-python3}"
stamp="$venv/.fanet-monailabel-ok"
if [ -f "$stamp" ] && [ -x "$venv/bin/itkimage2segimage" ] && "$venv/bin/python" -c "import monailabel, monai, torch, torchvision, itk, PIL, skimage, tensorboard, matplotlib, SimpleITK" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
start=$(date +%s)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
torch=("torch==2.14.1" "torchvision==0.29.1")
"${pip[@]}" "${torch[@]}"
"${pip[@]}" "${torch[@]}" "monai[nibabel,itk,skimage,ignite,fire,pillow,psutil,tqdm,tensorboard]==1.6.1" "scipy>=1.10" "matplotlib>=3.7"
"${pip[@]}" --no-deps "monailabel==0.8.5"
"${pip[@]}" "${torch[@]}" "pydicom>=2.4.4,<3" \
  "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
  "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "dicomweb-client>=0.59.1,<0.61" "timeloop>=1.0.2" \
  "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pydicom-seg>=0.4.1" \
  "pynetdicom>=2.0.2" "pynrrd>=1.0.0" "numpymaxflow>=0.0.7" "girder-client>=3.2.3" "einops>=0.7.0" \
  "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2" "shapely>=2.0.4" \
  "ninja>=1.11.1.1" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" "scikit-learn" "google-auth>=2.29.0" "SimpleITK>=2.2" "dcmqi>=1.3"
[ -x "$venv/bin/itkimage2segimage" ]
"$venv/bin/python" -c "import monailabel, monai, torch, torchvision, itk, PIL, skimage, tensorboard, matplotlib, SimpleITK
import monailabel.main, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle" >/dev/null
touch "$stamp"
echo "monailabel env built in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)" >&2
echo "$venv/bin/python"
