#!/usr/bin/env bash
# Reproduce headless: every numbered notebook, for one or more runs.
#
#   bash run_all.sh                               # default: params/tiny-lab.yaml
#   bash run_all.sh params/bloom-560m.yaml ...    # several runs, one after the other
#   ONLY="03 04" bash run_all.sh params/x.yaml    # only some stages (NN prefixes)
#   bash run_all.sh --verify params/x.yaml        # rehash every artefact before reusing it
#   bash run_all.sh --set probe.k=20 params/x.yaml   # dotted params overrides (values read as YAML)
#
# First every params file and every data file the runs read are checked (python -m
# xalign.check): each problem is one "error: ..." line, and nothing runs. When a stage
# fails, the last line is "error: <run>: <stage>: <message> (traceback: <log>; notebook:
# <ipynb>)"; the full traceback is in runs/<run>/logs/<stage>.log and the executed notebook,
# and the finished units of the stage are kept (a rerun resumes).
#
# Each notebooks/NN_*.py (jupytext percent format) is converted to ipynb with jupytext and
# executed by papermill with kernel python3 and the params file passed with -f. Executed
# notebooks go to runs/<run>/notebooks/, stage wall times to runs/<run>/timings.csv,
# figures to figures/<run>/.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
files=(); sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --verify) export XALIGN_VERIFY=1; shift ;;             # xalign.pipeline.manifest
    --set) [ $# -ge 2 ] || { echo "error: --set needs KEY=VALUE" >&2; exit 2; }; sets+=(--set "$2"); shift 2 ;;
    --set=*) sets+=(--set "${1#--set=}"); shift ;;
    -*) echo "error: unknown option $1 (run_all.sh [--verify] [--set KEY=VALUE ...] params/<run>.yaml ...)" >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=(params/tiny-lab.yaml)
set -- "${files[@]}"
overrides=$(python -m xalign.params "${sets[@]}" --overrides-json)

python -m xalign.check "${sets[@]}" "$@"   # params, model shape where known, every data file: before anything runs

# SIGINT / SIGTERM to this script stop the running stage too: papermill, its kernel (which
# jupyter starts in a session of its own) and the kernel's worker processes.
child=""
descendants() { local p; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$p"; descendants "$p"; done; }
stop_stage() {
  trap - INT TERM
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    pids="$child $(descendants "$child")"
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
      alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ -z "$alive" ] && break; sleep 0.1
    done
    kill -KILL $pids 2>/dev/null || true
  fi
  echo "== stopped by SIG$1 during ${name:-startup}; the stage's processes were stopped too" >&2
  if [ "$1" = INT ]; then exit 130; else exit 143; fi
}
trap 'stop_stage INT' INT
trap 'stop_stage TERM' TERM
for params in "$@"; do
  run=$(python -m xalign.params "${sets[@]}" "$params")
  run_dir=$(python -m xalign.params "${sets[@]}" --run-dir "$params")
  out="$run_dir/notebooks"
  mkdir -p "$out"
  t_run=$(date +%s.%N)
  for nb in notebooks/[0-9][0-9]_*.py; do
    name=$(basename "$nb" .py)
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${name:0:2} "* ]]; then continue; fi
    echo "== $run: $name"
    t0=$(date +%s.%N)
    logs="$run_dir/logs"; log="$logs/$name.papermill.log"
    mkdir -p "$logs"
    jupytext --quiet --to ipynb -o "$out/$name.input.ipynb" "$nb"
    # The terminal gets papermill's progress bar (one per stage) and the stage's summary line;
    # the cells' stdout and stderr go to logs/<stage>.log and .stderr.log, papermill's own
    # output (with the traceback of a failure, which the terminal does not get) to $log.
    ( papermill "$out/$name.input.ipynb" "$out/$name.ipynb" -k python3 --engine xalign --log-level WARNING -f "$params" -p overrides "$overrides" \
        -p missing_upstream error --cwd . --progress-bar \
        --stdout-file "$logs/$name.log" --stderr-file "$logs/$name.stderr.log" 2>&1 \
      | awk -v logf="$log" -v RS='[\r\n]' '{ print > logf; fflush(logf) }
                           /^Traceback \(most recent call last\):/ { hide = 1 }
                           !hide { printf "%s", $0 (/(cell\/s|s\/cell)\]$/ ? "\r" : "\n"); fflush() }' >&2 ) &
    child=$!
    rc=0; wait "$child" || rc=$?
    child=""
    rm -f "$out/$name.input.ipynb"
    if [ "$rc" -ne 0 ]; then
      echo >&2
      python -m xalign.check --stage-error "$out/$name.ipynb" "$log" "$run: $name" >&2
      exit "$rc"
    fi
    echo >&2
    grep -E '^\[[a-z_]+\] computed' "$logs/$name.log" || true   # the stage's summary line
    dt=$(python -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    echo "$(date -Iseconds),$name,$dt" >> "$run_dir/timings.csv"
    echo "== $run: $name took $dt s"
  done
  echo "== $run: all stages took $(python -c "print(f'{$(date +%s.%N) - $t_run:.1f}')") s (see $run_dir/timings.csv)"
done
