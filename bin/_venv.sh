# Sourced by bin/run and bin/test: make .venv and install the given requirements file, only when it
# changed since the last install (a stamp file holds its hash).
set -euo pipefail
requirements="$1"
if [ ! -x .venv/bin/python ]; then
    echo ">> creating .venv with $(command -v python3)"
    python3 -m venv .venv
fi
want="$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)"
stamp=".venv/.installed-$(basename "$requirements")-$want"
if [ ! -f "$stamp" ]; then
    echo ">> installing $requirements into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$requirements"
    rm -f .venv/.installed-"$(basename "$requirements")"-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
