#!/usr/bin/env bash
# Installs what `make test` (scripts/install_deps.sh test) or `make demo` (... demo) needs on a fresh
# Debian machine, and nothing that is already there: Debian packages with apt-get (as root, or with
# sudo), then scripts/requirements.txt with pip. Each check is quick, so make runs this every time.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: scripts/install_deps.sh test|demo}
catch2=${CATCH2_INCLUDE_DIR:-/usr/include/catch2}  # where Debian's catch2 puts its headers
packages=()
if [ "$what" = test ] && [ ! -e "$catch2/catch.hpp" ] && [ ! -e "$catch2/catch_all.hpp" ]; then
    packages+=(catch2)
fi
python3 -c "import numpy, tokenizers, huggingface_hub, tqdm, matplotlib" 2>/dev/null || { command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; } ||
    packages+=(python3 python3-pip)
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else
        echo "error: missing Debian packages: ${packages[*]}; install them as root: apt-get install ${packages[*]}" >&2
        exit 1
    fi
    echo "installing Debian packages: ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null; }
fi
if ! python3 -c "import numpy, tokenizers, huggingface_hub, tqdm, matplotlib" 2>/dev/null ||
    ! python3 scripts/sass_guards.py where >/dev/null 2>&1; then  # cuobjdump and nvdisasm (PyPI) for the SASS guards
    echo "installing Python packages: scripts/requirements.txt" >&2
    python3 -m pip install -q -r scripts/requirements.txt 2>/dev/null ||
        python3 -m pip install -q --break-system-packages -r scripts/requirements.txt
fi
