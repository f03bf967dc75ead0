# Sourced by ci/*.sh: find_python X.Y prints the path of a CPython X.Y
# interpreter (pyenv's, else one on PATH), or nothing.
find_python() {
    local v=$1 root=${PYENV_ROOT:-$HOME/.pyenv} cand best=""
    for cand in "$root"/versions/"$v".*/bin/python"$v"; do
        # skip free-threaded (3.13t) and debug builds; keep the newest patch release
        case "$cand" in *t/bin/*|*-dev*|*-debug*) continue ;; esac
        [ -x "$cand" ] && best=$cand
    done
    if [ -z "$best" ] && command -v "python$v" >/dev/null 2>&1; then
        cand=$(command -v "python$v")
        "$cand" -c 'import sys' >/dev/null 2>&1 && best=$cand
    fi
    printf '%s' "$best"
}
