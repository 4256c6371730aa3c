#!/usr/bin/env bash
# End-to-end check of the asv workflows (benchmarks/tools/asv_history.py) on a small subset:
# current, history of the last 3 commits (twice: the second must skip them all), compare,
# publish + vendored assets + the headless-Chromium offline check.
#
#   bash benchmarks/tools/check_asv_workflows.sh            # from anywhere in the repository
#   (uses .venv/bin/python when it exists, else python; PYTHON=... overrides)
#   PYTHON=/path/to/venv/bin/python BENCH='Estimate.time_estimate' bash ...check_asv_workflows.sh
#
# Results go to .asv/ like any run (commits that already have results are not re-run).
# Exit status: 0 when every check passed, 1 at the first failure.
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
PY=${PYTHON:-python}
TOOL=(env PYTHONDONTWRITEBYTECODE=1 "$PY" benchmarks/tools/asv_history.py)
BENCH=${BENCH:-'Statistics.track_variance|Estimate.time_estimate'}
RESULTS=.asv/results/metarl-bench
LOG=$(mktemp -d "${TMPDIR:-/tmp}/asv-workflows-XXXXXX")
CHECKED=()

fail() { echo "FAIL: $*" >&2; echo "(logs in $LOG)" >&2; exit 1; }
ok() { CHECKED+=("$1 ($2 s)"); echo "ok: $1 ($2 s)"; }
results_for() { ls "$RESULTS/${1:0:8}"-*.json >/dev/null 2>&1; }
step() { echo; echo "=== $*"; START=$SECONDS; }

"$PY" -c 'import asv' 2>/dev/null || fail "$PY cannot import asv; set PYTHON to the benchmark venv's python"
git check-ignore -q .asv/results || fail ".asv/ is not git-ignored"
# --ignored: a stray build/ or *.egg-info in the checkout would be git-ignored, not untracked.
tree_state() { git status --porcelain --ignored | grep -v -e ' \.asv/$' -e '__pycache__' || true; }
STATUS_BEFORE=$(tree_state)
WORKTREES_BEFORE=$(git worktree list --porcelain | grep -c '^worktree ')

step "current: benchmark the checkout ($BENCH, --quick)"
HEAD=$(git rev-parse HEAD)
"${TOOL[@]}" current --bench "$BENCH" --quick 2>&1 | tee "$LOG/current.log" || fail "current exited non-zero"
results_for "$HEAD" || fail "no results for HEAD ${HEAD:0:8} after 'current'"
"$PY" - "$RESULTS" "$HEAD" <<'EOF' || fail "HEAD's result file lacks a benchmark of the subset"
import glob, json, sys
(path,) = glob.glob(f"{sys.argv[1]}/{sys.argv[2][:8]}-*.json")
data = json.load(open(path))
missing = [b for b in ("Estimate.time_estimate", "Statistics.track_variance")
           if not any(name.endswith(b) for name in data["results"])]
assert data["params"]["machine"] == "metarl-bench", data["params"]
assert not missing, missing
print(f"  {path}: {len(data['results'])} benchmarks, machine {data['params']['machine']}")
EOF
ok "current stored results for ${HEAD:0:8} under machine metarl-bench" $((SECONDS - START))

step "history: last 3 commits"
mapfile -t LAST3 < <(git rev-list --reverse --first-parent -n 3 HEAD)
"${TOOL[@]}" history --last 3 --bench "$BENCH" --quick 2>&1 | tee "$LOG/history1.log" \
    || fail "history exited non-zero"
if grep -q "not benchmarked:" "$LOG/history1.log"; then fail "history could not benchmark a commit"; fi
for c in "${LAST3[@]}"; do
    results_for "$c" || fail "no results for ${c:0:8} after 'history'"
done
ok "history: results exist for ${#LAST3[@]} commit(s): $(printf '%.8s ' "${LAST3[@]}")" $((SECONDS - START))

step "history again: every commit must be skipped"
"${TOOL[@]}" history --last 3 --bench "$BENCH" --quick 2>&1 | tee "$LOG/history2.log" \
    || fail "second history exited non-zero"
SKIPPED=$(grep -c "has results, skipped" "$LOG/history2.log" || true)
[ "$SKIPPED" -eq "${#LAST3[@]}" ] || fail "second history skipped $SKIPPED of ${#LAST3[@]} commits"
ok "second history skipped all ${#LAST3[@]} commit(s)" $((SECONDS - START))

[ "$(git worktree list --porcelain | grep -c '^worktree ')" -eq "$WORKTREES_BEFORE" ] \
    || fail "history left a git worktree behind: $(git worktree list)"

step "compare: the two most recent commits with results"
WITH_RESULTS=()
for c in $(git rev-list --first-parent HEAD); do
    if results_for "$c"; then WITH_RESULTS+=("$c"); fi
    if [ "${#WITH_RESULTS[@]}" -eq 2 ]; then break; fi
done
NEW=${WITH_RESULTS[0]}
OLD=${WITH_RESULTS[1]:-$NEW}
if [ "$OLD" = "$NEW" ]; then echo "(only one commit has results: comparing it with itself)"; fi
set +e
"${TOOL[@]}" compare "$OLD" "$NEW" 2>&1 | tee "$LOG/compare.log"
RC=${PIPESTATUS[0]}
set -e
# 1 only means something got worse (quick timings are noisy); 2 means compare itself failed.
[ "$RC" -le 1 ] || fail "compare exited with $RC"
grep -q "Benchmark (Parameter)" "$LOG/compare.log" || fail "compare printed no asv table"
grep -q "^summary (" "$LOG/compare.log" || fail "compare printed no summary"
ok "compare ${OLD:0:8} ${NEW:0:8}: asv table and summary printed (exit $RC)" $((SECONDS - START))

step "compare a commit with itself: nothing may be reported worse"
"${TOOL[@]}" compare "$NEW" "$NEW" > "$LOG/compare-self.log" 2>&1 \
    || fail "compare of ${NEW:0:8} with itself reported a regression (see $LOG/compare-self.log)"
grep -q "nothing got worse" "$LOG/compare-self.log" || fail "self-compare summary is wrong"
ok "compare ${NEW:0:8} with itself exits 0" $((SECONDS - START))

step "publish + vendor assets + offline check in headless Chromium"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
            || fail "could not install chromium"
    else
        fail "chromium is not installed (apt-get install chromium)"
    fi
fi
"${TOOL[@]}" publish --check --bench bench_estimators.Estimate.time_estimate \
    --screenshot "$LOG/dashboard.png" 2>&1 | tee "$LOG/publish.log" || fail "publish --check failed"
ls .asv/html/vendor/*/package.json >/dev/null 2>&1 || fail "no vendored assets in .asv/html/vendor"
ok "dashboard published, vendored and rendered offline (screenshot $LOG/dashboard.png)" \
    $((SECONDS - START))

step "nothing written outside .asv/ and temporary directories"
[ "$(tree_state)" = "$STATUS_BEFORE" ] \
    || fail "the checkout changed outside .asv/: $(diff <(echo "$STATUS_BEFORE") <(tree_state))"
ok "git status unchanged, no worktree left" 0

echo
echo "All asv workflow checks passed:"
printf '  - %s\n' "${CHECKED[@]}"
