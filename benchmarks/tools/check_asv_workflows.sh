#!/usr/bin/env bash
# End to end, from a fresh clone, the asv commands the README gives, each result checked:
#   asv machine --yes; asv run; asv run HEAD~2..HEAD --skip-existing-commits;
#   asv continuous HEAD~1 HEAD; asv compare; the fast path (asv run -E existing
#   --set-commit-hash); asv publish; asv preview; then the published page rendered in
#   headless Chromium with every outside request refused (benchmarks/dashboard/check_offline.py).
#
#   bash benchmarks/tools/check_asv_workflows.sh
#   BENCH='Statistics.track_variance' bash benchmarks/tools/check_asv_workflows.sh
#   KEEP=1 ...   keeps the clone (and its .asv/) for a look
#
# Slow (a venv, asv's virtualenv with torch, two commits built): not part of .ci/run.
# It clones the committed HEAD of this repository: commit before running it. Needs the
# network only for the package registries (PyPI, npm) and, when chromium is missing and we
# are root, Debian's (apt-get install chromium).
# Exit status: 0 when every check passed, 1 at the first failure.
set -euo pipefail

SOURCE=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
# asv matches --bench against 'name(param, ...)': two estimators on the bandit, 4 cells
BENCH=${BENCH:-'Estimate.time_estimate\(.(lsf|unbiased)., .bandit.'}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/asv-workflows-XXXXXX")
PREVIEW_PID=
CHECKED=()

cleanup() {
    if [ -n "$PREVIEW_PID" ]; then kill "$PREVIEW_PID" 2>/dev/null || true; fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK/clone"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "(logs in $WORK)" >&2; exit 1; }
ok() { CHECKED+=("$1 ($(( SECONDS - START )) s)"); echo "ok: $1 ($(( SECONDS - START )) s)"; }
step() { echo; echo "=== $*"; START=$SECONDS; }
results_for() { ls .asv/results/*/"${1:0:8}"-*.json >/dev/null 2>&1; }
TOTAL=$SECONDS

step "fresh clone, venv, pip install torch==2.13.0 -e '.[bench]'"
git clone --quiet "$SOURCE" "$WORK/clone"
cd "$WORK/clone"
python3 -m venv .venv
.venv/bin/pip install --quiet torch==2.13.0 -e '.[bench]' > "$WORK/install.log" 2>&1 \
    || fail "pip install failed (see $WORK/install.log)"
export PATH="$PWD/.venv/bin:$PATH"
HEAD=$(git rev-parse HEAD)
PARENT=$(git rev-parse HEAD~1)
ok "clone of ${HEAD:0:8} installed"

step "asv machine --yes"
asv machine --yes > "$WORK/machine.log" 2>&1 || fail "asv machine failed"
ok "machine recorded"

step "asv run --quick --bench '$BENCH'  (HEAD; creates the environment)"
asv run --quick --show-stderr --bench "$BENCH" 2>&1 | tee "$WORK/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "asv run exited non-zero"
results_for "$HEAD" || fail "no results for HEAD ${HEAD:0:8}"
[ "$(ls -d .asv/env/*/ | wc -l)" -eq 1 ] || fail "expected one asv environment"
ok "results for ${HEAD:0:8}"

step "asv run --skip-existing-commits HEAD~2..HEAD  (HEAD~1 measured, HEAD skipped)"
asv run --quick --show-stderr --skip-existing-commits --bench "$BENCH" HEAD~2..HEAD 2>&1 \
    | tee "$WORK/range.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "asv run HEAD~2..HEAD exited non-zero"
results_for "$PARENT" || fail "no results for HEAD~1 ${PARENT:0:8}"
grep -q "${HEAD:0:8}" "$WORK/range.log" && fail "HEAD was measured again"
grep -q "pip install.*torch\|Collecting torch" "$WORK/range.log" \
    && fail "torch was installed again for a commit"
ok "HEAD~1 measured, HEAD skipped, torch not reinstalled"

step "asv continuous --quick HEAD~1 HEAD"
set +e
asv continuous --quick --show-stderr --bench "$BENCH" HEAD~1 HEAD 2>&1 | tee "$WORK/continuous.log"
STATUS=${PIPESTATUS[0]}
set -e
# asv's convention: 1 when something got worse (quick, single-sample timings can), else 0
[ "$STATUS" -le 1 ] || fail "asv continuous exited with $STATUS"
grep -q "BENCHMARKS NOT SIGNIFICANTLY CHANGED\|SOME BENCHMARKS HAVE CHANGED" \
    "$WORK/continuous.log" || fail "asv continuous printed no verdict"
ok "asv continuous compared ${PARENT:0:8} and ${HEAD:0:8} (exit $STATUS)"

step "asv compare HEAD~1 HEAD; asv compare HEAD HEAD"
asv compare "$PARENT" "$HEAD" 2>&1 | tee "$WORK/compare.log" || true
grep -q "Benchmark (Parameter)" "$WORK/compare.log" || fail "asv compare printed no table"
asv compare --only-changed "$HEAD" "$HEAD" > "$WORK/compare-self.log" 2>&1 \
    || fail "asv compare of HEAD with itself failed"
if grep -q "^ *[+-] " "$WORK/compare-self.log"; then fail "HEAD differs from itself"; fi
ok "asv compare prints its table; HEAD against itself shows no change"

step "fast path: asv run -E existing --set-commit-hash \$(git rev-parse HEAD)"
asv run -E existing --quick --show-stderr --bench "$BENCH" --set-commit-hash "$HEAD" 2>&1 \
    | tee "$WORK/existing.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "asv run -E existing exited non-zero"
ls .asv/results/*/"${HEAD:0:8}"-existing-*.json > /dev/null 2>&1 \
    || fail "no results of the existing environment for ${HEAD:0:8}"
ok "the working tree measured in the current venv"

step "asv publish (the plugin vendors the page's CDN scripts from npm)"
asv publish 2>&1 | tee "$WORK/publish.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "asv publish failed"
[ -f .asv/html/index.html ] || fail "asv publish wrote no index.html"
if grep -q 'src="https://' .asv/html/index.html; then fail "CDN scripts left in the page"; fi
ls .asv/html/vendor/*/package.json > /dev/null 2>&1 || fail "nothing vendored in .asv/html/vendor"
ok "asv publish wrote .asv/html with its scripts vendored"

step "asv preview (serves the published page)"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
asv preview --port "$PORT" > "$WORK/preview.log" 2>&1 &
PREVIEW_PID=$!
for _ in $(seq 50); do
    if curl -sf "http://127.0.0.1:$PORT/index.html" -o "$WORK/preview.html"; then break; fi
    sleep 0.2
done
cmp -s "$WORK/preview.html" .asv/html/index.html || fail "asv preview did not serve index.html"
kill "$PREVIEW_PID"; wait "$PREVIEW_PID" 2>/dev/null || true; PREVIEW_PID=
ok "asv preview served the page"

step "the published page in headless Chromium, every outside request refused"
python benchmarks/dashboard/check_offline.py .asv/html --screenshot "$WORK/dashboard.png" 2>&1 \
    | tee "$WORK/offline.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "the dashboard did not render offline"
ok "dashboard rendered offline (screenshot $WORK/dashboard.png)"

echo
echo "All asv workflow checks passed in $(( SECONDS - TOTAL )) s:"
printf '  - %s\n' "${CHECKED[@]}"
