# Sourced by scripts/run and scripts/test: make sure .venv exists and holds the project's
# dependencies (re-installed whenever pyproject.toml changes).
VENV_DIR="${OPENBILI_VENV:-.venv}"
EXTRAS="${1:-}"
PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON_BIN="$cand"; break
    fi
  done
fi
if [ -z "$PYTHON_BIN" ]; then
  echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "==> creating $VENV_DIR"
  "$PYTHON_BIN" -m venv "$VENV_DIR"
fi
stamp="$VENV_DIR/.openbili-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing dependencies into $VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
  "$VENV_DIR/bin/python" -m pip install --quiet -e ".${EXTRAS}"
  echo "$want" > "$stamp"
fi
