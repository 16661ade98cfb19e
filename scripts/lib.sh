# Shared by scripts/*: create or reuse the venv and install the locked dependencies.
# Usage: . scripts/lib.sh; bootstrap [EXTRAS]   (EXTRAS e.g. "dev" or "demo,embedded"; extras:
# report = matplotlib for simctl report, demo = honcho for scripts/run, dev, embedded)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIMENGINE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

bootstrap() {
  local extras="${1:-}"
  local spec="$ROOT"
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when the dependency spec changed (a stamp per extras set).
  local stamp="$VENV/.simengine-${extras:-base}.stamp"
  local want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-32)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing simengine${extras:+[$extras]} (locked by constraints.txt)" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$spec" \
      2> >(grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' >&2) >/dev/null
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
